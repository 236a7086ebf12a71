"""Operations features on the HTTP server: --allow-ips (403, counted), a balancer's PROXY header
(the source for X-Forwarded-For and the allow-list), /status, and generated service definitions."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import yaml
from helpers.proxy_daemons import binary
from helpers.http import LOOPBACK, Stack, raw_request
from helpers.process import inlets
from helpers.service_python import unit_inlets
from helpers.tunnel import metric

from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
from inlets_py.runtime.server.dataplane import DataPlaneOptions
from inlets_py.runtime.server.proxy_protocol import encode

GET = b"GET /who HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def stack():
    stack = Stack()
    yield stack
    stack.close()


def requests_counted(server, code: str) -> float:
    return metric(server, "http_dataplane_requests_total", code=code)


def request_from(port: int, source: str, payload: bytes = GET) -> bytes:
    return raw_request(port, payload, source=source)


def test_allow_ips_answers_403_to_other_sources_and_counts_them(stack, tls, token) -> None:
    app, app_port = stack.upstream("app")
    server = stack.server(tls, token, dataplane=DataPlaneOptions(allow_ips=SourceAllowList(parse_networks("127.0.0.2"))))
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    assert request_from(server.data_port, "127.0.0.2").startswith(b"HTTP/1.1 200")
    before = len(app.stats.requests)
    refused = request_from(server.data_port, "127.0.0.3")
    assert refused.startswith(b"HTTP/1.1 403 Forbidden") and len(app.stats.requests) == before  # never reached the app
    assert requests_counted(server, "403") == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_balancer_header_gives_the_real_source(stack, tls, token, version: str) -> None:
    app, app_port = stack.upstream("app")
    gate = DataPlaneOptions(allow_ips=SourceAllowList(parse_networks("203.0.113.0/24")), lb_proxy_protocol=version)
    server = stack.server(tls, token, dataplane=gate)
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    port = server.data_port
    answer = raw_request(port, encode(version, ("203.0.113.9", 4242), (LOOPBACK, port)) + GET)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    seen = dict((n.lower(), v) for n, v in json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"])
    assert seen["x-forwarded-for"] == "203.0.113.9"
    outside = raw_request(port, encode(version, ("198.51.100.1", 4242), (LOOPBACK, port)) + GET)
    assert outside.startswith(b"HTTP/1.1 403")
    assert raw_request(port, GET).startswith(b"HTTP/1.1 403")  # no header at all: not from the balancer


def test_http_server_has_status(stack, tls, token) -> None:
    from inlets_py.runtime.core.probe import get, parse_url

    app, app_port = stack.upstream("app")
    server = stack.server(tls, token)
    stack.client(server, tls, token, [f"site.test=http://{LOOPBACK}:{app_port}"])
    host, port = server.control.addresses[0][:2]
    answer = get(parse_url(f"wss://{host}:{port}"), "/status", ca_file=tls.ca, token=token)
    doc = json.loads(answer.body)
    assert answer.status == 200 and doc["mode"] == "http" and doc["clients"][0]["services"] == ["http:site.test"]


def test_generated_definitions_for_http_commands(tmp_path, tls, token_file) -> None:
    server = inlets("http", "server", "--port", "8080", "--token-file", str(token_file), "--tls-cert", str(tls.cert),
                    "--tls-key", str(tls.key), "--generate", "k8s_yaml")
    kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(server.stdout)}
    assert set(kinds) == {"Secret", "Deployment", "Service"}, server.stderr
    assert {p["port"] for p in kinds["Service"]["spec"]["ports"]} == {8080, 8123}
    client = unit_inlets("http", "client", "--url", "wss://203.0.113.10:8123", "--token", "tok-xyz",
                         "--upstream", "http://127.0.0.1:3000", "--generate", "systemd")
    assert client.returncode == 0 and "tok-xyz" not in client.stdout and "inlets http client" in client.stdout
    unit = tmp_path / "inlets-http-client.service"
    unit.write_text(client.stdout)
    check = subprocess.run([binary("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stderr.strip() == "", check.stderr


def test_slowloris_gets_408_while_an_idle_keepalive_connection_is_left_alone(stack, tls, token) -> None:
    import time

    app, app_port = stack.upstream("app")
    server = stack.server(tls, token, header_timeout=1.0, idle_timeout=30.0)
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    slow = socket.create_connection((LOOPBACK, server.data_port), timeout=10)
    idle = socket.create_connection((LOOPBACK, server.data_port), timeout=10)
    idle.sendall(b"GET /first HTTP/1.1\r\nHost: site.test\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # then it stays quiet, kept alive
    started = time.monotonic()
    slow.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n")
    answer = b""
    for _ in range(40):  # one header byte every 0.1 s: never a whole head
        try:
            slow.sendall(b"X")
        except OSError:
            break
        slow.settimeout(0.1)
        try:
            answer += slow.recv(65536)
        except socket.timeout:
            continue
        if answer:
            break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3.5
    idle.sendall(b"GET /second HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
    idle.settimeout(5)
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # the quiet keep-alive user was not cut
    assert requests_counted(server, "408") == 1
    # its duration is the wait for the head (at least the 1 s header timeout), not 0 s
    assert metric(server, "http_dataplane_request_duration_seconds_sum", code="408") >= 1.0
    slow.close()
    idle.close()


def test_a_balancers_header_that_never_comes_is_refused_and_counted_with_its_wait(stack, tls, token, monkeypatch) -> None:
    """--lb-proxy-protocol: a connection that sends no PROXY header is refused when the header timeout ends, and
    the 403's duration is that wait (it was counted as 0 s, as if refused at once)."""
    from inlets_py.runtime.http import front

    monkeypatch.setattr(front, "HEADER_TIMEOUT", 0.5)  # the server's 5 s, shortened: the same timer and code path
    app, app_port = stack.upstream("app")
    server = stack.server(tls, token, dataplane=DataPlaneOptions(lb_proxy_protocol="v1"))
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as silent:
        answer = b""
        while data := silent.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert metric(server, "http_dataplane_requests_total", code="403") == 1
    assert metric(server, "http_dataplane_request_duration_seconds_sum", code="403") >= 0.5


