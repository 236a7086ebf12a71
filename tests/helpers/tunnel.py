"""Run real tunnel servers and clients in-process on loopback, and small TCP peers for them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websocket_serve

from inlets_py.runtime.core.auth import TokenSet
from inlets_py.runtime.core.certs import ensure_auto_tls
from inlets_py.runtime.client.dialer import ClientConfig, TunnelClient
from inlets_py.runtime.server.control import ControlConfig
from inlets_py.runtime.core.handshake import Hello, Welcome, parse_hello
from inlets_py.runtime.client.tcp_upstreams import TcpUpstreams, Upstream
from inlets_py.runtime.server.tcp import TcpTunnelServer
from inlets_py.runtime.core.tls import client_context, server_context


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, names: list[str] | None = None) -> TlsFiles:
    files = ensure_auto_tls(directory, names or ["127.0.0.1", "::1", "localhost"])
    return TlsFiles(files.ca_cert, files.cert, files.key)


def _own_port_range() -> range:
    """Ports below the kernel's ephemeral range, a slice per xdist worker.

    A port the kernel picked for bind(0) is ephemeral: any outgoing connect in
    another worker may take it before the test's server binds it (seen in CI:
    "cannot listen (control *:35889): Address already in use").
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 12000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    size = (low - 10000) // max(workers, 1)
    start = 10000 + index * size
    return range(start, start + size)


_OWN_PORTS = _own_port_range()
_next_port = random.randrange(len(_OWN_PORTS))


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on host, from this worker's slice, not handed out again soon."""
    global _next_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _attempt in range(len(_OWN_PORTS)):
        port = _OWN_PORTS[_next_port % len(_OWN_PORTS)]
        _next_port += 1
        with socket.socket(family) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_OWN_PORTS} on {host}")


def blackhole() -> tuple[int, list[socket.socket]]:
    """A loopback port that drops SYNs, as a dead host does: its accept queue (listen(0)) full, nothing accepted;
    close the sockets returned when done."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(0)
    kept = [listener]
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(listener.getsockname())
        kept.append(sock)
    return listener.getsockname()[1], kept



def udp_free_port() -> int:
    """A port free for UDP and for TCP too (dnsmasq and the UDP tunnel's tests bind both)."""
    for _attempt in range(50):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free for both TCP and UDP in 50 tries")

def run(coro: Awaitable, timeout: float = 60) -> object:
    """Run a scenario on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def start_server(
    tls: TlsFiles | None, token: str, *, host: str = "127.0.0.1", data_addr: str = "127.0.0.1", port: int = 0, **config
) -> TcpTunnelServer:
    ctx = server_context(tls.cert, tls.key) if tls else None
    server = TcpTunnelServer(
        ControlConfig(tokens=TokenSet([token]), host=host, port=port, ssl_context=ctx, **config), data_addr=data_addr
    )
    await server.start()
    return server


def control_url(server: TcpTunnelServer, tls: bool = True) -> str:
    host, port = server.control.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"{'wss' if tls else 'ws'}://{host}:{port}"


async def start_client(
    url: str, token: str, tls: TlsFiles | None, mapping: dict[int, Upstream], *, wait: bool = True, **config
) -> tuple[TunnelClient, asyncio.Task]:
    upstreams = TcpUpstreams(mapping)
    cfg = ClientConfig(
        url=url,
        token=token,
        mode="tcp",
        services=upstreams.services,
        ssl_context=client_context(tls.ca) if tls else None,
        **{"backoff_initial": 0.1, "backoff_max": 0.5, **config},
    )
    client = TunnelClient(cfg, upstreams.on_stream)
    task = asyncio.ensure_future(client.run_forever())
    if wait:
        await until_connected(client, task)
    return client, task


async def until_connected(client: TunnelClient, task: asyncio.Future) -> None:
    """Wait (10 s at most) for a client's first session; its own failure is raised as it is."""
    waiter = asyncio.ensure_future(client.connected.wait())
    await asyncio.wait([waiter, task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert client.connected.is_set(), "client did not connect"


async def polled(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``condition`` every 20 ms for at most ``timeout`` seconds; whether it came true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def stop(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def echo_server(host: str = "127.0.0.1") -> asyncio.base_events.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, 0)


async def serve(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], host: str = "127.0.0.1"):
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(wrapped, host, 0)


class StallingRelay:
    """A TCP relay in front of the control port that stops forwarding, both ways, once ``frozen`` is set:
    a proxy or NAT that stops moving bytes without closing anything (what keepalive is for)."""

    def __init__(self, control_port: int) -> None:
        self.control_port = control_port
        self.frozen = asyncio.Event()
        self.upstream: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await serve(self._relay)
        return port_of(self.server)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if self.frozen.is_set():
                await asyncio.sleep(3600)
            dst.write(data)
            await dst.drain()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.control_port)
        self.upstream.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    def close(self) -> None:
        """Stop listening; the server's side of each relayed connection goes now, not after its close timeout."""
        if self.server is not None:
            self.server.close()
        for up_writer in self.upstream:
            up_writer.transport.abort()


def port_of(server: asyncio.base_events.Server) -> int:
    return server.sockets[0].getsockname()[1]


async def wait_listening(host: str, port: int, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


def pattern(size: int, seed: int = 0) -> bytes:
    """Incompressible, reproducible test data."""
    return random.Random(seed).randbytes(size)


def metric(server, name: str, **labels: str) -> float:
    """One sample of a server's Prometheus metrics, as a scrape would see it (0 when absent)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(generate_latest(server.metrics.registry).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@contextlib.asynccontextmanager
async def malicious_server(
    tls: TlsFiles, attack: Callable[[ServerConnection, Hello], Awaitable[None]]
) -> AsyncIterator[str]:
    """A tunnel server (URL yielded) that welcomes one client, then runs ``attack`` on it; later ones are closed."""
    sessions: list[Hello] = []

    async def handler(ws: ServerConnection) -> None:
        if sessions:
            return
        hello = parse_hello(await ws.recv())
        sessions.append(hello)
        await ws.send(Welcome(hello.services, 1 << 20, 256 * 1024).encode())
        await attack(ws, hello)

    server = await websocket_serve(handler, "127.0.0.1", 0, ssl=server_context(tls.cert, tls.key), compression=None,
                         max_size=None, ping_interval=None)
    try:
        yield f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def old_tls_client() -> ssl.SSLContext:
    """A client offering TLS 1.0 and 1.1 only (the caller's test skips where this OpenSSL cannot)."""
    import pytest

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with warnings.catch_warnings():  # offering TLS 1.0/1.1 is deprecated: that is the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot even offer TLS 1.1: {exc}")
    return context


async def answer_or_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """All the server sent until it closed, or nothing when it refused the connection with a reset; then closed."""
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
