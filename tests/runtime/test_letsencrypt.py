"""Let's Encrypt on the HTTP data plane, against a real ACME server (pebble) on loopback.

The tunnel server obtains certificates over real ACME with HTTP-01 (pebble resolves
*.example.test to 127.0.0.1 through a dnsmasq and connects to the server's plain
port), serves them by SNI to real TLS clients (curl and Python's ssl) that trust only
pebble's root, redirects plain HTTP, keeps its keys 0600, and renews without a
restart. The pure parts (renewal rule, option checks, port-80 answers) are unit-tested.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from helpers.http import LOOPBACK, Stack, need, raw_request
from helpers.letsencrypt import dnsmasq, pebble, served_certificate, wait_until
from inlets_py.runtime.acme.store import AcmeConfigError, CertStore, Validity, check_domain, check_email, directory_url
from inlets_py.runtime.core.auth import TokenSet
from inlets_py.runtime.server.control import ControlConfig
from inlets_py.runtime.http.request_reader import RequestReader
from inlets_py.runtime.http.server import HttpTunnelServer
from inlets_py.runtime.acme.https_front import HttpsFront, plain_answer
from inlets_py.runtime.acme.letsencrypt import configure
from inlets_py.runtime.core.tls import server_context
from helpers.tunnel import free_port, old_tls_client

DOMAINS = ["a.example.test", "b.example.test"]


def start_server(stack: Stack, tls, token: str, front: HttpsFront, http_port: int) -> HttpTunnelServer:
    async def start() -> HttpTunnelServer:
        config = ControlConfig(tokens=TokenSet([token]), host=LOOPBACK, port=0,
                               ssl_context=server_context(tls.cert, tls.key))
        server = HttpTunnelServer(config, port=http_port, data_addr=LOOPBACK, https=front)
        await server.start()
        stack.closers.append(server.stop)
        return server

    return stack.run(start())


@pytest.fixture(scope="module")
def acme(tmp_path_factory, tls, token):
    base = tmp_path_factory.mktemp("acme")
    http_port, https_port = free_port(), free_port()
    with dnsmasq(base) as dns, pebble(base / "pebble", http_port, dns) as ca:
        stack = Stack()
        try:
            app, up = stack.upstream("site")
            manager = configure(DOMAINS, base / "le", issuer=ca.directory, email="ops@example.test",
                                ca_bundle=ca.api_ca, retry=1.0)
            front = HttpsFront(manager, https_port)
            server = start_server(stack, tls, token, front, http_port)
            stack.client(server, tls, token, [f"{d}=http://{LOOPBACK}:{up}" for d in DOMAINS])
            wait_until(lambda: manager.issued == 2, 30, "two certificates from pebble")
            yield dict(base=base, ca=ca, app=app, manager=manager, http=http_port, https=https_port,
                       client_tls=ca.client_context(base), stack=stack)
        finally:
            stack.close()


def test_curl_gets_the_site_over_https_with_the_issued_certificate(acme) -> None:
    curl = need("curl")
    root = acme["base"] / "pebble-root.pem"
    result = subprocess.run(
        [curl, "-sS", "--max-time", "10", "--cacert", str(root), "--resolve", f"a.example.test:{acme['https']}:127.0.0.1",
         "-o", "-", "-w", "\n%{http_code} %{ssl_verify_result}", f"https://a.example.test:{acme['https']}/hello?x=1"],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("200 0"), result.stdout
    seen = acme["app"].stats.requests[-1]
    assert seen["target"] == "/hello?x=1"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    assert headers["host"] == f"a.example.test:{acme['https']}"


def test_each_domain_gets_its_own_certificate_by_sni(acme) -> None:
    for domain in DOMAINS:
        served = served_certificate(acme["https"], domain, acme["client_tls"])  # verifies chain and name
        names = [value for kind, value in served["cert"]["subjectAltName"] if kind == "DNS"]
        assert names == [domain]
        assert served["version"] in ("TLSv1.2", "TLSv1.3")


def test_tls_below_1_2_is_refused(acme) -> None:
    context = old_tls_client()
    with socket.create_connection(("127.0.0.1", acme["https"]), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            context.wrap_socket(raw, server_hostname=DOMAINS[0])
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"  # told, not an EOF


def test_plain_port_redirects_to_https_keeping_path_and_query(acme) -> None:
    curl = need("curl")
    result = subprocess.run(
        [curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
         "-H", "Host: a.example.test", f"http://127.0.0.1:{acme['http']}/path/x?y=1"],
        capture_output=True, text=True, timeout=20,
    )
    assert result.stdout == f"308 https://a.example.test:{acme['https']}/path/x?y=1", result


def test_plain_port_answers_only_known_challenges(acme) -> None:
    curl = need("curl")
    result = subprocess.run(
        [curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
         "-H", "Host: a.example.test", f"http://127.0.0.1:{acme['http']}/.well-known/acme-challenge/made-up"],
        capture_output=True, text=True, timeout=20,
    )
    assert result.stdout == "404"
    assert acme["manager"].challenges == {}  # withdrawn once validated


@pytest.mark.parametrize("host, answer", [
    ("A.Example.Test.", "308 https://a.example.test:{https}/login?next=1"),  # a domain of ours, any spelling
    ("b.example.test:80", "308 https://b.example.test:{https}/login?next=1"),
    ("evil.com", "404 "),  # not ours: no redirect to it (Caddy and Traefik answer a host they do not serve so)
    ("127.0.0.1", "404 "),  # an address: no certificate names it
    ("[::1]:80", "404 "),
    ("a.example.test:99999", "400 "),  # no such port
    ("x:0", "400 "),
])
def test_plain_port_redirects_only_its_own_domains(acme, host, answer) -> None:
    """Port 80 redirected any Host: ``Host: evil.com`` got ``Location: https://evil.com/...`` (an open redirect
    for whatever could set the Host, a shared cache say) and ``Host: x:99999`` was taken."""
    curl = need("curl")
    result = subprocess.run(
        [curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
         "-H", f"Host: {host}", f"http://127.0.0.1:{acme['http']}/login?next=1"],
        capture_output=True, text=True, timeout=20,
    )
    assert result.stdout == answer.format(https=acme["https"]), result


@pytest.mark.parametrize("request_bytes, status_line", [
    (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: a.example.test\r\n\r\n", b"HTTP/1.1 414 URI Too Long\r\n"),
    (b"GET / HTTP/1.1\r\nHost: a.example.test\r\nX-Big: " + b"h" * 20_000 + b"\r\n\r\n",
     b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
    (b"CONNECT a.example.test:443 HTTP/1.1\r\nHost: a.example.test:443\r\n\r\n", b"HTTP/1.1 501 Not Implemented\r\n"),
])
def test_plain_port_refusals_name_their_status(acme, request_bytes, status_line) -> None:
    assert raw_request(acme["http"], request_bytes).startswith(status_line)


def test_plain_http_on_the_https_port_is_told_to_use_https(acme, caplog) -> None:
    """curl http://DOMAIN:443/ said "Empty reply from server"; Go's servers and nginx answer 400 in words."""
    curl = need("curl")
    caplog.set_level(logging.INFO)
    result = subprocess.run(
        [curl, "-sS", "--max-time", "10", "-w", "%{http_code}", "--resolve", f"a.example.test:{acme['https']}:127.0.0.1",
         f"http://a.example.test:{acme['https']}/"], capture_output=True, text=True, timeout=20,
    )
    assert result.stdout == "This is an HTTPS port: use https://, not http://\n400", result
    assert "plaintext_on_tls_port" not in caplog.text  # the control port's line, about inlets clients


