"""Series of ports no client serves any more: kept for a grace (a client restarting continues its counters), then
dropped, as the HTTP server drops a host's; a client churning through ports left every port's series for ever."""

from __future__ import annotations

import asyncio
import socket

import pytest

from helpers.tunnel import echo_server, free_port, port_of, run, start_client, start_server, stop
from inlets_py.runtime.client.tcp_upstreams import Upstream
from test_metrics import samples, scrape


def _ports(text: str) -> set[str]:
    return {dict(labels)["port"] for (name, labels) in samples(text) if name.startswith(("tcp_data", "udp_data"))}


async def _until_no_clients(server) -> None:
    for _ in range(100):  # bounded: 100 x 50 ms
        if not server.control.clients:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the client is still connected")


def test_the_series_of_a_port_no_client_serves_go_after_the_grace(tls, token):
    async def scenario() -> None:
        echo = await echo_server()
        server = await start_server(tls, token)
        url = f"wss://127.0.0.1:{server.control.addresses[0][1]}"
        control = server.control.addresses[0]
        first, second = free_port(), free_port()
        try:
            for public, grace, left in ((first, 60.0, {first}), (second, 0.0, set())):
                server.metrics.grace = grace
                _, task = await start_client(url, token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
                reader, writer = await asyncio.open_connection("127.0.0.1", public)
                writer.write(b"x" * 100)
                assert await reader.readexactly(100) == b"x" * 100
                writer.close()
                await writer.wait_closed()
                for _ in range(100):  # bounded: the server sees the user's close on its own time
                    if not server.metrics.ports[public].open:
                        break
                    await asyncio.sleep(0.05)
                await stop(task)
                await _until_no_clients(server)
                # within the grace (60 s) the first port's series stay; past it (0 s) both ports' go
                assert _ports((await asyncio.to_thread(scrape, control, tls, token))[1]) == {str(p) for p in left}
        finally:
            await server.stop()
            echo.close()

    run(scenario(), 30)


def test_a_port_in_its_grace_that_a_refused_client_asked_for_still_goes_after_it(tls, token):
    """Found by a review helper: a client that asked for a port in its grace and was refused (another of its ports in
    use) took the port out of the grace (the listener opened for it, then closed), and its series stayed for ever."""
    async def scenario() -> None:
        echo = await echo_server()
        server = await start_server(tls, token)
        url = f"wss://127.0.0.1:{server.control.addresses[0][1]}"
        control = server.control.addresses[0]
        busy = socket.socket()
        served, later = free_port(), free_port()
        try:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            server.metrics.grace = 60.0
            _, task = await start_client(url, token, tls, {served: Upstream("127.0.0.1", port_of(echo))})
            await stop(task)
            await _until_no_clients(server)
            _, refused = await start_client(url, token, tls, {served: Upstream("127.0.0.1", port_of(echo)),
                                                              busy.getsockname()[1]: Upstream("127.0.0.1", 1)},
                                            wait=False)
            with pytest.raises(Exception, match="port in use"):
                await asyncio.wait_for(refused, 10)
            assert _ports((await asyncio.to_thread(scrape, control, tls, token))[1]) == {str(served)}  # in its grace
            server.metrics.grace = 0.0  # past it: the next port to close drops both
            _, task = await start_client(url, token, tls, {later: Upstream("127.0.0.1", port_of(echo))})
            await stop(task)
            await _until_no_clients(server)
            assert _ports((await asyncio.to_thread(scrape, control, tls, token))[1]) == set()
        finally:
            busy.close()
            await server.stop()
            echo.close()

    run(scenario(), 30)
