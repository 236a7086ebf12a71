"""Clients behind outbound proxies: real tinyproxy (HTTP CONNECT) and Dante (SOCKS5) on loopback.

Every proxy connects out from its own loopback address, so each test checks on the
tunnel server that the client really came through the proxy, not around it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

import pytest
from helpers.integrity import Upstream as HashingUpstream, exchange, payloads
from helpers.proxy_daemons import Daemon, dante, free_port, tinyproxy
from helpers.tunnel import (
    TlsFiles, control_url, echo_server, make_tls, polled, port_of, run, start_client, start_server, stop,
    wait_listening,
)

from inlets_py.runtime.client.outbound_proxy import ProxyConfigError, choose
from inlets_py.runtime.client.proxy_dial import dial
from inlets_py.runtime.core.probe import ProbeError
from inlets_py.runtime.client.tcp_upstreams import Upstream

MiB = 1024 * 1024
USER, PASSWORD = "alice", "pw-Zq8-never-logged"


@pytest.fixture(scope="module")
def open_proxy(tmp_path_factory: pytest.TempPathFactory):
    daemon = tinyproxy(tmp_path_factory.mktemp("tinyproxy-open"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory):
    daemon = tinyproxy(tmp_path_factory.mktemp("tinyproxy-auth"), auth=(USER, PASSWORD))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def strict_proxy(tmp_path_factory: pytest.TempPathFactory):
    """Allows CONNECT to port 443 only: anything else gets tinyproxy's 403."""
    daemon = tinyproxy(tmp_path_factory.mktemp("tinyproxy-strict"), connect_ports=[443])
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def socks_proxy(tmp_path_factory: pytest.TempPathFactory):
    """Dante; connections to ``daemon.blocked`` are refused by its rules."""
    blocked = free_port()
    daemon = dante(tmp_path_factory.mktemp("dante"), block_port=blocked)
    daemon.blocked = blocked  # type: ignore[attr-defined]
    yield daemon
    daemon.stop()


def http_url(daemon: Daemon, auth: tuple[str, str] | None = None) -> str:
    creds = f"{auth[0]}:{auth[1]}@" if auth else ""
    return f"http://{creds}127.0.0.1:{daemon.port}"


def remotes(server) -> list[str]:
    return [info.remote.rsplit(":", 1)[0] for info in server.control.clients.values()]


# ------------------------------------------------------------- integrity through each proxy


def transfer_through(tls: TlsFiles, token: str, proxy: str, came_from: str) -> None:
    up, down = payloads(64 * MiB)

    async def scenario() -> None:
        upstream = HashingUpstream(down)
        up_port = await upstream.start()
        server = await start_server(tls, token)
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", up_port)},
                                          proxy=proxy)
        try:
            assert remotes(server) == [came_from], "the client did not come through the proxy"
            await wait_listening("127.0.0.1", public)
            await exchange(public, upstream, up)
        finally:
            await stop(task)
            await server.stop()

    run(scenario(), timeout=90)


def test_64_mib_each_way_through_an_http_connect_proxy(tls: TlsFiles, token: str, open_proxy: Daemon) -> None:
    transfer_through(tls, token, http_url(open_proxy), open_proxy.bound_from)


def test_64_mib_each_way_through_an_http_connect_proxy_with_basic_auth(
    tls: TlsFiles, token: str, auth_proxy: Daemon
) -> None:
    transfer_through(tls, token, http_url(auth_proxy, (USER, PASSWORD)), auth_proxy.bound_from)


def test_64_mib_each_way_through_a_socks5_proxy(tls: TlsFiles, token: str, socks_proxy: Daemon) -> None:
    transfer_through(tls, token, f"socks5://127.0.0.1:{socks_proxy.port}", socks_proxy.bound_from)


# ------------------------------------------------------------------- the environment


