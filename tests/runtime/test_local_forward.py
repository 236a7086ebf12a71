"""Local forwarding (--local) across a reconnect: in-process servers and clients on loopback, with real TLS."""

from __future__ import annotations

import asyncio

from helpers.tunnel import TlsFiles, control_url, echo_server, free_port, port_of, run, start_client, start_server, stop
from inlets_py.runtime.client import local_forward
from inlets_py.runtime.client.local_forward import LocalForward, LocalForwarder
from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.core.allowlist import parse_target_rules
from inlets_py.runtime.server.forwarding import ForwardingPolicy


async def _until(condition, timeout: float = 5.0) -> bool:
    """Poll ``condition`` every 20 ms for at most ``timeout`` seconds; whether it came true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_a_user_waiting_for_the_tunnel_has_the_client_connect_now(tls: TlsFiles, token: str, monkeypatch) -> None:
    """The server back while the client sat in its backoff (up to 30 s): a --local user who came then waited out
    its 10 s and was reset (event=forward_unavailable reason=tunnel_down), the client connecting only later. A
    waiting user now has the client connect at once. Here the backoff is 10-20 s, the wait 3 s."""
    monkeypatch.setattr(local_forward, "TUNNEL_WAIT", 3.0)

    async def scenario() -> None:
        echo = await echo_server()
        forward = LocalForward(free_port(), "127.0.0.1", port_of(echo))
        policy = ForwardingPolicy(True, parse_target_rules(f"127.0.0.1:{port_of(echo)}"))
        server = await start_server(tls, token, forwarding=policy)
        control = server.control.addresses[0][1]
        client, task = await start_client(control_url(server), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          extra={"forwards": [forward.target]}, backoff_initial=20.0, backoff_max=20.0)
        forwarder = LocalForwarder([forward], "127.0.0.1", lambda: client.session, wake=client.reconnect_now)
        await forwarder.start()
        try:
            await server.stop()
            assert await _until(lambda: not client.connected.is_set())
            server = await start_server(tls, token, port=control, forwarding=policy)  # back; the client waits 10-20 s
            reader, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)
            writer.write(b"after the outage")
            assert await asyncio.wait_for(reader.readexactly(16), 10) == b"after the outage"  # before: reset at 3 s
            writer.close()
        finally:
            forwarder.stop()
            await stop(task)
            await server.stop()
            echo.close()

    run(scenario(), 40)
