"""Crafted websocket frames from an authenticated client: the server closes it with a close code and a reason
that name the fault, and a client that never reads is dropped within the keepalive whatever it floods.
A real server on loopback, with real TLS."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time

import pytest
from helpers.tunnel import TlsFiles, free_port, run, start_server, wait_listening
from helpers.hostile import hello, one_session, raw_client, still_serving
from websockets.exceptions import ConnectionClosed
from websockets.frames import apply_mask

from inlets_py.runtime.core.mux import HEADER, FrameType


async def stream_carrying(ws, data: bytes) -> int:
    """The stream on which the server sends ``data`` (wait_listening's probe opened one before)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), 5)
        at = 0
        while at < len(message):
            ftype, stream_id, length = HEADER.unpack_from(message, at)
            at += HEADER.size + length
            if ftype == FrameType.DATA and message[at - length : at] == data:
                return stream_id


@pytest.mark.parametrize("flood", [
    lambda stream: HEADER.pack(FrameType.WINDOW, stream, 4) + struct.pack("!I", 1),  # credit of 1 byte
    lambda stream: HEADER.pack(FrameType.DATA, stream, 0),  # an empty DATA frame: costs no credit
], ids=["window-1", "empty-data"])
def test_a_client_that_never_reads_is_dropped_whatever_it_floods(tls: TlsFiles, token: str, flood) -> None:
    """Either frame made an event, and any event counted as a sign of life: a client that never read a byte was
    served as long as it sent them (45 s of 1-byte WINDOWs with --keepalive 20, 518 MB read)."""
    async def scenario() -> None:
        server = await start_server(tls, token, keepalive=2.0)
        ws = await raw_client(server, tls, token)
        public = free_port()
        assert (await hello(ws, [f"tcp:{public}"]))["type"] == "welcome"
        await wait_listening("127.0.0.1", public)
        _, user = await asyncio.open_connection("127.0.0.1", public)
        user.write(b"a user's request")  # the server opens a stream to the client, and sends this on it
        stream = await stream_carrying(ws, b"a user's request")
        ws.transport.pause_reading()  # from here on, the client reads nothing
        session = await one_session(server)
        message = flood(stream) * 1000
        started = time.monotonic()
        while time.monotonic() - started < 12 and not session.closed.is_set():
            ws.protocol.send_binary(message)
            ws.send_data()
            await asyncio.sleep(0.01)
        alive_for = time.monotonic() - started
        assert session.closed.is_set(), f"still served after {alive_for:.1f} s (keepalive 2 s)"
        ws.transport.abort()
        user.close()
        await still_serving(server, tls, token)
        await server.stop()

    run(scenario())


def test_a_reserved_opcode_is_named_as_one(tls: TlsFiles, token: str, caplog) -> None:
    """Opcodes 3-7 were taken for a text or fragmented message, and the close and the log said so."""
    caplog.set_level(logging.INFO, logger="inlets.server")

    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await raw_client(server, tls, token)
        assert (await hello(ws, [f"tcp:{free_port()}"]))["type"] == "welcome"
        mask = os.urandom(4)
        ws.transport.write(bytes([0x83, 0x80 | 1]) + mask + apply_mask(b"x", mask))  # FIN, opcode 3, masked
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1002, "invalid opcode")
        await asyncio.sleep(0.1)
        gone = [r.getMessage() for r in caplog.records if "event=client_disconnected client=hostile" in r.getMessage()]
        assert len(gone) == 1 and 'close="1002 invalid opcode"' in gone[0], gone
        await server.stop()

    run(scenario())