def test_keys_are_private_and_never_logged(acme, caplog) -> None:
    store = acme["manager"].store
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.dir.parent.stat().st_mode) == 0o700
    files = sorted(str(p.relative_to(store.dir)) for p in store.dir.rglob("*") if p.is_file() and not p.is_symlink())
    assert files == ["account.key", "certs/a.example.test/1/chain.pem", "certs/a.example.test/1/key.pem",
                     "certs/a.example.test/1/validity.json", "certs/b.example.test/1/chain.pem",
                     "certs/b.example.test/1/key.pem", "certs/b.example.test/1/validity.json"]
    for path in store.dir.rglob("*"):
        if not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "PRIVATE KEY" not in logged


def test_a_restart_serves_the_stored_certificate_without_asking_again(acme, tls, token) -> None:
    before = served_certificate(acme["https"], DOMAINS[0], acme["client_tls"])["der"]
    account = acme["manager"].store.account_key()
    stack = Stack()
    try:
        http_port, https_port = free_port(), free_port()  # pebble cannot reach these: no issuance possible
        manager = configure(DOMAINS, acme["base"] / "le", issuer=acme["ca"].directory, ca_bundle=acme["ca"].api_ca)
        start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
        after = served_certificate(https_port, DOMAINS[0], acme["client_tls"])["der"]
        assert after == before
        assert manager.issued == 0 and manager.due(datetime.datetime.now(datetime.timezone.utc)) == []
        assert manager.store.account_key() == account
    finally:
        stack.close()


