"""What a peer writes (a handshake's keys, a close reason, words quoted in a refusal) is read one way only, and
reaches the terminal and the log escaped: it can neither forge a line nor add a field."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import AsyncIterator

import pytest
from helpers.logfmt import parse as logfmt_parse
from helpers.tunnel import TlsFiles, control_url, free_port, run, start_client, start_server, stop
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from inlets_py.runtime.client.dialer import FatalClientError
from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.core.handshake import PROTOCOL_VERSION, HandshakeError, parse_hello, parse_welcome
from inlets_py.runtime.core.tls import client_context, server_context

#: A close reason as a hostile server may write it (123 bytes): a forged log line, a screen-clearing escape, a
#: right-to-left override.
NASTY = "no\n2026-01-01T00:00:00.000Z level=INFO event=forged admin=true\x1b[2J\x07\u202e" + "A" * 50
HELLO = {"type": "hello", "protocol": PROTOCOL_VERSION, "mode": "tcp", "client_id": "dup", "window": 1 << 20}


def _repeat(document: dict, key: str, first: object) -> str:
    """``document`` as JSON with ``key`` written twice: ``first``, then the document's own value."""
    assert key in document
    return "{" + f"{json.dumps(key)}: {json.dumps(first)}, " + json.dumps(document)[1:]


def _refusal(ws_message: str, tls: TlsFiles, token: str) -> ConnectionClosed:
    async def scenario() -> ConnectionClosed:
        server = await start_server(tls, token)
        try:
            ws = await connect(control_url(server) + "/connect", ssl=client_context(tls.ca), ping_interval=None,
                               additional_headers={"Authorization": f"Bearer {token}"})
            await ws.send(ws_message)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert not server.listeners, "the hello was served"
            return closed.value
        finally:
            await server.stop()

    return run(scenario())  # type: ignore[return-value]


@pytest.mark.parametrize("key, first", [("services", ["tcp:1"]), ("mode", "http"), ("type", "welcome")])
def test_a_hello_naming_a_key_twice_is_refused_in_words(tls: TlsFiles, token: str, key: str, first: object) -> None:
    """``json.loads`` kept the last of a repeated key: a hello listing ``services`` twice was served the second
    list, which another reader (one that keeps the first) would not have checked or logged."""
    message = _repeat({**HELLO, "services": [f"tcp:{free_port()}"]}, key, first)
    closed = _refusal(message, tls, token)
    assert closed.rcvd is not None and closed.rcvd.code == 4000, closed
    assert closed.rcvd.reason == f'hello names "{key}" twice in one object: send each key once'


def test_a_key_twice_anywhere_in_a_handshake_is_refused() -> None:
    welcome = {"type": "welcome", "protocol": PROTOCOL_VERSION, "services": ["1"], "window": 2**20, "max_frame": 2**16}
    for parse, document in ((parse_hello, {**HELLO, "services": ["tcp:1"]}), (parse_welcome, welcome)):
        parse(json.dumps(document))  # once each is fine
        nested = json.dumps({**document, "extra": {"http": {}}}).replace('"http": {}', '"http": {}, "http": {}')
        long_key = _repeat({**document, "x" * 50: 1}, "x" * 50, 2)  # named as "a key": too long to quote
        for message in (_repeat(document, "window", 2**20), nested, long_key):
            with pytest.raises(HandshakeError, match="twice in one object") as refused:
                parse(message)
            assert refused.value.code == 4000


