"""The control port's edges between the TLS handshake and a client's welcome: a connection upgraded but not yet a
client when the server starts draining or its token is removed, websocket protocol errors before the hello, HTTP
requests the library cannot parse, an upgrade without Host, a hello that lists a service twice. Real sockets, a real
server in this process."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time

import pytest
from helpers.hostile import raw_client, still_serving
from helpers.tunnel import TlsFiles, free_port, run, start_server
from websockets.exceptions import ConnectionClosed

from inlets_py.runtime.core.handshake import Hello, HandshakeError, parse_hello
from inlets_py.runtime.core.tls import client_context


async def closed_with(ws, timeout: float = 5) -> tuple[int, str]:
    """The close code and reason the server sent."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), timeout)
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_a_token_removed_after_the_upgrade_is_refused_at_the_hello(tls: TlsFiles, token: str, caplog) -> None:
    """The token is checked at the upgrade; removed (SIGHUP) before the hello came, the connection was welcomed and
    served users until the next reload. Now its hello gets 1008 as a connected client does, and no port opens."""
    caplog.set_level(logging.INFO, logger="inlets.server")

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)  # upgraded with the token, no hello yet
        server.control.config.tokens.replace(["a-new-token-" + "x" * 40])  # the reload's two steps
        server.control.revoke_stale_tokens(1.0)
        await ws.send(Hello("tcp", [f"tcp:{free_port()}"], "late", 1 << 20).encode())
        assert await closed_with(ws) == (1008, "token revoked")
        assert not server.control.clients and not server.listeners
        assert "event=client_connected" not in caplog.text and "event=listening" not in caplog.text
        await server.stop()

    run(scenario())


def test_draining_closes_a_connection_without_hello_at_once_and_ends_in_time(tls: TlsFiles, token: str) -> None:
    """SIGTERM's drain: a connection upgraded whose hello had not come was left open, so a silent one held the exit
    for the 10 s hello timeout (then 4000 "no hello"), and one whose hello came next was welcomed and its ports
    opened. Now it is closed at once, 1001, and the drain ends well within its timeout."""

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        started = time.monotonic()
        drain = asyncio.ensure_future(server.drain(5))
        assert await closed_with(ws) == (1001, "server shutting down")
        await asyncio.wait_for(drain, 4)
        assert time.monotonic() - started < 3

    run(scenario())


def test_a_hello_sent_as_the_drain_begins_is_refused_and_opens_no_port(tls: TlsFiles, token: str, caplog) -> None:
    """The hello is on its way when the drain starts: whichever comes first, the client gets 1001 (going away: it
    tries again, elsewhere or later), no port opens, no client is admitted, and the drain ends."""
    caplog.set_level(logging.INFO, logger="inlets.server")

    async def scenario() -> None:
        server = await start_server(tls, token)
        others = await raw_client(server, tls, token)
        ws = await raw_client(server, tls, token)
        await ws.send(Hello("tcp", [f"tcp:{free_port()}"], "late", 1 << 20).encode())
        drain = asyncio.ensure_future(server.drain(5))
        code, _ = await closed_with(ws)
        assert code == 1001
        assert (await closed_with(others))[0] == 1001
        await asyncio.wait_for(drain, 4)
        assert not server.control.clients and not server.listeners
        assert "event=client_connected" not in caplog.text and "event=listening" not in caplog.text

    run(scenario())


@pytest.mark.parametrize(
    "frame, close",
    [
        (b"\x81\x05hello", "1002 incorrect masking"),  # a client's frames are masked
        (b"\xc1\x80" + b"\x00" * 4, "1002 reserved bits must be 0"),
        (b"\x89\xfe\x00\xc8" + b"\x00" * 4 + b"p" * 200, "1002 control frame too long"),
        (b"\x88\x82" + b"\x00" * 4 + struct.pack("!H", 1016), "1002 invalid status code"),
    ],
)
def test_a_protocol_error_before_the_hello_is_logged(tls: TlsFiles, token: str, frame: bytes, close: str,
                                                      caplog) -> None:
    """The library closes with the right code; the server said nothing of it (its own log stays silenced)."""
    caplog.set_level(logging.INFO, logger="inlets.server")

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        ws.transport.write(frame)  # under the library: the bytes as they are
        code, reason = await closed_with(ws)
        assert f"{code} {reason}" == close
        await logged(caplog, "event=handshake_refused")
        lines = [r for r in caplog.records if "event=handshake_refused" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING, caplog.text
        assert f'close="{close}"' in lines[0].getMessage() and "remote=127.0.0.1:" in lines[0].getMessage()
        await still_serving(server, tls, token)
        await server.stop()

    run(scenario())


async def _answer(server, tls: TlsFiles, request: bytes, head_only: bool = False) -> bytes:
    """The control port's whole answer to ``request``, sent as is over TLS (its head only: an upgrade stays open)."""
    port = server.control.addresses[0][1]
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=client_context(tls.ca), server_hostname="127.0.0.1"), 5)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n") if head_only else reader.read(), 5)
    finally:
        writer.close()


