"""What an upstream learns of its user through the forwarding headers, and whose guesses a protected name counts,
through a real server, client and h11 upstream on loopback; the server trusts 127.0.0.1 as a reverse proxy in front."""

from __future__ import annotations

import base64
import json

import pytest

from helpers.http import LOOPBACK, Stack, raw_request
from inlets_py.runtime.http.options import HttpOptions


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    try:
        app, up = stack.upstream("A")
        server = stack.server(tls, token, trusted_proxies="127.0.0.1")
        stack.client(server, tls, token, [f"plain.test=http://{LOOPBACK}:{up}"])
        stack.client(server, tls, token, [f"own.test=http://{LOOPBACK}:{up}"],
                     HttpOptions.build(request_add=["X-Forwarded-Proto: https", "X-Real-IP: 192.0.2.1"],
                                       request_remove=["X-Forwarded-For", "x-forwarded-host"]))
        stack.client(server, tls, token, [f"guarded.test=http://{LOOPBACK}:{up}"],
                     HttpOptions.build(basic_auth=("alice", "right-password")))
        yield dict(stack=stack, server=server, port=server.data_port)
    finally:
        stack.close()


def _headers(port: int, host: str, *lines: str, source: str | None = None) -> list[tuple[str, str]]:
    """The headers the upstream saw for one request to ``host`` carrying ``lines``, from ``source`` (a loopback
    address; 127.0.0.1 is the trusted proxy)."""
    head = "".join(f"{line}\r\n" for line in ("GET / HTTP/1.1", f"Host: {host}", "Connection: close", *lines))
    answer = raw_request(port, (head + "\r\n").encode(), source=source)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    return [tuple(pair) for pair in json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]]


def test_a_users_forwarded_header_stays_behind_as_its_x_forwarded_ones_do(env) -> None:
    """A user's RFC 7239 Forwarded reached the upstream as sent: Rack 3 and Spring read it before X-Forwarded-*,
    so ``proto=https;host=evil`` was the app's scheme and host (password-reset links to evil) whatever the proxy
    set. Now no spelling of it passes, and the proxy's X-Forwarded-* are what the upstream has."""
    seen = _headers(env["port"], "plain.test", "Forwarded: for=6.6.6.6;proto=https;host=evil",
                    "forwarded: for=7.7.7.7", "X-Forwarded-Proto: https")
    names = [name for name, _ in seen]
    assert "forwarded" not in names, seen
    assert ("x-forwarded-proto", "http") in seen and ("x-forwarded-host", "plain.test") in seen, seen


def test_a_clients_own_x_forwarded_headers_replace_the_proxys(env) -> None:
    """``--request-header-add 'X-Forwarded-Proto: https'`` (a TLS front before the server) sent a second header
    after the proxy's ``http``, which Django takes; ``--request-header-remove X-Forwarded-For`` and ``-Host`` did
    nothing (a user's forged address still reached the upstream). Now the client's word is the only one."""
    seen = _headers(env["port"], "own.test", "X-Forwarded-For: 6.6.6.6", "X-Forwarded-Host: evil", "X-Real-IP: 6.6.6.6")
    forwarded = [(name, value) for name, value in seen if name.startswith(("x-forwarded", "x-real"))]
    assert forwarded == [("x-forwarded-proto", "https"), ("x-real-ip", "192.0.2.1")], seen


def test_a_users_word_on_its_scheme_port_prefix_and_address_stays_behind(env) -> None:
    """What apps read from a proxy they trust passed through from any user: ``X-Forwarded-Ssl: on`` over plain
    HTTP made a Rack app (which reads it before X-Forwarded-Proto) write https links, and X-Real-IP chose the
    address chi, Echo and Gin log and limit. Now the upstream has only the proxy's X-Forwarded-*."""
    seen = _headers(env["port"], "plain.test", "X-Forwarded-Ssl: on", "X-Forwarded-Scheme: https",
                    "X-Forwarded-Port: 443", "X-Forwarded-Prefix: /evil", "X-Real-IP: 6.6.6.6", "X_Real_IP: 6.6.6.6")
    forwarded = [(name, value) for name, value in seen if name.replace("_", "-").startswith(("x-forwarded", "x-real"))]
    assert forwarded == [("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"),
                         ("x-forwarded-host", "plain.test")], seen


