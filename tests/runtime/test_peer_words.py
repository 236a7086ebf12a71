"""What a peer writes (words quoted in a refusal, its client id) reaches the log escaped: it can neither forge
a line nor add a field."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from helpers.logfmt import parse as logfmt_parse
from helpers.tunnel import TlsFiles, control_url, free_port, run, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from inlets_py.runtime.core.handshake import PROTOCOL_VERSION
from inlets_py.runtime.core.tls import client_context

HELLO = {"type": "hello", "protocol": PROTOCOL_VERSION, "mode": "tcp", "client_id": "dup", "window": 1 << 20}


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
