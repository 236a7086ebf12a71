#!/usr/bin/env python3
"""Memory under the hostile peers of issue 14, reproduced on loopback against real processes.

Each attack starts a victim (``inlets tcp server`` or ``inlets tcp client``, from
``--tree``, so a checkout of an older commit can be measured the same way), runs the
attacker in this process for ``--seconds`` and prints the victim's resident memory
at the start, its peak, and a few seconds after the attacker went away.

    .venv/bin/python bench/hostile.py                      # every attack, 20 s each
    .venv/bin/python bench/hostile.py open-flood --tree /tmp/before

Attacks (everything on 127.0.0.1, bounded in time and count):

- ``open-flood``: an authenticated client sends OPEN frames and never reads (server victim).
- ``ping-flood``: websocket pings and a GOAWAY every 150 ms, never reading (server victim).
- ``client-open-flood``: a malicious server opens streams the client never advertised and
  never reads; also counts the client's log lines (client victim).
- ``half-open``: thousands of unauthenticated TLS connections from 100 loopback addresses,
  silent, mid-ClientHello or mid-request-head (server victim).
- ``stalled-upstream``: a malicious server fills streams to an upstream that never reads
  (client victim); prints the bytes the client host took, in its memory and its kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import secrets
import socket
import ssl
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path as FsPath


from _util import (LOOPBACK, Parser, Procs, at_least, free_port, nodelay, port_accepts, raise_nofile, rss_mib, run_main,  # noqa: E402
                   spawn, wait_until)
from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

from inlets_py.runtime.core.certs import ensure_auto_tls  # noqa: E402
from inlets_py.runtime.core.handshake import Hello, Welcome, parse_hello  # noqa: E402
from inlets_py.runtime.core.mux import HEADER, FrameType, Multiplexer, StreamReset  # noqa: E402
from inlets_py.runtime.core.tls import client_context, server_context  # noqa: E402

ROOT = FsPath(__file__).resolve().parent.parent
SETTLE = 5.0  # seconds after the attacker left before the last reading


class Victim:
    """One ``inlets`` process of ``tree``, its RSS sampled while the attack runs."""

    def __init__(self, tree: FsPath, work: FsPath, argv: list[str], name: str, procs: Procs) -> None:
        self.procs = procs  # the Setup's: stopped at the end of each attack, and by main whatever happens
        self.proc = self.procs.add(spawn(name, [sys.executable, "-m", "runtime", *argv], work, cwd=tree))
        self.start = self.peak = 0.0

    def rss(self) -> float:
        return rss_mib([self.proc.popen.pid])

    def baseline(self) -> None:
        time.sleep(1.0)
        self.start = self.peak = self.rss()

    async def sample(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(0.2)

    def log_lines(self) -> int:
        return len(self.proc.log.read_bytes().splitlines())

    def report(self, what: str, extra: str = "") -> None:
        end = self.rss()
        alive = "running" if self.proc.popen.poll() is None else f"exited {self.proc.popen.returncode}"
        print(f"{what:18} RSS start {self.start:6.1f} MiB  peak {self.peak:6.1f} MiB  "
              f"{SETTLE:.0f} s after {end:6.1f} MiB  ({alive}){extra}", flush=True)


class Setup:
    def __init__(self, tree: FsPath, work: FsPath) -> None:
        self.tree, self.work = tree, work
        self.token = secrets.token_urlsafe(32)
        self.token_file = work / "token"
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.tls = ensure_auto_tls(work / "tls", [LOOPBACK])
        self.procs = Procs()

    def server(self) -> tuple[Victim, int]:
        port = free_port()
        victim = Victim(self.tree, self.work, [
            "tcp", "server", "--control-addr", LOOPBACK, "--control-port", str(port), "--data-addr", LOOPBACK,
            "--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key), "--token-file", str(self.token_file),
        ], "victim-server", self.procs)
        wait_until(lambda: port_accepts(port), 30, "the victim server", proc=victim.proc)
        victim.baseline()
        return victim, port

    def client(self, port: int, *upstream: str) -> Victim:
        victim = Victim(self.tree, self.work, [
            "tcp", "client", "--url", f"wss://{LOOPBACK}:{port}", "--tls-ca", str(self.tls.ca_cert),
            "--token-file", str(self.token_file), *upstream,
        ], "victim-client", self.procs)
        victim.baseline()
        return victim

    async def authenticated(self, port: int):
        ws = await connect(f"wss://{LOOPBACK}:{port}/connect", ssl=client_context(self.tls.ca_cert),
                           additional_headers={"Authorization": f"Bearer {self.token}"}, compression=None,
                           max_size=None, max_queue=1, ping_interval=None)
        await ws.send(Hello("tcp", [f"tcp:{free_port()}"], "hostile", 1 << 20).encode())
        await ws.recv()  # the welcome
        ws.transport.pause_reading()  # from here on this side reads nothing, not even pongs
        return ws


def opens(first: int, count: int, target: bytes = b"tcp:1") -> bytes:
    return b"".join(HEADER.pack(FrameType.OPEN, first + 2 * i, len(target)) + target for i in range(count))


async def open_flood(setup: Setup, seconds: float) -> None:
    victim, port = setup.server()
    ws = await setup.authenticated(port)
    sent, stream = 0, 1
    sampler = asyncio.ensure_future(victim.sample(seconds + SETTLE))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.send(opens(stream, 4096)), max(0.1, deadline - time.monotonic()))
            stream += 8192
            sent += 4096
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the victim closing us ends the attack
        pass
    ws.transport.abort()
    await sampler
    victim.report("open-flood", f"  OPENs sent {sent:,}")
    victim.procs.stop_all()


async def ping_flood(setup: Setup, seconds: float) -> None:
    victim, port = setup.server()
    ws = await setup.authenticated(port)
    sampler = asyncio.ensure_future(victim.sample(seconds + SETTLE))
    deadline = time.monotonic() + seconds
    goaway = HEADER.pack(FrameType.GOAWAY, 0, 0)
    pings, last_goaway, closed_after = 0, 0.0, None
    while time.monotonic() < deadline and not ws.transport.is_closing():
        for _ in range(200):
            ws.protocol.send_ping(secrets.token_bytes(125))
        pings += 200
        if time.monotonic() - last_goaway > 0.15:
            ws.protocol.send_binary(goaway)
            last_goaway = time.monotonic()
        ws.send_data()
        try:
            await asyncio.wait_for(ws.drain(), max(0.05, deadline - time.monotonic()))
        except (asyncio.TimeoutError, ConnectionError):
            pass
    if ws.transport.is_closing() and closed_after is None:
        closed_after = seconds - (deadline - time.monotonic())
    ws.transport.abort()
    await sampler
    note = f", victim closed it after {closed_after:.1f} s" if closed_after is not None else ""
    victim.report("ping-flood", f"  pings sent {pings:,}{note}")
    victim.procs.stop_all()


class MaliciousServer:
    """Answers the client's hello, then runs ``attack(websocket, hello)``."""

    def __init__(self, setup: Setup, attack) -> None:
        self.setup, self.attack = setup, attack
        self.port = free_port()
        self.done = asyncio.Event()
        self.release = asyncio.Event()
        self.sessions = 0

    async def handler(self, ws) -> None:
        if self.done.is_set() or self.sessions:  # one session: a reconnecting victim is turned away
            await ws.close(4003, "one session only")
            return
        self.sessions += 1
        hello = parse_hello(await ws.recv())
        await ws.send(Welcome(hello.services, 1 << 20, 256 * 1024).encode())
        try:
            await self.attack(ws, hello)
        finally:
            self.done.set()
        await self.release.wait()  # hold the session until the last reading

    async def __aenter__(self):
        ctx = server_context(self.setup.tls.cert, self.setup.tls.key)
        self.server = await serve(self.handler, LOOPBACK, self.port, ssl=ctx, compression=None, max_size=None,
                                  max_queue=1, ping_interval=None)
        return self

    async def __aexit__(self, *exc) -> None:
        self.release.set()
        self.server.close()