@pytest.mark.parametrize("name", ["True-Client-IP", "CF-Connecting-IP", "X-Client-IP", "Fastly-Client-IP",
                                  "X-Cluster-Client-IP", "True_Client_IP"])
def test_a_users_claim_of_its_client_address_stays_behind(env, name) -> None:
    """The CDNs' client-address headers reached the upstream as a user sent them, and chi's RealIP takes
    True-Client-IP before X-Real-IP and X-Forwarded-For: any user chose the address the app logs and limits."""
    seen = _headers(env["port"], "plain.test", f"{name}: 1.2.3.4", "X-Client-Ipx: kept")
    assert [value for _, value in seen if value == "1.2.3.4"] == [] and ("x-client-ipx", "kept") in seen, seen


def test_an_untrusted_users_x_forwarded_for_is_replaced_by_its_address(env) -> None:
    """A user's ``X-Forwarded-For: 9.9.9.9`` reached the upstream as ``9.9.9.9, 127.0.0.2``, and Echo, Gin and chi
    take the leftmost entry: the user chose its address. As Traefik and Caddy, only a --trusted-proxies balancer's
    chain is appended to; anyone else's is replaced by its own address."""
    untrusted = _headers(env["port"], "plain.test", "X-Forwarded-For: 9.9.9.9", source="127.0.0.2")
    trusted = _headers(env["port"], "plain.test", "X-Forwarded-For: 9.9.9.9", source="127.0.0.1")
    assert [value for name, value in untrusted if name == "x-forwarded-for"] == ["127.0.0.2"], untrusted
    assert [value for name, value in trusted if name == "x-forwarded-for"] == ["9.9.9.9, 127.0.0.1"], trusted


def test_an_x_forwarded_for_its_connection_names_ends_at_the_balancer(env) -> None:
    """RFC 9110 7.6.1: a header that Connection names is for this hop only; a trusted balancer's named
    X-Forwarded-For was still joined to the proxy's entry (``5.5.5.5, 127.0.0.1``)."""
    seen = _headers(env["port"], "plain.test", "Connection: x-forwarded-for", "X-Forwarded-For: 5.5.5.5",
                    source="127.0.0.1")
    assert [value for name, value in seen if name == "x-forwarded-for"] == ["127.0.0.1"], seen


def _basic(password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"alice:{password}".encode()).decode()


def _status(port: int, user: str, password: str) -> bytes:
    """One request for the protected name through the trusted proxy, for the user at ``user``."""
    head = (f"GET / HTTP/1.1\r\nHost: guarded.test\r\nConnection: close\r\nX-Forwarded-For: {user}\r\n"
            f"{_basic(password)}\r\n\r\n")
    return raw_request(port, head.encode()).split(b" ", 2)[1]


def test_behind_a_trusted_proxy_one_users_guesses_do_not_lock_out_the_others(env) -> None:
    """Behind a --trusted-proxies balancer every user's wrong passwords counted against the balancer's address:
    one user's 10 guesses gave every user 429 for a minute, the right password too (1 of 1 refused). Now they
    count against the address the balancer forwarded for, as on the control port."""
    env["stack"].loop.call_soon_threadsafe(env["server"].guards.failures._sources.clear)
    guesses = [_status(env["port"], "203.0.113.7", f"guess-{i}") for i in range(11)]
    other = _status(env["port"], "203.0.113.8", "right-password")
    guesser = _status(env["port"], "203.0.113.7", "right-password")
    assert guesses == [b"401"] * 10 + [b"429"], guesses
    assert (other, guesser) == (b"200", b"429")
