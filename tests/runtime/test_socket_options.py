"""Every tunnelled TCP socket: TCP_NODELAY (set by the event loop itself) and TCP_NOTSENT_LOWAT (bridge.tune_socket,
on each dialled socket and once on each listener, whose accepted sockets inherit it). The blocking probe's socket
(`inlets status`, inletsctl's waits) has TCP_NODELAY too, set by ``probe.nodelay``.

``tune_socket`` relies on asyncio and uvloop setting TCP_NODELAY on every TCP transport they
make, accepted or dialled, plain or TLS: this checks that on both loops, on real sockets.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from helpers.tunnel import make_tls
from inlets_py.runtime.core import bridge
from inlets_py.runtime.core.bridge import _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT, TcpBridge, tune_socket
from inlets_py.runtime.core.listen import listen
from inlets_py.runtime.core.probe import Endpoint, get
from inlets_py.runtime.core.tls import client_context, server_context


def options(transport: asyncio.BaseTransport) -> tuple[int, int]:
    sock = transport.get_extra_info("socket")
    return (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT))


class Probe(asyncio.Protocol):
    """Tunes its socket as ``TcpBridge`` does (unless ``tune`` is off: what ``listen`` accepts is already
    tuned), then reads back both options."""

    def __init__(self, seen: list[tuple[int, int]], tune: bool = True) -> None:
        self.seen = seen
        self.tune = tune

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.tune:
            tune_socket(transport.get_extra_info("socket"))
        self.seen.append(options(transport))


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


async def _accepted(connections: int, make_server) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    server = await make_server(seen)
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
        seen = uvloop.run(_accepted(8, _through_listen))
    else:
        seen = asyncio.run(_accepted(8, _through_listen))
    assert seen == [(1, NOTSENT_LOWAT)] * 8


async def _through_listen(seen: list[tuple[int, int]]) -> asyncio.Server:
    return await listen(lambda: Probe(seen, tune=False), "127.0.0.1", 0)


class AcceptedBridge(TcpBridge):
    """A bridge on an accepted socket, as the data ports' and --local ports' are, that reads its options back."""

    accepted = True

    def __init__(self, seen: list[tuple[int, int]]) -> None:
        super().__init__()
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.seen.append(options(transport))

    def eof_received(self) -> bool:
        """No stream to pass the end on to: the connection closes (``Server.wait_closed`` waits for every
        accepted connection since Python 3.12.1, and a bridge's half-open one held this test until its timeout)."""
        return False


@pytest.mark.parametrize("inherits", [True, False], ids=["linux", "elsewhere"])
def test_an_accepted_bridge_tunes_its_own_socket_only_where_the_listener_cannot(
        inherits: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off Linux (``LISTENER_TUNES_ACCEPTED`` false) the bridge sets the option itself; on Linux it leaves it to
    ``listen``. Here the listener is asyncio's own, untuned, so only the bridge can have set it."""
    monkeypatch.setattr(bridge, "LISTENER_TUNES_ACCEPTED", inherits)

    async def plain_server(seen: list[tuple[int, int]]) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(lambda: AcceptedBridge(seen), "127.0.0.1", 0)

    seen = asyncio.run(_accepted(2, plain_server))
    assert seen == [(1, 0 if inherits else NOTSENT_LOWAT)] * 2


def _own_end_nodelay(peer: tuple) -> int | None:
    """TCP_NODELAY of this process's socket whose local address is ``peer`` (read on a duplicate of its
    descriptor, found in /proc/self/fd), or None when no such socket is open."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:
                if sock.type == socket.SOCK_STREAM and sock.getsockname() == peer:
                    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        except OSError:
            continue  # closed meanwhile, or not an internet socket
    return None


def test_the_blocking_probe_dials_with_nodelay() -> None:
    """`inlets status` and inletsctl's waits (and its wheel push) dial with the socket module, not the loop: their
    socket had no TCP_NODELAY. Read here on the probe's own socket while the server holds the request."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    seen: list[int | None] = []

    def serve() -> None:
        with listener:
            conn, peer = listener.accept()
            with conn:
                conn.settimeout(10)
                conn.recv(4096)
                seen.append(_own_end_nodelay(peer))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    answer = get(Endpoint("127.0.0.1", listener.getsockname()[1], False, ""), "/healthz", timeout=5)
    thread.join(10)
    assert answer.status == 200 and seen == [1]