@contextlib.asynccontextmanager
async def closing_server(tls: TlsFiles, code: int, reason: str) -> AsyncIterator[str]:
    """A server on loopback that reads the hello and closes with ``code`` and ``reason``; yields its URL."""
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(code, reason)

    server = await serve(handler, "127.0.0.1", 0, ssl=server_context(tls.cert, tls.key), ping_interval=None)
    try:
        yield f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _printable_ascii(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


def test_a_servers_refusal_reason_reaches_the_terminal_escaped(tls: TlsFiles, token: str) -> None:
    """The client ends on a refusal (4xxx) and prints the server's reason: it did so raw, a newline forging a line,
    an escape sequence clearing the operator's screen."""
    async def scenario() -> str:
        async with closing_server(tls, 4003, NASTY) as url:
            _, task = await start_client(url, token, tls, {free_port(): Upstream("127.0.0.1", 9)}, wait=False)
            with pytest.raises(FatalClientError) as refused:
                await asyncio.wait_for(task, 10)
        return str(refused.value)

    shown = run(scenario())
    assert _printable_ascii(shown) and len(shown) < 220, shown
    assert shown.startswith(r"the server refused this client: no\n2026-01-01T00:00:00.000Z level=INFO event=forged "
                            r"admin=true\x1b[2J\x07\u202eAAA"), shown


def test_a_servers_close_reason_stays_one_bounded_value_in_the_clients_log(tls: TlsFiles, token: str, caplog) -> None:
    """A close the client retries after (1011) is logged: the reason was written with Python's quotes, which a
    logfmt pipeline splits into fields the server chose (``event=forged admin=true``)."""
    caplog.set_level(logging.INFO, logger="inlets.client")

    async def scenario() -> None:
        async with closing_server(tls, 1011, NASTY) as url:
            _, task = await start_client(url, token, tls, {free_port(): Upstream("127.0.0.1", 9)}, wait=False)
            for _ in range(100):
                if any("event=connect_failed" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            await stop(task)

    run(scenario())
    line = next(r.getMessage() for r in caplog.records if "event=connect_failed" in r.getMessage())
    fields = logfmt_parse(line)
    assert [key for key, _ in fields] == ["event", "url", "error", "retry_in"], line
    error = dict(fields)["error"]
    assert error is not None and _printable_ascii(error) and len(error) < 2 * 200, error
    assert error.startswith(r"received 1011 (internal error) no\n2026-01-01T00:00:00.000Z"), error


def test_words_a_client_puts_in_its_log_lines_stay_inside_one_field(tls: TlsFiles, token: str, caplog) -> None:
    """A client holding the token named a service ``tcp:x' admin=true``: the refusal quoted it in ``reason=%r``,
    and a logfmt reader took ``admin=true`` as a field of the server's own line. A client id may hold ``"`` and
    ``=`` (visible ASCII): it was written bare, ``client=c="d`` read as anything but the id."""
    caplog.set_level(logging.INFO, logger="inlets.server")
    service = "tcp:x' admin=true \"level=ERROR"
    closed = _refusal(json.dumps({**HELLO, "services": [service]}), tls, token)
    assert closed.rcvd is not None and closed.rcvd.code == 4003

    async def connected() -> None:
        server = await start_server(tls, token)
        ws = await connect(control_url(server) + "/connect", ssl=client_context(tls.ca), ping_interval=None,
                           additional_headers={"Authorization": f"Bearer {token}"})
        await ws.send(json.dumps({**HELLO, "client_id": 'c="d=e\\', "services": [f"tcp:{free_port()}"]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        await ws.close()
        await server.stop()

    run(connected())
    refused = [r.getMessage() for r in caplog.records if "event=handshake_refused" in r.getMessage()]
    assert len(refused) == 1 and [key for key, _ in logfmt_parse(refused[0])] == ["event", "remote", "reason"]
    assert dict(logfmt_parse(refused[0]))["reason"] == f"not a TCP or UDP service: {service!r}", refused[0]
    for event in ("client_connected", "client_disconnected"):
        line = next(r.getMessage() for r in caplog.records if f"event={event}" in r.getMessage())
        fields = logfmt_parse(line)
        assert [key for key, _ in fields][:3] == ["event", "client", "remote"] and len(fields) == 4, line
        assert dict(fields)["client"] == 'c="d=e\\', line


def test_a_welcome_from_another_protocol_is_shown_escaped_and_bounded(tls: TlsFiles, token: str) -> None:
    """The refusal of a welcome quotes the server's version: it reached the terminal raw, whatever its length."""
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"type": "welcome", "protocol": 99, "version": NASTY * 100, "services": [],
                                  "window": 1 << 20, "max_frame": 1 << 16}))
        await asyncio.sleep(5)

    async def scenario() -> str:
        server = await serve(handler, "127.0.0.1", 0, ssl=server_context(tls.cert, tls.key), ping_interval=None)
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            _, task = await start_client(url, token, tls, {free_port(): Upstream("127.0.0.1", 9)}, wait=False)
            with pytest.raises(FatalClientError) as refused:
                await asyncio.wait_for(task, 10)
        finally:
            server.close()
        return str(refused.value)

    shown = run(scenario())
    assert _printable_ascii(shown) and len(shown) < 350, shown
    assert shown.startswith(r"bad handshake from server: peer speaks tunnel protocol 99 (version no\n2026-"), shown
