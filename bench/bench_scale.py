#!/usr/bin/env python3
"""Scale benchmark (issue 17): 1,000 tunnel clients connected to one ``inlets tcp server``.

The server is the real command in its own process (auto TLS, token file, data ports on
127.0.0.1), so its memory is its own. The clients share this process, each with its own
TLS websocket, driven through the runtime's public client classes (``TunnelClient``
with ``TcpUpstreams``, as ``inlets tcp client`` builds them), each advertising its own
data port. Behind each client an upstream listener answers every connection with its
own port number and closes, so a reply proves which client a data port reached.

Measured: time until every client is connected and every data port accepts; the
server's RSS per connected client; a bounded sample of requests through random data
ports, each checked to reach its own client's upstream; then the server is restarted
(SIGTERM, then the same command with the same TLS files) and the reconnect storm is
timed until every client is back and every data port accepts, and routing is
sampled again.

    .venv/bin/python bench/bench_scale.py              # 1,000 clients, about a minute
    .venv/bin/python bench/bench_scale.py --clients 100 --sample 50   # smoke run

Every wait is bounded (``--timeout``); everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FsPath


import _paths  # noqa: E402
from _report import StealMark, machine_line, steal_line  # noqa: E402
from _util import (LOOPBACK, BenchError, Parser, at_least, Proc, free_ports, port_accepts, raise_nofile, rss_mib, run_main, spawn,  # noqa: E402
                   wait_until)

# The runtime's public client entry points (one import line to change if the package moves).
from inlets_py.runtime.client.dialer import ClientConfig, TunnelClient  # noqa: E402
from inlets_py.runtime.client.tcp_upstreams import TcpUpstreams, Upstream  # noqa: E402
from inlets_py.runtime.core.tls import client_context  # noqa: E402

TARGET_KIB_PER_CLIENT = 100.0
TARGET_STORM_S = 30.0


@dataclass
class Figures:
    clients: int
    connect_s: float | None = None
    ports_s: float | None = None
    rss_idle_mib: float | None = None
    rss_connected_mib: float | None = None
    bench_rss_mib: float | None = None
    routed: tuple[int, int] = (0, 0)
    storm_s: float | None = None
    storm_ports_s: float | None = None
    routed_after: tuple[int, int] = (0, 0)
    rss_after_storm_mib: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kib_per_client(self) -> float | None:
        if self.rss_idle_mib is None or self.rss_connected_mib is None:
            return None
        return (self.rss_connected_mib - self.rss_idle_mib) * 1024 / self.clients


class Upstreams:
    """One listener per client; each answers with its own port and closes."""

    def __init__(self) -> None:
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, ports: list[int]) -> None:
        loop = asyncio.get_running_loop()
        for port in ports:
            reply = f"{port}\n".encode()
            self.servers.append(await loop.create_server(lambda r=reply: _Answer(r), LOOPBACK, port, backlog=64))

    def close(self) -> None:
        for server in self.servers:
            server.close()


class _Answer(asyncio.Protocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.reply)  # type: ignore[attr-defined]
        transport.close()


class Server:
    """``inlets tcp server`` as a process that can be restarted with the same TLS files and token."""

    def __init__(self, tmp: FsPath, per_source: int) -> None:
        self.dir = tmp
        self.token = tmp / "token"
        self.token.write_text(secrets.token_urlsafe(32) + "\n")
        os.chmod(self.token, 0o600)
        self.tls = tmp / "tls"
        self.control, = free_ports(1)
        self.per_source = per_source
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = spawn(f"inlets-server-{self.starts}", _paths.inlets_command() + [
            "tcp", "server", "--control-addr", LOOPBACK, "--control-port", str(self.control),
            "--data-addr", LOOPBACK, "--auto-tls", "--auto-tls-path", str(self.tls), "--auto-tls-san", LOOPBACK,
            "--token-file", str(self.token), "--log-level", "warning",
            "--max-handshakes", str(max(128, self.per_source)),
            "--max-handshakes-per-source", str(self.per_source)], self.dir)
        wait_until(lambda: port_accepts(self.control) and (self.tls / "ca.crt").exists(), 30,
                   f"inlets tcp server on control port {self.control}", proc=self.proc)

    def rss(self) -> float:
        assert self.proc is not None
        return rss_mib([self.proc.popen.pid])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)


async def _wait(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``pred`` holds, polled every 20 ms; BenchError past ``timeout``."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def _fetch(port: int, timeout: float) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
    try:
        return await asyncio.wait_for(reader.read(64), timeout)
    finally:
        writer.close()


async def _all_accept(ports: list[int], deadline_s: float, parallel: int = 64) -> float:
    """Seconds until every data port accepts (each retried every 50 ms), bounded by ``deadline_s``."""
    t0 = time.monotonic()
    sem = asyncio.Semaphore(parallel)

    async def one(port: int) -> None:
        while True:
            async with sem:
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 5)
                    writer.close()
                    return
                except (OSError, asyncio.TimeoutError):
                    pass
            if time.monotonic() - t0 > deadline_s:
                raise BenchError(f"data port {port} did not accept within {deadline_s:.0f} s")
            await asyncio.sleep(0.05)

    await asyncio.gather(*(one(p) for p in ports))
    return time.monotonic() - t0


async def _routing(pairs: list[tuple[int, int]], sample: int, timeout: float) -> tuple[int, int, str]:
    """Of ``sample`` random (data port, upstream port) pairs, how many reached their own upstream."""
    chosen = random.sample(pairs, min(sample, len(pairs)))
    ok, first_bad = 0, ""
    sem = asyncio.Semaphore(32)

    async def one(pub: int, up: int) -> None:
        nonlocal ok, first_bad
        async with sem:
            try:
                got = await _fetch(pub, timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                first_bad = first_bad or f"port {pub}: {exc!r}"
                return
        if got == f"{up}\n".encode():
            ok += 1
        else:
            first_bad = first_bad or f"port {pub} answered {got!r}, expected {up}"

    await asyncio.gather(*(one(pub, up) for pub, up in chosen))
    return ok, len(chosen), first_bad


async def run(args: argparse.Namespace, tmp: FsPath) -> Figures:
    fig = Figures(args.clients)
    ports = free_ports(2 * args.clients)
    pairs = list(zip(ports[: args.clients], ports[args.clients:]))  # (data port, upstream port)
    upstreams = Upstreams()
    await upstreams.start([up for _, up in pairs])
    server = Server(tmp, args.per_source)
    server.start()
    tasks: list[asyncio.Task] = []
    try:
        await asyncio.sleep(args.settle)
        fig.rss_idle_mib = server.rss()
        ctx = client_context(server.tls / "ca.crt")
        token = server.token.read_text().strip()
        clients = []
        for pub, up in pairs:
            handler = TcpUpstreams({pub: Upstream(LOOPBACK, up)})
            config = ClientConfig(url=f"wss://{LOOPBACK}:{server.control}", token=token, mode="tcp",
                                  services=handler.services, ssl_context=ctx)
            clients.append(TunnelClient(config, handler.on_stream))
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(c.run_forever()) for c in clients]
        fig.connect_s = await _wait(lambda: all(c.connected.is_set() for c in clients), args.timeout,
                                    f"all {args.clients} clients to connect")
        await _all_accept([pub for pub, _ in pairs], args.timeout)
        fig.ports_s = time.monotonic() - t0
        print(f"  {args.clients} clients connected in {fig.connect_s:.2f} s; every data port accepts at "
              f"{fig.ports_s:.2f} s", file=sys.stderr)
        await asyncio.sleep(args.settle)
        fig.rss_connected_mib = server.rss()
        fig.bench_rss_mib = rss_mib([os.getpid()])
        ok, n, bad = await _routing(pairs, args.sample, 10)
        fig.routed = (ok, n)
        if bad:
            fig.notes.append(f"routing before restart: {bad}")

        print("  restarting the server ...", file=sys.stderr)
        old = [c.session for c in clients]
        server.stop()
        await _wait(lambda: not any(c.connected.is_set() for c in clients), args.timeout,
                    "every client to notice the server went away")
        server.start()
        t1 = time.monotonic()
        fig.storm_s = await _wait(
            lambda: all(c.connected.is_set() and c.session is not None and c.session is not o
                        for c, o in zip(clients, old)),
            args.timeout, f"all {args.clients} clients to reconnect")
        await _all_accept([pub for pub, _ in pairs], args.timeout)
        fig.storm_ports_s = time.monotonic() - t1
        print(f"  reconnected in {fig.storm_s:.2f} s; every data port accepts at {fig.storm_ports_s:.2f} s",
              file=sys.stderr)
        ok, n, bad = await _routing(pairs, args.sample, 10)
        fig.routed_after = (ok, n)
        if bad:
            fig.notes.append(f"routing after restart: {bad}")
        await asyncio.sleep(args.settle)
        fig.rss_after_storm_mib = server.rss()
        if server.proc is not None and server.proc.popen.poll() is not None:
            raise BenchError(f"the server exited with {server.proc.popen.returncode}:\n{server.proc.tail()}")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        upstreams.close()
        server.stop()
    return fig


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(fig: Figures, args: argparse.Namespace) -> str:
    kib = fig.kib_per_client
    rows = [
        ("clients connected at once", f"{fig.clients}", ""),
        ("time for all to connect, s", _f(fig.connect_s, ".2f"), ""),
        ("  until every data port accepts, s", _f(fig.ports_s, ".2f"), ""),
        ("server RSS idle, MiB", _f(fig.rss_idle_mib, ".1f"), ""),
        (f"server RSS {fig.clients} clients, MiB", _f(fig.rss_connected_mib, ".1f"), ""),
        ("server RSS per client, KiB", _f(kib, ".1f"),
         "-" if kib is None else f"{kib / TARGET_KIB_PER_CLIENT:.2f}x of {TARGET_KIB_PER_CLIENT:.0f} KiB "
         f"{'PASS' if kib <= TARGET_KIB_PER_CLIENT else 'FAIL'}"),
        (f"bench process RSS ({fig.clients} clients), MiB", _f(fig.bench_rss_mib, ".1f"), ""),
        ("requests routed to their own client", f"{fig.routed[0]}/{fig.routed[1]}",
         "PASS" if fig.routed[1] and fig.routed[0] == fig.routed[1] else "FAIL"),
        (f"reconnect storm: all {fig.clients} back, s", _f(fig.storm_s, ".2f"),
         "-" if fig.storm_s is None else f"{fig.storm_s / TARGET_STORM_S:.2f}x of {TARGET_STORM_S:.0f} s "
         f"{'PASS' if fig.storm_ports_s is not None and fig.storm_ports_s <= TARGET_STORM_S else 'FAIL'}"),
        ("  until every data port accepts, s", _f(fig.storm_ports_s, ".2f"), ""),
        ("requests routed after the storm", f"{fig.routed_after[0]}/{fig.routed_after[1]}",
         "PASS" if fig.routed_after[1] and fig.routed_after[0] == fig.routed_after[1] else "FAIL"),
        ("server RSS after the storm, MiB", _f(fig.rss_after_storm_mib, ".1f"), ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out = [f"{'metric':<{w0}}  {'value':>{w1}}  target (issue 17)", f"{'-' * w0}  {'-' * w1}  {'-' * 17}"]
    out += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(out)


def _runner() -> Callable:
    """uvloop when installed, as the ``inlets`` commands run."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1000, help="clients connected at once (default 1000)")
    ap.add_argument("--sample", type=at_least(1), default=200, help="requests checked for routing, each time (default 200)")
    ap.add_argument("--timeout", type=at_least(0, float, above=True), default=120.0, help="bound on each wait, s (default 120)")
    ap.add_argument("--settle", type=at_least(0, float), default=1.0, help="pause before each memory reading, s (default 1)")
    ap.add_argument("--per-source", type=at_least(1), default=1024,
                    help="the server's --max-handshakes-per-source (default 1024: here every client comes from "
                         "127.0.0.1, where real ones come from their own addresses; the default 16 would make "
                         "this bench measure the cap and the clients' backoff)")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 5000:
        ap.error("--clients must be 1..5000")
    raise_nofile()
    logging.getLogger("inlets").setLevel(logging.ERROR)  # 1,000 clients' reconnect warnings say nothing new
    started = datetime.datetime.now(datetime.timezone.utc)
    mark = StealMark()
    t = time.monotonic()
    print(f"{args.clients} clients against one inlets tcp server ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir:
        try:
            fig = _runner()(run(args, FsPath(tmpdir)))
        except BenchError as exc:
            print(f"bench_scale failed: {exc}", file=sys.stderr)
            return 1
    print()
    print(machine_line())
    print(steal_line(mark))
    print(f"started {started:%Y-%m-%d %H:%M UTC}; clients in one process (each its own TLS websocket), "
          f"server --max-handshakes-per-source {args.per_source}; routing sample {args.sample}")
    print()
    print(table(fig, args))
    for note in fig.notes:
        print(f"  {note}")
    print(f"\n(total {time.monotonic() - t:.0f} s)")
    ok = fig.routed[0] == fig.routed[1] and fig.routed_after[0] == fig.routed_after[1]
    return 0 if ok else 1


if __name__ == "__main__":
    run_main(main, "bench_scale")
