"""Every tunnelled TCP socket: TCP_NODELAY (set by the event loop itself) and TCP_NOTSENT_LOWAT (bridge.tune_socket,
on each dialled socket and once on each listener, whose accepted sockets inherit it).

``tune_socket`` relies on asyncio and uvloop setting TCP_NODELAY on every TCP transport they
make, accepted or dialled, plain or TLS: this checks that on both loops, on real sockets.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from helpers.tunnel import make_tls
from inlets_py.runtime.core.bridge import _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT, tune_socket
from inlets_py.runtime.core.listen import listen
from inlets_py.runtime.core.tls import client_context, server_context


class Probe(asyncio.Protocol):
    """Tunes its socket as ``TcpBridge`` does, then reads back both options."""

    def __init__(self, seen: list[tuple[int, int]]) -> None:
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        tune_socket(sock)
        self.seen.append((sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                          sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT)))


async def _both_ends(tls: tuple[ssl.SSLContext, ssl.SSLContext] | None) -> list[tuple[int, int]]:
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, int]] = []
    server = await loop.create_server(lambda: Probe(seen), "127.0.0.1", 0, ssl=tls[0] if tls else None)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(lambda: Probe(seen), "127.0.0.1", port,
                                                ssl=tls[1] if tls else None,
                                                server_hostname="127.0.0.1" if tls else None)
    for _ in range(200):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    transport.close()
    server.close()
    await server.wait_closed()
    return seen


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("with_tls", [False, True], ids=["plain", "tls"])
def test_accepted_and_dialled_sockets_have_nodelay_and_notsent_lowat(loop_name: str, with_tls: bool,
                                                                     tmp_path: Path) -> None:
    tls = None
    if with_tls:
        files = make_tls(tmp_path, ["127.0.0.1"])
        tls = (server_context(files.cert, files.key), client_context(files.ca))
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        seen = uvloop.run(_both_ends(tls))
    else:
        seen = asyncio.run(_both_ends(tls))
    assert seen == [(1, NOTSENT_LOWAT), (1, NOTSENT_LOWAT)]


class Reader(asyncio.Protocol):
    """Reads both options back and tunes nothing: what ``listen`` gives every connection it accepts."""

    def __init__(self, seen: list[tuple[int, int]]) -> None:
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        self.seen.append((sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                          sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT)))


async def _accepted_through_listen(connections: int) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    server = await listen(lambda: Reader(seen), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # several at once, so that some come through the listener's drain (``listen._Drain``), not the loop's accept
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    for _ in range(200):
        if len(seen) == connections:
            break
        await asyncio.sleep(0.01)
    for sock in socks:
        sock.close()
    server.close()
    await server.wait_closed()
    return seen


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_sockets_accepted_through_listen_inherit_notsent_lowat_from_the_listener(loop_name: str) -> None:
    """The data ports, the HTTP front and --local ports tune their listener once, not each connection."""
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        seen = uvloop.run(_accepted_through_listen(8))
    else:
        seen = asyncio.run(_accepted_through_listen(8))
    assert seen == [(1, NOTSENT_LOWAT)] * 8
