"""How a client's tunnel session is replaced: rotation (SIGHUP), the server's GOAWAY, stream ids running out,
and a peer that stops answering (keepalive). In-process servers and clients on loopback, with real TLS."""

from __future__ import annotations

import asyncio

from helpers.tunnel import TlsFiles, control_url, free_port, run, start_client, start_server, stop
from inlets_py.runtime.client.tcp_upstreams import Upstream


async def _until(condition, timeout: float = 5.0) -> bool:
    """Poll ``condition`` every 20 ms for at most ``timeout`` seconds; whether it came true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_two_rotations_at_once_leave_no_orphan_session(tls: TlsFiles, token: str) -> None:
    """Two SIGHUPs close together: both rotations read the same old session, so the first one's new session was
    never drained: the server held 2 sessions for the client, and one outlived the client's graceful shutdown."""

    async def scenario() -> None:
        server = await start_server(tls, token)
        client, task = await start_client(control_url(server), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          drain_timeout=2.0)
        try:
            await asyncio.gather(client.rotate(), client.rotate())
            assert await _until(lambda: len(server.control.clients) == 1), len(server.control.clients)
            await asyncio.sleep(0.3)  # nothing else closes later: the count stays
            assert len(server.control.clients) == 1 and client.session is not None
            await client.shutdown()
            assert await _until(lambda: not server.control.clients), len(server.control.clients)
        finally:
            await stop(task)
            await server.stop()

    run(scenario(), 30)
