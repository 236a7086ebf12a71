"""A raw control-plane client for the hostile-peer tests: it logs in and then sends whatever the test sends;
and the check that an honest client still gets through after it."""

from __future__ import annotations

import asyncio
import json

from helpers.tunnel import TlsFiles, control_url, echo_server, free_port, port_of, start_client, stop, wait_listening
from websockets.asyncio.client import connect

from inlets_py.runtime.core.handshake import Hello
from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.core.tls import client_context


async def raw_client(server, tls: TlsFiles, token: str, *, source: str = "127.0.0.1"):
    """A websocket to the control plane that speaks whatever the test sends."""
    return await connect(
        control_url(server) + "/connect", ssl=client_context(tls.ca), compression=None, max_size=None,
        additional_headers={"Authorization": f"Bearer {token}"}, local_addr=(source, 0), ping_interval=None,
    )


async def hello(ws, services: list[str]) -> dict:
    await ws.send(Hello("tcp", services, "hostile", 1 << 20).encode())
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def still_serving(server, tls: TlsFiles, token: str) -> None:
    """An honest client still gets through after the hostile one."""
    echo = await echo_server()
    public = free_port()
    client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
    await wait_listening("127.0.0.1", public)
    reader, writer = await asyncio.open_connection("127.0.0.1", public)
    writer.write(b"fine")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"fine"
    writer.close()
    await stop(task)
    echo.close()


async def one_session(server):
    for _ in range(100):
        if server.control.clients:
            return next(iter(server.control.clients))
        await asyncio.sleep(0.02)
    raise AssertionError("no session")