async def logged(caplog, text: str) -> None:
    """Until ``text`` is logged (the refusal is logged once the library has closed the connection), at most 3 s."""
    for _ in range(150):
        if text in caplog.text:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not logged: {text}\n{caplog.text}")


HOST = b"Host: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    "request_bytes, reason",
    [
        (b"GET\r\n\r\n", "malformed request line"),
        (b"GET /healthz HTTP/1.1\r\n" + HOST + b"BrokenHeader\r\n\r\n", "malformed header field"),
        (b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", "malformed header field"),
        (b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-A : b\r\n\r\n", "malformed header field"),
        (b"GET /healthz HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         "Transfer-Encoding is not supported"),
        (b"GET /healthz HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\n\r\nhi", "a request to this port takes no body"),
        (b"GET /healthz HTTP/1.1\n" + HOST + b"\r\n", "lines must end with CRLF"),
    ],
)
def test_a_malformed_request_is_answered_400_and_logged(tls: TlsFiles, token: str, request_bytes: bytes,
                                                        reason: str, caplog) -> None:
    """The connection was closed without a word and nothing was logged, where an oversized request got 431/414 and
    ``event=request_refused``. The reason repeats none of the request's bytes (a broken Authorization line)."""
    caplog.set_level(logging.INFO, logger="inlets.server")
    requests: list[tuple[str, int]] = []

    async def scenario() -> None:
        server = await start_server(tls, token)
        server.control.config.on_request = lambda path, status: requests.append((path, status))  # the metrics' hook
        answer = await _answer(server, tls, request_bytes)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
        assert answer.endswith(f"\r\n\r\nbad request: {reason}\n".encode()), answer
        await logged(caplog, f'status=400 reason="{reason}"')
        assert "event=request_refused remote=127.0.0.1:" in caplog.text
        assert requests == [("", 400)]
        assert (await _answer(server, tls, b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n")).endswith(b"OK\n")
        await server.stop()

    run(scenario())


def test_a_websocket_upgrade_without_host_is_refused(tls: TlsFiles, token: str, caplog) -> None:
    """RFC 6455 4.2.1: the server answers 400 to an opening handshake without Host; it was upgraded (101)."""
    caplog.set_level(logging.INFO, logger="inlets.server")
    upgrade = (b"GET /connect HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               + f"Authorization: Bearer {token}\r\n".encode())

    async def scenario() -> None:
        server = await start_server(tls, token)
        for extra in (b"", HOST + HOST):
            answer = await _answer(server, tls, upgrade + extra + b"\r\n")
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
            assert answer.endswith(b"bad request: a websocket upgrade needs one Host header\n")
        assert caplog.text.count("event=request_refused") == 2
        assert (await _answer(server, tls, upgrade + HOST + b"\r\n", head_only=True)).startswith(b"HTTP/1.1 101 ")
        await server.stop()

    run(scenario())


def test_a_hello_that_lists_a_service_twice_is_refused(tls: TlsFiles, token: str) -> None:
    service = "tcp:26130"
    with pytest.raises(HandshakeError) as refused:
        parse_hello(Hello("tcp", ["tcp:26131", service, service], "twice", 1 << 20).encode())
    assert refused.value.code == 4000 and service in str(refused.value) and "twice" in str(refused.value)

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        port = f"tcp:{free_port()}"
        await ws.send(json.dumps({**json.loads(Hello("tcp", [port], "twice", 1 << 20).encode()),
                                  "services": [port, port]}))
        assert await closed_with(ws) == (4000, f"hello lists the service {port} twice: list each service once")
        assert not server.listeners
        await server.stop()

    run(scenario())