@pytest.mark.parametrize("variables, expected", [
    ({"HTTPS_PROXY": "{http}"}, "tinyproxy"),
    ({"https_proxy": "127.0.0.1:{http_port}"}, "tinyproxy"),  # bare host:port, as curl takes it
    ({"ALL_PROXY": "socks5://127.0.0.1:{socks_port}"}, "danted"),
    ({"HTTPS_PROXY": "{http}", "NO_PROXY": "localhost,127.0.0.1"}, "direct"),
    ({"HTTPS_PROXY": "{http}", "NO_PROXY": "10.0.0.0/8, 127.0.0.0/8"}, "direct"),  # CIDR, as curl and Go read it
])
def test_proxy_from_the_environment(
    tls: TlsFiles, token: str, open_proxy: Daemon, socks_proxy: Daemon, monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str], expected: str,
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "WSS_PROXY",
                 "wss_proxy", "SOCKS_PROXY", "socks_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(http=http_url(open_proxy), http_port=open_proxy.port,
                                              socks_port=socks_proxy.port))
    came_from = {"tinyproxy": open_proxy.bound_from, "danted": socks_proxy.bound_from, "direct": "127.0.0.1"}[expected]

    async def scenario() -> None:
        echo = await echo_server()
        server = await start_server(tls, token)
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
        try:
            assert remotes(server) == [came_from]
            await wait_listening("127.0.0.1", public)
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            writer.write(b"via the environment")
            writer.write_eof()
            assert await reader.read() == b"via the environment"
            writer.close()
        finally:
            await stop(task)
            await server.stop()

    run(scenario(), timeout=30)