async def client_open_flood(setup: Setup, seconds: float) -> None:
    sent = [0]

    async def attack(ws, hello) -> None:
        ws.transport.pause_reading()
        deadline = time.monotonic() + seconds
        stream = 2
        try:
            while time.monotonic() < deadline:
                await asyncio.wait_for(ws.send(opens(stream, 4096)), max(0.1, deadline - time.monotonic()))
                stream += 8192
                sent[0] += 4096
        except Exception:  # noqa: BLE001 - a timeout or the victim closing ends the attack
            pass
        ws.transport.abort()

    async with MaliciousServer(setup, attack) as server:
        victim = setup.client(server.port, "--upstream", "127.0.0.1", "--ports", str(free_port()))
        sampler = asyncio.ensure_future(victim.sample(seconds + SETTLE))
        await asyncio.wait_for(server.done.wait(), seconds + 30)
        await sampler
    victim.report("client-open-flood", f"  OPENs sent {sent[0]:,}, client log lines {victim.log_lines():,}")
    victim.procs.stop_all()


def _client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def half_open(setup: Setup, seconds: float, count: int) -> None:
    victim, port = setup.server()
    hello = _client_hello()
    held: list = []
    ctx = client_context(setup.tls.ca_cert)
    started = time.monotonic()
    sampler = asyncio.ensure_future(victim.sample(seconds + SETTLE))
    refused = 0
    for i in range(count):
        if time.monotonic() - started > seconds:
            break
        kind = i % 3
        source = f"127.0.1.{1 + i % 100}"
        try:
            if kind == 2:  # TLS done, request head never finished
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(LOOPBACK, port, ssl=ctx, local_addr=(source, 0)), 5)
                writer.write(b"GET /connect HTTP/1.1\r\nHost: x\r\n")
                held.append(writer)
            else:  # silent, or half a ClientHello
                sock = nodelay(socket.create_connection((LOOPBACK, port), source_address=(source, 0)))
                if kind == 1:
                    sock.sendall(hello[: len(hello) // 2])
                held.append(sock)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            refused += 1
    opened = len(held)
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    for item in held:
        item.close()
    held.clear()
    await sampler
    victim.report("half-open", f"  connections opened {opened:,}, failed {refused:,}")
    victim.procs.stop_all()


def _queued(sockets: list[socket.socket]) -> int:
    total = 0
    for sock in sockets:
        try:
            total += struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            pass
    return total


def _send_queues(remote_port: int) -> int:
    """Bytes queued in this host's TCP send queues of sockets connected to ``remote_port`` (/proc/net/tcp)."""
    total = 0
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == remote_port:
                total += int(fields[4].split(":")[0], 16)
    return total


async def stalled_upstream(setup: Setup, seconds: float, streams: int) -> None:
    listener = socket.create_server((LOOPBACK, 0), backlog=streams + 16)
    listener.setblocking(False)
    sink_port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    public = free_port()
    taken = [0]

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            accepted.append(nodelay(conn))  # and never read from it

    async def attack(ws, hello) -> None:
        mux = Multiplexer(client=False, send_window=hello.window)
        live = {mux.open_stream(f"tcp:{public}") for _ in range(streams)}
        chunk = bytes(64 * 1024)
        deadline = time.monotonic() + seconds

        async def read() -> None:
            async for message in ws:
                for event in mux.receive(message):
                    if isinstance(event, StreamReset):
                        live.discard(event.stream_id)

        reader = asyncio.ensure_future(read())  # ends with the connection
        while time.monotonic() < deadline and not reader.done():
            for stream_id in list(live):
                while mux.is_open(stream_id) and mux.send_window(stream_id):
                    taken[0] += mux.send_data(stream_id, chunk)
            for message in mux.data_to_send():
                await ws.send(message)
            await asyncio.sleep(0.05)

    acceptor = asyncio.ensure_future(accept())
    async with MaliciousServer(setup, attack) as server:
        victim = setup.client(server.port, "--upstream", f"{public}=127.0.0.1:{sink_port}")
        sampler = asyncio.ensure_future(victim.sample(seconds + SETTLE))
        await asyncio.wait_for(server.done.wait(), seconds + 30)
        kernel = _queued(accepted) + _send_queues(sink_port)
        await sampler
    acceptor.cancel()
    for conn in accepted:
        conn.close()
    listener.close()
    victim.report("stalled-upstream", f"  streams {streams}, upstream connections {len(accepted)}, "
                  f"bytes sent by the server {taken[0] / 2**20:,.0f} MiB, in kernel queues {kernel / 2**20:,.0f} MiB")
    victim.procs.stop_all()


def main() -> int:
    names = ["open-flood", "ping-flood", "client-open-flood", "half-open", "stalled-upstream"]
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", nargs="*", metavar="ATTACK", help=f"any of {', '.join(names)} (default: all)")
    parser.add_argument("--tree", type=FsPath, default=ROOT, help="checkout whose runtime is the victim")
    parser.add_argument("--seconds", type=at_least(0, float, above=True), default=20.0, help="length of each attack")
    parser.add_argument("--connections", type=at_least(1), default=3000, help="half-open: how many")
    parser.add_argument("--streams", type=at_least(1), default=300, help="stalled-upstream: how many")
    args = parser.parse_args()
    unknown = sorted(set(args.attacks) - set(names))
    if unknown:
        parser.error(f"unknown attack {unknown[0]!r}: choose from {', '.join(names)}")
    raise_nofile()
    print(f"victim: {args.tree}  ({args.seconds:.0f} s per attack)", flush=True)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        setup = Setup(args.tree.resolve(), FsPath(tmp))
        try:
            run_attacks(setup, args.attacks or names, args)
        finally:  # a Ctrl-C or a failed attack left its victim running
            setup.procs.stop_all()
    return 0


def run_attacks(setup: Setup, names: list[str], args: argparse.Namespace) -> None:
    """Each attack in its own event loop, one after another."""
    for name in names:
        run = {
            "open-flood": lambda: open_flood(setup, args.seconds),
            "ping-flood": lambda: ping_flood(setup, args.seconds),
            "client-open-flood": lambda: client_open_flood(setup, args.seconds),
            "half-open": lambda: half_open(setup, args.seconds, args.connections),
            "stalled-upstream": lambda: stalled_upstream(setup, args.seconds, args.streams),
        }[name]
        asyncio.run(run())


if __name__ == "__main__":
    run_main(main, "hostile")
