"""``bridge.dial``: a stream's upstream connection, over real loopback sockets. A refusal or a
dial that hangs (the upstream's accept queue is full) resets the stream, naming the reason."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import SimpleNamespace

import pytest

from helpers.tunnel import free_port

from inlets_py.runtime.core import bridge
from inlets_py.runtime.core.mux import Multiplexer
from inlets_py.runtime.core.session import Session

#: The websocket of a Session that never runs: no wire, never closing.
NO_WIRE = SimpleNamespace(closing=False)


def stream() -> tuple[Session, object]:
    s = Session(NO_WIRE, Multiplexer(client=True), name="test")  # type: ignore[arg-type]  # no wire needed
    return s, s.open_stream("tcp:80", None)  # type: ignore[arg-type]  # dial attaches its bridge


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_dial_connects_the_streams_bridge() -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, channel = stream()
        bridge.dial(channel, "127.0.0.1", port)  # type: ignore[arg-type]
        handler = channel.handler  # type: ignore[attr-defined]
        await until(lambda: handler.transport is not None)
        assert channel.is_open  # type: ignore[attr-defined]
        handler.transport.close()
        server.close()

    asyncio.run(run())


def test_a_refused_dial_resets_the_stream_naming_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # a port nobody listens on

    async def run() -> None:
        _, channel = stream()
        bridge.dial(channel, "127.0.0.1", port)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="inlets.bridge"):
        asyncio.run(run())
    assert f'upstream=127.0.0.1:{port} error="Connection refused"' in caplog.text


def test_a_dial_that_hangs_times_out_and_resets_the_stream(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: once its queue is full, SYNs are dropped and a connect hangs
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        _, channel = stream()
        started = loop.time()
        bridge.dial(channel, "127.0.0.1", port)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]
        return loop.time() - started

    try:
        with caplog.at_level(logging.INFO, logger="inlets.bridge"):
            took = asyncio.run(run())
    finally:
        for sock in fillers + [listener]:
            sock.close()
    assert 'error="dial timed out"' in caplog.text and 0.4 < took < 3


def test_a_host_name_idna_refuses_resets_the_stream_instead_of_hanging(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        _, channel = stream()
        bridge.dial(channel, "a..b", 22)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="inlets.bridge"):
        asyncio.run(run())
    assert 'upstream=a..b:22 error="invalid host name"' in caplog.text


def test_a_name_that_does_not_resolve_is_said_in_the_resolvers_words(caplog: pytest.LogCaptureFixture) -> None:
    """A resolver failure carries an EAI_* code, not an errno: os.strerror(-2) made it 'Unknown error -2'
    (-3, 'Temporary failure in name resolution', for an upstream name while DNS is down). A name over 255
    bytes fails in the resolver itself, before any query is sent."""
    name = ".".join(["a" * 60] * 5)

    async def run() -> None:
        _, channel = stream()
        bridge.dial(channel, name, 22)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="inlets.bridge"):
        asyncio.run(run())
    assert f'upstream={name}:22 error="Name or service not known"' in caplog.text
    assert "Unknown error" not in caplog.text


def test_empty_data_frames_for_a_byte_stream_are_not_queued_while_it_dials() -> None:
    """They cost the peer no credit: a bridge not yet connected kept every one, without bound."""
    from inlets_py.runtime.core.mux import DataReceived

    async def run() -> None:
        session, channel = stream()
        handler = bridge.TcpBridge()
        handler.attach(channel)  # type: ignore[arg-type]  # as dial attaches it, before the socket connects
        session._dispatch([DataReceived(channel.stream_id, b"")] * 1000)  # type: ignore[attr-defined]
        assert handler._early == []
        session._dispatch([DataReceived(channel.stream_id, b"x")])  # type: ignore[attr-defined]
        assert handler._early == [b"x"]

    asyncio.run(run())


@pytest.mark.parametrize("upstream, said", [
    ("plain", "TLS handshake failed: the upstream does not speak TLS (for a plain HTTP one use http://)"),
    ("tls1.1", "TLS handshake failed: the upstream offers no TLS 1.2 or newer"),
    ("closes", "Connection reset by peer"),
])
def test_a_failed_tls_handshake_is_said_in_words(upstream: str, said: str, tmp_path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An SSLError's errno is OpenSSL's code, 1: an https:// upstream that speaks plain HTTP, or only TLS 1.1,
    was logged as error="Operation not permitted"; one that closed at once (asyncio raises a bare
    ConnectionResetError()) as "dial failed"."""
    import ssl
    import threading
    import warnings

    from helpers.tunnel import make_tls

    tls = make_tls(tmp_path)
    server_tls = None
    if upstream == "tls1.1":
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(tls.cert, tls.key)
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: the point of this upstream
            warnings.simplefilter("ignore", DeprecationWarning)
            server_tls.minimum_version = ssl.TLSVersion.TLSv1_1
            server_tls.maximum_version = ssl.TLSVersion.TLSv1_1
        server_tls.set_ciphers("ALL:@SECLEVEL=0")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if upstream == "plain":
            await reader.read(1)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    def handshake_once(listener: socket.socket) -> None:
        """A blocking TLS server, as http.server's: it answers a ClientHello for 1.2 with its alert."""
        conn, _ = listener.accept()
        try:
            server_tls.wrap_socket(conn, server_side=True)  # type: ignore[union-attr]
        except (ssl.SSLError, OSError):
            pass
        conn.close()

    async def run() -> None:
        if server_tls is None:
            server = await asyncio.start_server(answer, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
        else:
            listener = socket.create_server(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            thread = threading.Thread(target=handshake_once, args=(listener,), daemon=True)
            thread.start()
        client_tls = ssl.create_default_context(cafile=str(tls.ca))
        _, channel = stream()
        bridge.dial(channel, "127.0.0.1", port, tls=client_tls)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]
        if server_tls is None:
            server.close()
        else:
            thread.join(5)
            listener.close()

    with caplog.at_level(logging.INFO, logger="inlets.bridge"):
        asyncio.run(run())
    assert f'error="{said}"' in caplog.text, caplog.text
    assert "Operation not permitted" not in caplog.text


def test_a_udp_upstream_that_does_not_resolve_is_said_in_the_clients_log(caplog: pytest.LogCaptureFixture) -> None:
    """The flow was reset with the reason, which the server does not log: every datagram to that port vanished
    with no line anywhere (`--upstream udp:5353=dns.typo:53`).

    The name is longer than DNS allows (253), so the resolver refuses it here without asking a DNS server: a
    plain ``doesnotexist.invalid`` was sent to this machine's server, off loopback (and read 'Temporary failure
    in name resolution' where there is none)."""
    from inlets_py.runtime.client.udp_upstream import dial_udp

    never = ".".join(["doesnotexist"] * 20) + ".invalid"

    async def run() -> None:
        s = Session(NO_WIRE, Multiplexer(client=True), name="test")  # type: ignore[arg-type]
        channel = s.open_stream("udp:53", None)  # type: ignore[arg-type]
        dial_udp(channel, never, 53)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="inlets.udp"):
        asyncio.run(run())
    assert f'event=upstream_failed upstream={never}:53 proto=udp error="Name or service not known"' \
        in caplog.text, caplog.text


