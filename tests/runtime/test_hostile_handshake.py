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


_NOT_READING = '''
import asyncio, json, socket, ssl, sys
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

async def main():
    port, data_port, ca, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sock = socket.create_connection(("127.0.0.1", port))
    ws = await connect(f"wss://127.0.0.1:{port}/connect", sock=sock, ssl=ssl.create_default_context(cafile=ca),
                       server_hostname="127.0.0.1", compression=None, ping_interval=None,
                       additional_headers={"Authorization": f"Bearer {token}"})
    ws.transport.pause_reading()  # from here on it reads nothing: the pongs to its pings fill the server's buffer
    for _ in range(int(sys.argv[5])):
        ws.protocol.send_frame(Frame(Opcode.PING, b"p" * 125))
    ws.protocol.send_text(json.dumps({"type": "hello", "protocol": 1, "version": "x", "mode": "tcp",
                                      "client_id": "limbo", "services": [f"tcp:{data_port}"], "window": 1 << 20}).encode())
    for data in ws.protocol.data_to_send():
        ws.transport.write(data)
    await asyncio.sleep(40)

asyncio.run(main())
'''

_USER = '''
import socket, sys, time
started = time.monotonic()
user = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
user.sendall(b"hello?")
user.settimeout(25)
try:
    print("read", user.recv(100), round(time.monotonic() - started, 1))
except OSError as exc:
    print("error", type(exc).__name__, round(time.monotonic() - started, 1))
'''


def test_a_client_that_takes_no_welcome_is_dropped_and_its_users_reset(tls: TlsFiles, token: str, token_file, tmp_path) -> None:
    """A client with a valid token that stopped reading (its pings' pongs filling the server's 512 KiB write limit)
    sent its hello: admitted, its port open, the server's welcome then waited without end. Meanwhile it was no
    client: not listed, not revoked by a token reload (it became a full client on a revoked token afterwards), no
    keepalive; the users routed to it hung, and their sockets stayed in CLOSE-WAIT after it went. Now the welcome has
    WELCOME_TIMEOUT (10 s), and then its users are reset and its port closed. In a network namespace of the test's own
    with 4 KiB TCP buffers, so that 6,000 pongs (762 KB) pass the write limit, not the kernel's 4 MiB buffers."""
    import subprocess
    import sys

    from helpers.netns import namespace
    from helpers.process import INLETS

    control, data = free_port(), free_port()
    (tmp_path / "not_reading.py").write_text(_NOT_READING)
    (tmp_path / "user.py").write_text(_USER)
    log = tmp_path / "server.log"
    with namespace("welc") as ns:
        inside = ["ip", "netns", "exec", ns]
        tuned = subprocess.run([*inside, "sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 4096 4096",
                                "net.ipv4.tcp_rmem=4096 4096 4096"], capture_output=True, text=True, timeout=10)
        if tuned.returncode != 0:
            pytest.skip(f"cannot size the namespace's TCP buffers: {tuned.stderr.strip()}")
        with log.open("wb") as out:
            server = subprocess.Popen([*inside, *INLETS, "tcp", "server", "--tls-cert", str(tls.cert), "--tls-key",
                                       str(tls.key), "--token-file", str(token_file), "--control-addr", "127.0.0.1",
                                       "--control-port", str(control), "--data-addr", "127.0.0.1"],
                                      stdout=out, stderr=subprocess.STDOUT)
        hostile = None
        try:
            deadline = time.monotonic() + 20
            while "event=started" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            hostile = subprocess.Popen([*inside, sys.executable, str(tmp_path / "not_reading.py"), str(control), str(data),
                                        str(tls.ca), token, "6000"], stderr=subprocess.DEVNULL)
            while f"event=listening service=tcp:{data}" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert f"event=listening service=tcp:{data}" in log.read_text(), log.read_text()
            user = subprocess.run([*inside, sys.executable, str(tmp_path / "user.py"), str(data)],
                                  capture_output=True, text=True, timeout=40)
            said = user.stdout.split()
            assert said[:1] == ["error"] or said[:2] == ["read", "b''"], user.stdout + user.stderr  # not "hanging"
            assert float(said[-1]) < 15, said
            text = log.read_text()
            assert "the client took no welcome within 10s" in text and "event=client_connected" not in text, text
            assert f"event=closed service=tcp:{data}" in text, text
        finally:
            for proc in (hostile, server):
                if proc is not None:
                    proc.kill()
                    proc.wait(timeout=10)


def test_users_of_a_session_closed_for_a_protocol_error_are_reset_at_once(tls: TlsFiles, token: str) -> None:
    """Nothing the peer sends is read after its protocol error: its users were held until the close timeout (5 s)
    when the peer did not answer the close, with nothing more to come."""

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        public = free_port()
        assert (await hello(ws, [f"tcp:{public}"]))["type"] == "welcome"
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"x")
        opened = await asyncio.wait_for(ws.recv(), 5)  # the stream's OPEN (and its first byte)
        assert isinstance(opened, bytes)
        ws.transport.pause_reading()  # a peer that never answers the close
        await ws.send(HEADER.pack(99, 2, 0))  # an unknown frame type
        started = time.monotonic()
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 2
        writer.close()
        ws.transport.abort()
        await server.stop()

    run(scenario())