def _read_until(user: socket.socket, marker: bytes) -> bytes:
    """What ``user`` reads until ``marker`` has come, or the connection ends."""
    answer = b""
    while marker not in answer:
        data = user.recv(65536)
        if not data:
            break
        answer += data
    return answer


def test_a_head_begun_with_the_connection_or_behind_a_request_gets_the_header_timeout(stack, tls, token) -> None:
    """Bytes that came before the connection waited for a request (with the connection itself, before its
    coroutine ran; or behind the request in flight) began a head too: it used to have the idle timeout only."""
    import time

    app, app_port = stack.upstream("app")
    server = stack.server(tls, token, header_timeout=1.0, idle_timeout=30.0)
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    with_connection = socket.create_connection((LOOPBACK, server.data_port), timeout=5)
    with_connection.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\nX-Slow: ")
    behind = socket.create_connection((LOOPBACK, server.data_port), timeout=5)
    behind.sendall(b"GET /first HTTP/1.1\r\nHost: site.test\r\n\r\nGET /second HTTP/1.1\r\nX-Slow: ")
    started = time.monotonic()
    for user in (with_connection, behind):
        answer = _read_until(user, b"HTTP/1.1 408")
        assert b"HTTP/1.1 408" in answer, answer
    assert time.monotonic() - started < 3.5
    with_connection.close()
    behind.close()


def test_a_head_begun_before_the_wait_keeps_its_start_when_more_of_it_comes(stack, tls, token) -> None:
    """A head whose first bytes came before the wait (behind the request in flight; or with the connection, before
    its coroutine ran) counts from the wait's start. Its next bytes, in the wait, restarted the count: a slowloris
    user sending one more byte just before the header timeout had nearly twice it."""
    import time

    app, app_port = stack.upstream("app")
    server = stack.server(tls, token, header_timeout=2.0, idle_timeout=30.0)
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    with socket.create_connection((LOOPBACK, server.data_port), timeout=5) as user:
        user.sendall(b"GET /first HTTP/1.1\r\nHost: site.test\r\n\r\nGET /second HTTP/1.1\r\nX-Slow: ")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += user.recv(65536)
        waiting = time.monotonic()  # the first answer is here: the wait for /second's head has begun
        assert answer.startswith(b"HTTP/1.1 200"), answer
        time.sleep(1.5)
        user.sendall(b"x")
        answer += _read_until(user, b"HTTP/1.1 408")
        assert b"HTTP/1.1 408" in answer, answer
        assert time.monotonic() - waiting < 2.9  # 2 s from the wait's start (and the sweep's 0.1 s), not 3.5 from "x"


def test_a_head_begun_late_in_the_keep_alive_wait_gets_the_header_timeout_not_the_idle_one(stack, tls, token) -> None:
    """nginx's keepalive_timeout ends at the next request's first byte. The idle sweep closed a connection whose head
    began 1.5 s into a 2 s wait and was complete 0.9 s later, well within the header timeout: no answer, no 408."""
    import time

    app, app_port = stack.upstream("app")
    server = stack.server(tls, token, header_timeout=1.5, idle_timeout=2.0)
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    with socket.create_connection((LOOPBACK, server.data_port), timeout=5) as user:
        user.sendall(b"GET /first HTTP/1.1\r\nHost: site.test\r\n\r\n")
        assert user.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)
        user.sendall(b"GET /second HTTP/1.1\r\n")
        time.sleep(0.9)  # past the idle timeout's 2 s, within the header timeout's 1.5 s from the head's first byte
        user.sendall(b"Host: site.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while data := user.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 200"), answer
