"""Hostile clients at the handshake: malformed, nested, forged or early messages are refused in words and close
that client only; the server keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers.tunnel import TlsFiles, free_port, run, start_server
from helpers.hostile import hello, raw_client, still_serving
from websockets.exceptions import ConnectionClosed

from inlets_py.runtime.server import control as control_plane
from inlets_py.runtime.core.allowlist import parse_target_rules
from inlets_py.runtime.server.forwarding import ForwardingPolicy
from inlets_py.runtime.core.handshake import PROTOCOL_VERSION, Hello, HandshakeError, parse_hello, parse_welcome
from inlets_py.runtime.core.mux import HEADER, FrameType


@pytest.mark.parametrize(
    "message, code",
    [
        (b"\x00" * (3 * 1024 * 1024), 1009),  # larger than any frame may be
        ("text after the handshake", 1002),
        (HEADER.pack(99, 2, 0), 1002),  # unknown frame type
        (HEADER.pack(FrameType.DATA, 7, 4) + b"ab", 1002),  # truncated
        (HEADER.pack(FrameType.DATA, 1, 1) + b"x", 1002),  # data for a stream never opened
    ],
)
def test_bad_messages_close_that_client_only(tls: TlsFiles, token: str, message, code: int, caplog) -> None:
    """... and the server's log line says how it closed (the library's own log is silenced)."""
    caplog.set_level(logging.INFO, logger="inlets.server")

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        assert (await hello(ws, [f"tcp:{free_port()}"]))["type"] == "welcome"
        try:
            await ws.send(message)
        except ConnectionClosed:
            pass
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
        await asyncio.sleep(0.1)
        assert not server.control.clients and not server.listeners  # its ports are closed again
        gone = [r.getMessage() for r in caplog.records if "event=client_disconnected client=hostile" in r.getMessage()]
        assert len(gone) == 1 and f'close="{code} ' in gone[0], gone
        await still_serving(server, tls, token)
        await server.stop()

    run(scenario())


def test_a_message_sent_before_the_welcome_is_handled_once_the_session_starts(tls: TlsFiles, token: str) -> None:
    """Frames that arrive before the session attaches wait (reading paused), then count like any other:
    here DATA for a stream never opened, which closes the connection with 1002 and says why."""

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        await ws.send(Hello("tcp", [f"tcp:{free_port()}"], "hostile", 1 << 20).encode())
        await ws.send(HEADER.pack(FrameType.DATA, 1, 1) + b"x")  # before the welcome has come back
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
        assert "unknown stream 1" in closed.value.rcvd.reason
        await server.stop()

    run(scenario())


def test_handshake_refusals_say_why(tls: TlsFiles, token: str) -> None:
    async def refused(ws_message) -> str:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        await ws.send(ws_message)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        await server.stop()
        return f"{closed.value.rcvd.code} {closed.value.rcvd.reason}"

    async def scenario() -> None:
        future = json.dumps({"type": "hello", "protocol": 99, "version": "9.0", "mode": "tcp", "services": [],
                             "window": 1 << 20})
        assert (await refused(future)).startswith("4001 peer speaks tunnel protocol 99")
        assert (await refused("not json")).startswith("4000 hello is not JSON")
        http = Hello("http", ["http:example.com"], "x", 1 << 20).encode()
        assert (await refused(http)).startswith("4002 this server serves tcp tunnels")
        assert (await refused(Hello("tcp", ["tcp:99999"], "x", 1 << 20).encode())).startswith("4003 not a TCP or UDP service")
        started = time.monotonic()  # a binary first message: refused at once, not held for the 10 s hello timeout
        assert await refused(b"\x00binary") == "4000 expected a text hello message, got a binary one"
        assert time.monotonic() - started < 3

    run(scenario())


def test_a_client_that_never_says_hello_is_dropped(tls: TlsFiles, token: str, monkeypatch) -> None:
    monkeypatch.setattr(control_plane, "HELLO_TIMEOUT", 0.5)

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        await server.stop()

    run(scenario())


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    st.dictionaries(st.sampled_from(["type", "protocol", "mode", "services", "window", "client_id", "extra"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=10)),
                              st.dictionaries(st.text(max_size=5), st.integers())),
                    max_size=7).map(json.dumps),
))
def test_hello_parser_only_ever_refuses_cleanly(text: str) -> None:
    try:
        hello_msg = parse_hello(text)
    except HandshakeError as exc:
        assert 4000 <= exc.code < 4100 and str(exc)
    else:
        assert isinstance(hello_msg.services, list) and hello_msg.window >= 16 * 1024


def test_a_client_id_that_could_forge_log_lines_is_refused(tls: TlsFiles, token: str) -> None:
    """A client holding the token sent client_id "x\\n<fake log line>": the server logged it as is."""

    async def scenario() -> None:
        for client_id in ("x\n2026-01-01T00:00:00 level=INFO event=forged", "a remote=10.0.0.1", "tab\there"):
            server = await start_server(tls, token)
            ws = await raw_client(server, tls, token)
            await ws.send(Hello("tcp", [f"tcp:{free_port()}"], client_id, 1 << 20).encode())
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            await server.stop()
            assert closed.value.rcvd.code == 4000 and "visible ASCII" in closed.value.rcvd.reason

    run(scenario())


@pytest.mark.parametrize("service", ["http:name\n", "http:a.example\n"])
def test_an_http_service_name_with_a_trailing_newline_is_refused(service: str) -> None:
    """The host pattern ended in ``$``, which also matches before a final newline: 'name\n' was a service."""
    from inlets_py.runtime.core.services import parse_http_service

    assert parse_http_service(service.rstrip("\n")) == service[5:].rstrip("\n")
    with pytest.raises(HandshakeError, match="not an HTTP service"):
        parse_http_service(service)


@pytest.mark.parametrize("services", [[1, 2], [""], "8080", [["8080"]], None])
def test_a_welcome_whose_services_are_not_names_is_refused_in_one_line(services: object) -> None:
    """A broken or hostile server's welcome: the client logs the names it was granted, so anything but a
    list of names is a handshake error (one line), not a traceback from joining them."""
    welcome = {"type": "welcome", "protocol": PROTOCOL_VERSION, "window": 2**20, "max_frame": 2**16}
    assert parse_welcome(json.dumps({**welcome, "services": ["8080", "app.example"]})).services == ["8080", "app.example"]
    with pytest.raises(HandshakeError, match="malformed welcome"):
        parse_welcome(json.dumps({**welcome, "services": services}))


@pytest.mark.parametrize("nested", ["[" * 30000, '{"a":' * 13000, '{"type": "hello", "extra": ' + "[" * 20000 + "]" * 20000 + "}"])
def test_a_handshake_nested_too_deeply_is_refused_cleanly(nested: str) -> None:
    """JSON nested deeper than the parser's stack raised RecursionError, which escaped ``HandshakeError``: the
    server's handler failed with a traceback (close 1011), the client crashed on such a welcome."""
    for parse in (parse_hello, parse_welcome):
        with pytest.raises(HandshakeError, match="nested too deeply") as refused:
            parse(nested)
        assert refused.value.code == 4000