def test_certificates_renew_while_serving(tmp_path, tls, token) -> None:
    """Certificates valid 6 s renew after 4 s: the running server presents the new one."""
    http_port, https_port = free_port(), free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns, validity=6) as ca:
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=ca.directory, ca_bundle=ca.api_ca, retry=1.0)
            start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
            client_tls = ca.client_context(tmp_path)
            wait_until(lambda: manager.issued == 1, 20, "the first certificate")
            first = served_certificate(https_port, DOMAINS[0], client_tls)["der"]
            wait_until(lambda: manager.issued >= 2, 20, "a renewal")
            second = served_certificate(https_port, DOMAINS[0], client_tls)["der"]
            assert second != first
            assert manager.store.load(DOMAINS[0]).chain.read_bytes().startswith(b"-----BEGIN CERTIFICATE")
        finally:
            stack.close()


def test_a_domain_pebble_cannot_validate_fails_in_one_line_and_is_retried(tmp_path, tls, token, caplog) -> None:
    """nowhere.invalid does not resolve (dnsmasq answers only example.test): a clean error, no certificate."""
    http_port, https_port = free_port(), free_port()
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns) as ca:
        stack = Stack()
        try:
            manager = configure(["nowhere.invalid"], tmp_path / "le", issuer=ca.directory, ca_bundle=ca.api_ca,
                                retry=1.0)
            start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
            failed = lambda: [r for r in caplog.records if "certificate_failed" in r.getMessage()]  # noqa: E731
            wait_until(lambda: len(failed()) >= 2, 20, "a failure and its retry")
            message = failed()[0].getMessage()
            assert "nowhere.invalid" in message and "\n" not in message and "retry_in=1s" in message
            assert "could not resolve" in message, message  # pebble's reason, at the end of its long words
            assert manager.certs == {}
            with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw:
                with pytest.raises(ssl.SSLError):  # nothing to present yet: the handshake is refused
                    ca.client_context(tmp_path).wrap_socket(raw, server_hostname="nowhere.invalid")
        finally:
            stack.close()