@pytest.mark.parametrize("no_proxy, url, direct", [
    ("10.0.0.0/8", "wss://10.1.2.3:8123", True),
    ("10.0.0.0/8", "wss://11.1.2.3:8123", False),
    ("[::1]", "wss://[::1]:8123", True),
    ("::1", "wss://[::1]:8123", True),
    ("fd00::/8", "wss://[fd00::5]:8123", True),
    ("fd00::/8", "wss://10.1.2.3:8123", False),
    ("[fd00::5]:8123", "wss://[fd00::5]:8123", True),
    ("[fd00::5]:443", "wss://[fd00::5]:8123", False),
    ("127.0.0.1:9999", "wss://127.0.0.1:8123", False),
    ("127.0.0.1:8123", "wss://127.0.0.1:8123", True),
    ("example.com:x", "wss://example.com:8123", False),
    (".example.com", "wss://tunnel.example.com:8123", True),
    ("example.com", "wss://tunnel.example.com:8123", True),
    ("example.com", "wss://badexample.com:8123", False),
    ("Example.COM.", "wss://EXAMPLE.com.:8123", True),
    (" a.test , * ", "wss://anything:8123", True),
    ("10.1.2.0/24", "wss://tunnel.internal:8123", False),  # a name is not resolved to match a range
    # an address is matched by addresses and ranges, never by a name's suffix rule: curl 7.88 takes the proxy for
    # each of these (urllib's proxy_bypass, and ours, went direct)
    (".0.0.1", "wss://127.0.0.1:8123", False),
    ("0.0.1", "wss://127.0.0.1:8123", False),
    (".1", "wss://127.0.0.1:8123", False),
    ("0:0:1", "wss://[::1]:8123", False),
    ("127.0.0.1", "wss://127.0.0.1:8123", True),
    ("localhost", "wss://127.0.0.1:8123", False),  # no name is resolved, nor an address named
])
def test_no_proxy_names_ranges_and_ports(monkeypatch: pytest.MonkeyPatch, no_proxy: str, url: str, direct: bool) -> None:
    for name in ("NO_PROXY", "no_proxy", "WSS_PROXY", "wss_proxy", "ALL_PROXY", "all_proxy", "SOCKS_PROXY", "socks_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://corp:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert (choose(None, url + "/connect").url is None) == direct


def test_choosing_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert choose(None, "wss://h:8123/connect").url is None
    monkeypatch.setenv("HTTP_PROXY", "http://plain:3128")
    assert choose(None, "wss://h:8123/connect").url is None  # wss:// never uses HTTP_PROXY
    assert choose(None, "ws://h:80/connect").url == "http://plain:3128"
    monkeypatch.setenv("ALL_PROXY", "socks5h://s:1080")
    assert (choose(None, "wss://h:8123/connect").url, choose(None, "wss://h:8123/connect").source) == (
        "socks5h://s:1080", "ALL_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", "http://corp:3128")
    assert choose(None, "wss://h:8123/connect").url == "http://corp:3128"  # HTTPS_PROXY before ALL_PROXY
    assert choose("socks5://mine:1080", "wss://h:8123/connect").url == "socks5://mine:1080"  # the flag wins
    assert choose("none", "wss://h:8123/connect").url is None
    monkeypatch.setenv("NO_PROXY", ".internal")
    assert choose(None, "wss://tunnel.internal:8123/connect").url is None
    assert choose(None, "wss://other:8123/connect").url == "http://corp:3128"
    shown = choose("http://u:secret@corp:3128", "wss://h/connect").shown
    assert shown == "http://u@corp:3128"
    # no port given: shown as given ('http://corp:corp' before), brackets and user kept
    for given, shown in [("http://corp", "http://corp"), ("corp", "http://corp"), ("http://[::1]", "http://[::1]"),
                         ("http://u:secret@corp", "http://u@corp"), ("http://[::1]:3128", "http://[::1]:3128")]:
        assert choose(given, "wss://h:8123/connect").shown == shown, given
    for bad, why in [("ftp://corp:21", "not supported"), ("http://u@corp:3128", "without password"),
                     ("http://:3128", "names no host"), ("http://u:secret@corp:3128/path", "path")]:
        with pytest.raises(ProxyConfigError, match=why) as raised:
            choose(bad, "wss://h:8123/connect")
        assert "secret" not in str(raised.value)


def test_the_variable_named_is_the_one_whose_proxy_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTPS_PROXY and https_proxy both set, https_proxy's proxy is used (as curl and urllib take it), but the
    log line and a refusal's "check the user and password in $HTTPS_PROXY" named the other variable."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:3128")
    monkeypatch.setenv("https_proxy", "http://u:wrong@lower:3128")
    choice = choose(None, "wss://h:8123/connect")
    assert (choice.url, choice.source) == ("http://u:wrong@lower:3128", "https_proxy")
    monkeypatch.delenv("https_proxy")
    choice = choose(None, "wss://h:8123/connect")
    assert (choice.url, choice.source) == ("http://upper:3128", "HTTPS_PROXY")


def test_socks_proxy_as_a_bare_host_and_port_is_a_socks_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """SOCKS_PROXY=HOST:PORT was read as an HTTP proxy (a bare host:port means one elsewhere), so the client sent
    CONNECT to a SOCKS server and was told "sent no valid HTTP answer (is it an HTTP proxy?)"."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SOCKS_PROXY", "127.0.0.1:1080")
    choice = choose(None, "wss://h:8123/connect")
    assert (choice.url, choice.source) == ("socks5h://127.0.0.1:1080", "SOCKS_PROXY")
    monkeypatch.setenv("SOCKS_PROXY", "http://127.0.0.1:1080")  # as websockets reads it
    assert choose(None, "wss://h:8123/connect").url == "socks5h://127.0.0.1:1080"
    monkeypatch.setenv("SOCKS_PROXY", "socks5://127.0.0.1:1080")
    assert choose(None, "wss://h:8123/connect").url == "socks5://127.0.0.1:1080"


# ------------------------------------------------------------ refusals: one line, retried


def failures(client_proxy: str, tls: TlsFiles, token: str, caplog: pytest.LogCaptureFixture,
             server_port: int | None = None, serve: bool = True) -> list[str]:
    """Run a client through ``client_proxy`` until it has failed twice; it must still be retrying."""
    caplog.set_level(logging.INFO, logger="inlets.client")

    async def scenario() -> list[str]:
        server = await start_server(tls, token, port=server_port or 0) if serve else None
        url = control_url(server) if server else f"wss://127.0.0.1:{server_port}"
        client, task = await start_client(url, token, tls, {free_port(): Upstream("127.0.0.1", 9)}, wait=False,
                                          proxy=client_proxy)
        try:
            for _ in range(200):  # bounded: 200 x 50 ms
                lines = [r.getMessage() for r in caplog.records if "event=connect_failed" in r.getMessage()]
                if len(lines) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert not task.done(), f"the client gave up: {task.exception() if task.done() else ''}"
            assert not client.connected.is_set()
            return lines
        finally:
            await stop(task)
            if server:
                await server.stop()

    lines = run(scenario(), timeout=30)
    assert len(lines) >= 2, f"expected retries, got {lines}"
    assert all("\n" not in line for line in lines)
    assert PASSWORD not in caplog.text and "Traceback" not in caplog.text
    return lines


def test_407_without_credentials_names_the_proxy_and_retries(tls, token, auth_proxy, caplog) -> None:
    lines = failures(http_url(auth_proxy), tls, token, caplog)
    assert f"proxy http://127.0.0.1:{auth_proxy.port} refused CONNECT 127.0.0.1:" in lines[0]
    assert "HTTP 407 Proxy Authentication Required" in lines[0] and "credentials" in lines[0]
    # what to do next keeps the password off the command line (ps shows it there)
    assert "--proxy-password-file" in lines[0] and "USER:PASSWORD" not in lines[0], lines[0]


def test_wrong_password_is_reported_but_never_shown(tls, token, auth_proxy, caplog) -> None:
    lines = failures(http_url(auth_proxy, (USER, "wrong-" + PASSWORD)), tls, token, caplog)
    assert f"proxy http://{USER}@127.0.0.1:{auth_proxy.port} refused CONNECT" in lines[0]
    assert "HTTP 401 Unauthorized" in lines[0] and "credentials refused" in lines[0]  # tinyproxy's answer
    assert "--proxy-password-file" in lines[0] and "USER:PASSWORD" not in lines[0], lines[0]


def test_403_from_a_proxy_that_forbids_the_port(tls, token, strict_proxy, caplog) -> None:
    lines = failures(http_url(strict_proxy), tls, token, caplog)
    assert f"proxy http://127.0.0.1:{strict_proxy.port} refused CONNECT" in lines[0]
    assert "HTTP 403" in lines[0] and "does not allow" in lines[0]


def test_proxy_that_cannot_reach_the_server(tls, token, open_proxy, caplog) -> None:
    lines = failures(http_url(open_proxy), tls, token, caplog, server_port=free_port(), serve=False)
    assert f"proxy http://127.0.0.1:{open_proxy.port} refused CONNECT" in lines[0] and "HTTP 500" in lines[0]


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_unreachable_proxy(tls, token, caplog, scheme: str) -> None:
    dead = free_port()
    lines = failures(f"{scheme}://127.0.0.1:{dead}", tls, token, caplog)
    assert f"proxy {scheme}://127.0.0.1:{dead} unreachable: Connection refused" in lines[0]


def test_socks5_refusal_names_the_proxy_and_its_reason(tls, token, socks_proxy, caplog) -> None:
    lines = failures(f"socks5://127.0.0.1:{socks_proxy.port}", tls, token, caplog, server_port=socks_proxy.blocked)
    assert f"proxy socks5://127.0.0.1:{socks_proxy.port} refused the connection to 127.0.0.1:{socks_proxy.blocked}" in lines[0]
    assert "not allowed by ruleset" in lines[0]


# ------------------------------------------------------------ proxies that lie or go quiet (no daemon does that)


async def _lying_proxy(behaviour: str) -> asyncio.Server:
    """An HTTP proxy on loopback that reads the CONNECT, then: ``close`` without a word, ``tunnel-then-close``
    (says 200, then closes before anything reaches the server), ``answer:STATUS LINE`` (that line, then closes), or
    stays ``silent``. Or a SOCKS5 proxy answering
    ``socks-no-methods`` (0xFF to the greeting) or ``socks-host-unreachable`` (REP 4 to the CONNECT)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour.startswith("socks"):
            await reader.read(512)
            if behaviour == "socks-no-methods":
                writer.write(b"\x05\xff")
            else:
                writer.write(b"\x05\x00")
                await reader.read(512)
                writer.write(b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00")
            await writer.drain()
            writer.close()
            return
        await reader.readuntil(b"\r\n\r\n")
        if behaviour.startswith("answer:"):  # this status line, then closes
            writer.write(behaviour.removeprefix("answer:").encode("latin-1") + b"\r\n\r\n")
            await writer.drain()
        if behaviour == "tunnel-then-close":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        elif behaviour == "silent":
            await asyncio.sleep(60)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def lied_to(behaviour: str, tls: TlsFiles, token: str, caplog: pytest.LogCaptureFixture, count: int,
            open_timeout: float = 15.0, scheme: str = "http://") -> list[str]:
    """The client's first ``count`` connect_failed lines through a ``_lying_proxy`` (``scheme``: http:// or
    socks5://, a user and password may follow); it keeps retrying."""
    caplog.set_level(logging.INFO, logger="inlets.client")

    async def scenario() -> list[str]:
        proxy = await _lying_proxy(behaviour)
        client, task = await start_client(f"wss://127.0.0.1:{free_port()}", token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          wait=False, proxy=f"{scheme}127.0.0.1:{port_of(proxy)}", open_timeout=open_timeout)
        try:
            for _ in range(500):  # bounded: 500 x 50 ms (the silent proxy takes the open timeout)
                lines = [r.getMessage() for r in caplog.records if "event=connect_failed" in r.getMessage()]
                if len(lines) >= count:
                    break
                await asyncio.sleep(0.05)
            assert not task.done(), f"the client gave up: {task.exception() if task.done() else ''}"
            await asyncio.sleep(0.2)  # a late callback of the failed attempt would log now
            return lines
        finally:
            await stop(task)
            proxy.close()

    return run(scenario(), timeout=40)


def test_a_proxy_that_grants_the_tunnel_then_closes_it_is_said_in_words(tls, token, caplog) -> None:
    lines = lied_to("tunnel-then-close", tls, token, caplog, 2)
    assert len(lines) >= 2 and all("\n" not in line for line in lines), lines
    assert 'error="through proxy http://127.0.0.1:' in lines[0], lines[0]
    assert ': the connection closed before the server answered"' in lines[0], lines[0]  # was "...:{port}: '"
    assert "Traceback" not in caplog.text and "recv_messages" not in caplog.text  # websockets' failed TLS start


def test_a_proxy_that_never_answers_times_out_in_words(tls, token, caplog) -> None:
    lines = lied_to("silent", tls, token, caplog, 1, open_timeout=2.0)  # the default 15 s, shortened for the test
    assert len(lines) == 1 and "timed out: neither the proxy nor, through it, the server 127.0.0.1:" in lines[0], lines


def test_a_proxy_that_closes_without_answering_leaves_one_line_per_attempt_and_no_traceback(tls, token, caplog) -> None:
    lines = lied_to("close", tls, token, caplog, 2)
    assert len(lines) >= 2 and "closed the connection without answering CONNECT" in lines[0], lines
    assert "Traceback" not in caplog.text and "EOFError" not in caplog.text  # websockets fed the end twice


def test_a_proxy_that_closes_without_answering_is_said_so_by_the_client_as_by_status(tls, token, caplog) -> None:
    """A proxy that reads CONNECT and closes without a word: `inlets status` said so, the client said it "sent no
    valid HTTP answer to CONNECT ... (is it an HTTP proxy?)", sending the user to check the wrong thing. Both now
    say the same words, for the same proxy and server."""
    caplog.set_level(logging.INFO, logger="inlets.client")

    async def scenario() -> tuple[str, str]:
        proxy = await _lying_proxy("close")
        proxy_url, server_port = f"http://127.0.0.1:{port_of(proxy)}", free_port()
        try:
            with pytest.raises(ProbeError) as status:
                await asyncio.to_thread(dial, proxy_url, "127.0.0.1", server_port, 5)
            client, task = await start_client(f"wss://127.0.0.1:{server_port}", token, tls,
                                              {free_port(): Upstream("127.0.0.1", 9)}, wait=False, proxy=proxy_url)
            try:
                assert await polled(lambda: "event=connect_failed" in caplog.text, 10)
                return str(status.value), next(r.getMessage() for r in caplog.records
                                               if "event=connect_failed" in r.getMessage())
            finally:
                await stop(task)
        finally:
            proxy.close()

    said, line = run(scenario(), timeout=30)
    assert "closed the connection without answering CONNECT 127.0.0.1:" in said, said
    assert f'error="{said}"' in line, line  # was: sent no valid HTTP answer to CONNECT ... (is it an HTTP proxy?)


def test_an_https_proxy_whose_certificate_is_not_trusted_is_named_rather_than_the_server(tmp_path, tls, token) -> None:
    """The proxy's certificate failed and the client blamed the server: 'wss://...: TLS certificate verification
    failed ... (check --tls-ca: it must be the CA that signed the server's certificate)'."""
    proxy_tls = make_tls(tmp_path / "proxy-tls", ["127.0.0.1"])  # a CA of its own, in no trust store

    async def scenario() -> BaseException | None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(proxy_tls.cert, proxy_tls.key)
        proxy = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0, ssl=context)
        client, task = await start_client(f"wss://127.0.0.1:{free_port()}", token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          wait=False, proxy=f"https://127.0.0.1:{port_of(proxy)}")
        try:
            await asyncio.wait([task], timeout=15)
            assert task.done(), "the client kept retrying a proxy certificate that will never verify"
            return task.exception()
        finally:
            await stop(task)
            proxy.close()

    failure = str(run(scenario(), timeout=30))
    assert failure.startswith("proxy https://127.0.0.1:") and "its TLS certificate could not be verified" in failure, failure
    assert "--tls-ca" not in failure and "wss://" not in failure, failure


def test_a_proxy_inspecting_tls_with_a_certificate_of_its_own_is_named(tmp_path, tls, token) -> None:
    """A corporate proxy that grants CONNECT and then answers TLS itself (inspection) ended the client with
    "wss://...: TLS certificate verification failed ... (check --tls-ca ...)": the proxy it went through unsaid."""
    inspecting = make_tls(tmp_path / "inspecting-tls", ["127.0.0.1"])

    async def scenario() -> BaseException | None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(inspecting.cert, inspecting.key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            try:
                await writer.start_tls(context)
            except (OSError, ssl.SSLError):
                pass  # the client refuses the certificate, as it should
            writer.close()

        proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
        client, task = await start_client(f"wss://127.0.0.1:{free_port()}", token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          wait=False, proxy=f"http://127.0.0.1:{port_of(proxy)}")
        try:
            await asyncio.wait([task], timeout=15)
            assert task.done(), "the client kept retrying a certificate that will never verify"
            return task.exception()
        finally:
            await stop(task)
            proxy.close()

    failure = str(run(scenario(), timeout=30))
    assert "through proxy http://127.0.0.1:" in failure and "TLS certificate verification failed" in failure, failure


@pytest.mark.parametrize("behaviour, scheme, says", [
    ("socks-host-unreachable", "socks5://", "cannot reach 127.0.0.1:{port}: Host unreachable (the proxy cannot reach "
     "that host: check that the server is up and that --url names an address the proxy can reach)"),
    # a user and password were offered too: not "proxy credentials refused: check the user and password"
    ("socks-no-methods", "socks5://alice:pw@", "refused the connection to 127.0.0.1:{port}: No acceptable "
     "authentication methods were offered (the proxy accepts neither no authentication nor a user and password, "
     "the only methods inlets speaks: ask its administrators for a user and password it takes)"),
])
def test_a_socks5_refusal_says_what_to_do(tls, token, caplog, behaviour: str, scheme: str, says: str) -> None:
    """'refused the connection to HOST:PORT: Host unreachable' said what happened and nothing to do about it."""
    lines = lied_to(behaviour, tls, token, caplog, 1, scheme=scheme)
    port = lines[0].split("url=wss://127.0.0.1:")[1].split()[0]
    assert says.format(port=port) in lines[0], lines[0]


@pytest.mark.parametrize("line, granted", [
    ("HTTP/1.1 200", True),  # RFC 9112: the reason may be empty; curl takes it without its space: status did, the client not
    ("HTTP/1.1 200 ", True),
    ("HTTP/1.1 200 Connection established", True),
    ("HTTP/1.0 204 No Content", True),  # any 2xx grants the tunnel (RFC 9110): the client took it, status refused it
    ("HTTP/1.2 200 OK", False),  # status took it, the client did not
    ("HTTP/1.1 99 Early", False),
    ("HTTP/1.1  200 OK", False),
])
def test_the_client_and_status_take_the_same_answers_to_connect(tls, token, caplog, line: str, granted: bool) -> None:
    """`inlets status` and the client read a proxy's answer to CONNECT apart: each took a status line the other
    refused as 'sent no valid HTTP answer'. Granted, the proxy here closes the tunnel at once, which the client
    says in its own words; the status dial returns the socket."""
    [client_line] = lied_to(f"answer:{line}", tls, token, caplog, 1)
    refused = "sent no valid HTTP answer to CONNECT"
    assert (refused not in client_line and "the connection closed before the server answered" in client_line
            if granted else refused in client_line), client_line

    async def status_dial() -> str:
        proxy = await _lying_proxy(f"answer:{line}")
        try:
            (await asyncio.to_thread(dial, f"http://127.0.0.1:{port_of(proxy)}", "127.0.0.1", 8123, 5)).close()
            return "granted"
        except ProbeError as exc:
            return str(exc)
        finally:
            proxy.close()

    said = run(status_dial(), timeout=20)
    assert said == "granted" if granted else refused in said, said