def test_every_dial_that_hangs_times_out_on_uvloop(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Found by a review helper: uvloop's clock is whole milliseconds, so the timer's cancel was seen up to 1 ms
    before its own ``when()`` and taken for a shutdown's: about 1 in 8 blackholed dials never reset their stream,
    and the HTTP user waited the server's --upstream-timeout (504 at 60 s) instead of the next client at 10 s."""
    uvloop = pytest.importorskip("uvloop")

    async def never(host: str, port: int, failures: list | None = None) -> socket.socket:
        await asyncio.sleep(3600)  # a SYN that is never answered
        raise AssertionError

    async def run() -> int:
        channels = []
        for i in range(40):  # timeouts spread over the millisecond: some land before the clock's next tick
            monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 0.2 + i * 0.00013)
            _, channel = stream()
            bridge.dial(channel, "127.0.0.1", 9, opener=never)  # type: ignore[arg-type]
            channels.append(channel)
            await asyncio.sleep(0.0003)
        deadline = asyncio.get_running_loop().time() + 1.5
        while any(c.is_open for c in channels) and asyncio.get_running_loop().time() < deadline:  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)
        return sum(c.is_open for c in channels)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="inlets.bridge"):
        hung = uvloop.run(run())
    assert hung == 0, f"{hung} of 40 dials that hung never reset their stream"
    assert caplog.text.count('error="dial timed out"') == 40


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # an address; a name (its socket is dialled apart)
def test_an_https_upstream_that_accepts_and_never_answers_the_handshake_is_told_from_one_that_drops_syns(
        host: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a review helper: an https:// upstream whose kernel took the connection but whose app never answered
    (hung, or a plain HTTP server waiting for a request line) was said "dial timed out", the words of a host down or
    a firewall dropping packets (2 of 2 upstreams, CLIs); now the handshake's timeout says the upstream accepted."""
    from inlets_py.runtime.client.http_upstreams import HttpUpstream, HttpUpstreams, upstream_tls

    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 0.5)
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)  # never accepts: the kernel completes the connect
    port = listener.getsockname()[1]

    async def run() -> None:
        upstreams = HttpUpstreams({"http:*": HttpUpstream("https", host, port)}, upstream_tls())
        session = Session(NO_WIRE, Multiplexer(client=True), name="test")  # type: ignore[arg-type]
        channel = session.open_stream("http:*", None)  # type: ignore[arg-type]
        upstreams.on_stream(channel)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    try:
        with caplog.at_level(logging.INFO, logger="inlets.http"):
            asyncio.run(run())
    finally:
        listener.close()
    assert (f'upstream=https://{host}:{port} error="no TLS answer within 0.5 s: the upstream accepted the connection '
            'but never answered the handshake') in caplog.text, caplog.text