def test_a_hello_nested_too_deeply_is_refused_in_words(tls: TlsFiles, token: str, caplog) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        await ws.send('{"type": "hello", "x": ' + "[" * 30000 + "]" * 30000 + "}")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 4000 and "nested too deeply" in closed.value.rcvd.reason
        await still_serving(server, tls, token)
        await server.stop()

    run(scenario())
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_text_messages_sent_before_the_session_starts_close_it_and_are_not_held(tls: TlsFiles, token: str,
                                                                                caplog) -> None:
    """Text sent right after the hello reached the library's queue, which nobody reads once the session runs:
    up to 64 frames of max_size were held with reading paused, the client neither served nor closed."""
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        ws.protocol.send_text(Hello("tcp", [f"tcp:{free_port()}"], "hostile", 1 << 20).encode().encode())
        for _ in range(200):  # in one write: most arrive before the session attaches
            ws.protocol.send_text(b"y" * 60_000)
        ws.transport.write(b"".join(ws.protocol.data_to_send()))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 3)  # within the close timeout (5 s): the close was read
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
        assert "text or fragmented" in closed.value.rcvd.reason
        await asyncio.sleep(0.1)
        assert not server.control.clients
        await still_serving(server, tls, token)
        await server.stop()

    run(scenario())
    assert any("event=protocol_error session=hostile" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("field", [{"services": ["\ud800"]}, {"extra": {"forwards": ["forward:\udfff:22"]}},
                                   {"extra": {"http": {"request_add": [["X-A", "\ud800"]]}}}, {"\ud83d": 1}])
def test_a_handshake_holding_lone_surrogates_is_refused_cleanly(field: dict) -> None:
    """JSON's "\\ud800" escapes decode to lone surrogates: a refusal that quoted one (a forward target) failed to
    encode as the close reason, HTTP options failed to encode as a header; tracebacks, close 1011, no log line."""
    hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "mode": "tcp", "services": ["tcp:1"], "window": 2**20}
    welcome = {"type": "welcome", "protocol": PROTOCOL_VERSION, "services": ["1"], "window": 2**20, "max_frame": 2**16}
    for parse, message in ((parse_hello, hello), (parse_welcome, welcome)):
        with pytest.raises(HandshakeError, match="lone surrogate") as refused:
            parse(json.dumps({**message, **field}))
        assert refused.value.code == 4000
    assert parse_hello(json.dumps({**hello, "client_id": "ok", "extra": {"note": "\ud83d\ude00"}})).extra  # a pair is fine


def test_a_forward_target_holding_a_lone_surrogate_is_refused_in_words(tls: TlsFiles, token: str, caplog) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        server = await start_server(tls, token, forwarding=ForwardingPolicy(True, parse_target_rules("127.0.0.1:22")))
        ws = await raw_client(server, tls, token)
        await ws.send(Hello("tcp", [], "hostile", 1 << 20, extra={"forwards": ["forward:\ud800:22"]}).encode())
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 4000 and "lone surrogate" in closed.value.rcvd.reason
        await server.stop()

    run(scenario())
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.parametrize("protocol", [True, float(PROTOCOL_VERSION), str(PROTOCOL_VERSION)])
def test_a_protocol_version_of_another_type_is_refused(protocol: object) -> None:
    """``true`` and ``1.0`` compare equal to 1: a hello or welcome naming the protocol by them was taken."""
    hello = {"type": "hello", "protocol": protocol, "mode": "tcp", "services": ["tcp:1"], "window": 2**20}
    welcome = {"type": "welcome", "protocol": protocol, "services": ["1"], "window": 2**20, "max_frame": 2**16}
    for parse, message in ((parse_hello, hello), (parse_welcome, welcome)):
        with pytest.raises(HandshakeError) as refused:
            parse(json.dumps(message))
        assert refused.value.code == 4001