def test_an_issuer_url_that_is_no_acme_directory_is_said_in_words(tmp_path, tls, token, caplog) -> None:
    """A wrong path in --letsencrypt-issuer: pebble answers 404, and the log said error='DOMAIN: <Response [404]>'."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    http_port = free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns) as ca:
        wrong = ca.directory.replace("/dir", "/directory")
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=wrong, ca_bundle=ca.api_ca, retry=30)
            start_server(stack, tls, token, HttpsFront(manager, free_port()), http_port)
            wait_until(lambda: any("certificate_failed" in r.getMessage() for r in caplog.records), 20, "the failure")
        finally:
            stack.close()
    line = next(r.getMessage() for r in caplog.records if "certificate_failed" in r.getMessage())
    assert f"{wrong} is not an ACME directory (HTTP 404 Not Found): check --letsencrypt-issuer" in line, line
    assert "<Response" not in line


def test_an_unreachable_acme_server_is_reported_and_the_server_keeps_running(tmp_path, tls, token, caplog) -> None:
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    stack = Stack()
    try:
        closed = free_port()
        manager = configure([DOMAINS[0]], tmp_path / "le", issuer=f"https://127.0.0.1:{closed}/dir", retry=30)
        http_port = free_port()
        server = start_server(stack, tls, token, HttpsFront(manager, free_port()), http_port)
        wait_until(lambda: any("certificate_failed" in r.getMessage() for r in caplog.records), 15, "the failure")
        line = next(r.getMessage() for r in caplog.records if "certificate_failed" in r.getMessage())
        assert f"cannot reach the ACME server https://127.0.0.1:{closed}/dir" in line and "retry_in=30s" in line
        assert server.control.addresses  # still up
        socket.create_connection(("127.0.0.1", http_port), timeout=2).close()
    finally:
        stack.close()


def test_a_damaged_account_key_is_named_with_what_to_do(tmp_path, tls, token, caplog) -> None:
    """A store damaged on disk (the account key cut short, overwritten): the failure names the file and the way
    out, where it said "Unable to load PEM file. See https://cryptography.io/... MalformedFraming" at every retry."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    stack = Stack()
    try:
        manager = configure([DOMAINS[0]], tmp_path / "le", issuer=f"https://127.0.0.1:{free_port()}/dir", retry=30)
        manager.store.save_account_key(b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n")
        start_server(stack, tls, token, HttpsFront(manager, free_port()), free_port())
        wait_until(lambda: any("certificate_failed" in r.getMessage() for r in caplog.records), 15, "the failure")
        line = next(r.getMessage() for r in caplog.records if "certificate_failed" in r.getMessage())
        assert f"the ACME account key {manager.store.account_key_path} is not a readable RSA private key" in line
        assert "move it away" in line and "cryptography.io" not in line and "retry_in=30s" in line
    finally:
        stack.close()


def test_a_websocket_over_https_ends_for_the_user_when_its_upstream_closes(tmp_path, tls, token) -> None:
    """Plain HTTP passes the upstream's close on as a FIN; TLS has no half-close, and the user's connection
    stayed open, silent, until the user next wrote (a client only listening waited forever)."""
    from helpers.tunnel import make_tls

    site = make_tls(tmp_path / "site", [DOMAINS[0]])

    async def switch_then_leave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhello")
        await writer.drain()
        writer.close()

    stack = Stack()
    try:
        up = stack.serve(switch_then_leave)
        manager = configure([DOMAINS[0]], tmp_path / "le", issuer=f"https://127.0.0.1:{free_port()}/dir")
        manager.store.save(DOMAINS[0], site.cert.read_bytes(), site.key.read_bytes())  # served as stored: no ACME run
        https_port = free_port()
        server = start_server(stack, tls, token, HttpsFront(manager, https_port), free_port())
        stack.client(server, tls, token, [f"{DOMAINS[0]}=http://{LOOPBACK}:{up}"])
        context = ssl.create_default_context(cafile=str(site.ca))
        with socket.create_connection((LOOPBACK, https_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=DOMAINS[0]) as user:
                user.sendall(b"GET /ws HTTP/1.1\r\nHost: " + DOMAINS[0].encode() + b"\r\nConnection: upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\n")
                received = b""
                try:
                    while data := user.recv(65536):
                        received += data
                except socket.timeout:
                    pytest.fail(f"the connection stayed open after the upstream closed, having sent {received!r}")
        assert received.startswith(b"HTTP/1.1 101 ") and received.endswith(b"\r\n\r\nhello"), received
    finally:
        stack.close()


@pytest.mark.parametrize("damage", ["garbage", "other-key"])
def test_a_damaged_stored_certificate_is_named_and_requested_again(tmp_path, tls, token, caplog, damage) -> None:
    """The log said error='[SSL] PEM lib (_ssl.c:3905)': OpenSSL's words, no file, no word of what happens next."""
    from helpers.tunnel import make_tls

    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    site, other = make_tls(tmp_path / "site", [DOMAINS[0]]), make_tls(tmp_path / "other", [DOMAINS[0]])
    stack = Stack()
    try:
        manager = configure([DOMAINS[0]], tmp_path / "le", issuer=f"https://127.0.0.1:{free_port()}/dir", retry=30)
        stored = manager.store.save(DOMAINS[0], site.cert.read_bytes(), site.key.read_bytes())
        if damage == "garbage":
            stored.chain.write_bytes(b"-----BEGIN CERTIFICATE-----\ncut short")
        else:
            stored.key.write_bytes(other.key.read_bytes())
        start_server(stack, tls, token, HttpsFront(manager, free_port()), free_port())
        line = next(r.getMessage() for r in caplog.records if "certificate_unusable" in r.getMessage())
        assert str(stored.chain) in line and str(stored.key) in line and line.endswith(" next=reissue"), line
        assert "_ssl.c" not in line and "PEM lib" not in line, line
        wait_until(lambda: any("certificate_requesting" in r.getMessage() for r in caplog.records), 10, "a new request")
    finally:
        stack.close()


# ------------------------------------------------------------------ pure parts


def test_renewal_is_due_after_two_thirds_of_the_lifetime() -> None:
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    validity = Validity(start, start + datetime.timedelta(days=90))
    assert validity.renew_at() == start + datetime.timedelta(days=60)
    assert not validity.due(start + datetime.timedelta(days=59, hours=23))
    assert validity.due(start + datetime.timedelta(days=60))
    short = Validity(start, start + datetime.timedelta(days=6))
    assert short.renew_at() == start + datetime.timedelta(days=4)


def test_the_next_look_waits_for_renewals_and_retries_not_longer(tmp_path: Path) -> None:
    from inlets_py.runtime.acme.store import Account, StoredCert
    from inlets_py.runtime.acme.letsencrypt import MAX_SLEEP, LetsEncrypt

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    manager = LetsEncrypt(["a.example.com", "b.example.com"], CertStore(tmp_path, "https://ca.test/dir"),
                          Account("https://ca.test/dir"))
    assert manager.next_check(now, 100.0) == 1.0  # nothing issued yet: at once (at least 1 s apart)
    fresh = Validity(now, now + datetime.timedelta(days=90))
    for domain in manager.domains:
        manager.certs[domain] = StoredCert(domain, tmp_path / "c", tmp_path / "k", fresh)
    assert manager.next_check(now, 100.0) == MAX_SLEEP  # renewal 60 days away: look again in 6 h
    manager.certs["a.example.com"] = StoredCert("a.example.com", tmp_path / "c", tmp_path / "k",
                                                Validity(now - datetime.timedelta(days=89), now + datetime.timedelta(days=1)))
    manager._not_before["a.example.com"] = 100.0 + 300  # due, but its last attempt failed: retry in 300 s
    assert manager.next_check(now, 100.0) == 300.0
    assert manager.due(now) == ["a.example.com"]


def test_option_checks_are_one_line_errors(tmp_path: Path) -> None:
    assert directory_url("staging").startswith("https://acme-staging-v02.")
    assert directory_url("https://ca.internal/acme/dir") == "https://ca.internal/acme/dir"
    assert check_domain("Example.COM.") == "example.com"
    assert check_email(None) is None
    for bad in (lambda: directory_url("http://ca/dir"), lambda: directory_url("production"),
                lambda: check_domain("*.example.com"), lambda: check_domain("localhost"),
                lambda: check_domain("127.0.0.1"), lambda: check_domain("example.123"),
                lambda: check_email("not-an-email")):
        with pytest.raises(AcmeConfigError) as info:
            bad()
        assert "\n" not in str(info.value)
    assert CertStore(tmp_path, directory_url("prod")).dir != CertStore(tmp_path, directory_url("staging")).dir


def _head(raw: bytes):
    return next(e for e in RequestReader().feed(raw) if hasattr(e, "target"))


def test_plain_answers() -> None:
    challenges, ours = {"tok": "tok.thumb"}, {"a.test"}
    assert plain_answer(_head(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.test\r\n\r\n"), challenges,
                        443, ours) == (200, b"tok.thumb", [])
    assert plain_answer(_head(b"GET /.well-known/acme-challenge/other HTTP/1.1\r\nHost: a.test\r\n\r\n"),
                        challenges, 443, ours)[0] == 404
    assert plain_answer(_head(b"POST /form?a=1 HTTP/1.1\r\nHost: a.test:80\r\nContent-Length: 0\r\n\r\n"), challenges,
                        443, ours) == (308, b"", [(b"Location", b"https://a.test/form?a=1")])
    assert plain_answer(_head(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), challenges, 8443, ours)[2] == [
        (b"Location", b"https://a.test:8443/")]
    assert plain_answer(_head(b"GET / HTTP/1.0\r\n\r\n"), challenges, 443, ours)[0] == 400
    assert plain_answer(_head(b"GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n"), challenges, 443, ours)[2] == [
        (b"Location", b"https://a.test/x")]  # absolute form: the target's host and path (RFC 9112 3.2.2)
    assert plain_answer(_head(b"GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n"), challenges, 443,
                        ours)[:2] == (404, b"not a domain of this server: only its Let's Encrypt domains are "
                                           b"redirected to https\n")
    assert plain_answer(_head(b"GET http://a.test:65536/x HTTP/1.1\r\nHost: a.test\r\n\r\n"), challenges, 443, ours)[0] == 400
    assert plain_answer(_head(b"GET / HTTP/1.1\r\nHost: a.test:\r\n\r\n"), challenges, 443, ours)[0] == 308  # RFC 3986


def test_an_existing_letsencrypt_path_keeps_its_mode_and_the_keys_folder_is_private(tmp_path: Path) -> None:
    """--letsencrypt-path /tmp (or a web root) was chmod 0700: every other user and service lost it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    manager = configure(["a.example.com"], shared, issuer="staging")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE(manager.store.dir.stat().st_mode) == 0o700
    manager.store.dir.chmod(0o755)  # the folder holding the keys is ours: tightened again
    configure(["a.example.com"], shared, issuer="staging")
    assert stat.S_IMODE(manager.store.dir.stat().st_mode) == 0o700
    made = configure(["a.example.com"], tmp_path / "new" / "le", issuer="staging").store
    assert stat.S_IMODE(made.dir.parent.stat().st_mode) == stat.S_IMODE(made.dir.stat().st_mode) == 0o700


def test_cli_bad_options_are_one_line_errors() -> None:
    from helpers.process import inlets

    cases = [
        (["--letsencrypt-domain", "bad_name"], "is not a DNS name"),
        (["--letsencrypt-domain", "example.com.."], "'example.com..' is not a DNS name"),  # was example.com
        (["--letsencrypt-domain", "203.0.113.10"], "'203.0.113.10' is an IP address, not a DNS name"),  # pebble:
        # "Order included a DNS identifier with an IP address value", at every retry, the server running on
        (["--letsencrypt-domain", "a.example.com", "--letsencrypt-issuer", "http://ca/dir"], "https:// directory URL"),
        (["--letsencrypt-domain", "a.example.com", "--letsencrypt-email", "nope"], "not an email address"),
        (["--letsencrypt-domain", "a.example.com", "--letsencrypt-ca", "/nonexistent/ca.pem"],
         "--letsencrypt-ca not found: /nonexistent/ca.pem"),
        (["--letsencrypt-domain", "a.example.com", "--letsencrypt-ca", "/tmp"],  # it said "no such file"
         "--letsencrypt-ca /tmp is a directory: give the file itself"),
        (["--letsencrypt-email", "ops@example.com"], "need --letsencrypt-domain"),
        (["--https-port", "8443"], "need --letsencrypt-domain"),
        (["--max-https-handshakes", "2048"], "need --letsencrypt-domain"),
        (["--max-https-handshakes-per-source", "128"], "need --letsencrypt-domain"),
        (["--letsencrypt-domain", "a.example.com", "--max-https-handshakes", "0"],
         "Invalid value for '--max-https-handshakes'"),
        (["--letsencrypt-domain", "a.example.com", "--max-https-handshakes-per-source", "８"],
         "Invalid value for '--max-https-handshakes-per-source'"),
        (["--letsencrypt-domain", "a.example.com", "--letsencrypt-path", "/dev/null/le"], "/dev/null is not a folder"),
    ]
    for args, expected in cases:
        result = inlets("http", "server", "--plaintext", "--token", "t" * 32, *args)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_a_long_acme_error_keeps_its_reason_at_the_end() -> None:
    """pebble's and Boulder's validation errors name the URL they fetched, token and all, before the reason: cut at
    300 characters, "...: no such host" never reached the log. The middle goes now, the start and the end stay."""
    from inlets_py.runtime.acme.client import ERROR_KEPT, _one_line

    words = ("example.test: challenge failed: urn:ietf:params:acme:error:dns :: Get \"http://example.test/.well-known/"
             "acme-challenge/" + "t" * 300 + "\": dial tcp: lookup example.test on 127.0.0.53:53: no such host")
    line = _one_line(Exception(words))
    assert len(line) <= ERROR_KEPT and line.startswith("example.test: challenge failed") and line.endswith("no such host")
    assert _one_line(Exception("short\n  and  spaced")) == "short and spaced"
