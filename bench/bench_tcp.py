#!/usr/bin/env python3
"""TCP tunnel benchmark: direct loopback vs this tunnel vs OpenSSH ``ssh -R`` / ``ssh -L``.

One run measures every path on this machine against the same target service and
prints a table of ratios, so results compare within a run rather than across machines
(developer guide: performance is measured here, not asserted in timed tests). All
paths are up at once and the repeated throughput runs are interleaved across them, so
load from other processes on the machine spreads over every column instead of
penalising whichever path happened to run during it.

    .venv/bin/python bench/bench_tcp.py            # full run (a few minutes)
    .venv/bin/python bench/bench_tcp.py --quick    # smoke run (< 30 s)

See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path as FsPath


import _load  # noqa: E402
import _paths  # noqa: E402
from _report import Config, Result, StealMark, environment, table, targets  # noqa: E402
from _report import SSH_CIPHER, SSH_CIPHER2  # noqa: E402
from _util import (MIB, BenchError, Parser, at_least, cpu_seconds, run_main, fd_count, foreign_share, machine_busy_seconds,  # noqa: E402
                   median, percentile, raise_nofile, round_order, rss_mib)

PATHS = {"direct": "direct", "tunnel": "tunnel", "py-relay": "py relay", "ssh-R": "ssh -R", "ssh-L": "ssh -L",
         "ssh-R2": "ssh -R alt", "ssh-L2": "ssh -L alt"}
#: ssh-R2 / ssh-L2 run the second cipher (--ssh-cipher2); ssh-L2 is off by default to keep the run short.
#: py-relay: two plain Python relays in a row (``_relay.py``: no TLS, no multiplexing), what two Python
#: processes spend carrying the same bytes before any tunnel work.
DEFAULT_PATHS = "direct,tunnel,py-relay,ssh-R,ssh-L,ssh-R2"
DIRECTIONS = ("down", "up")
#: Untimed sequential connections before each timed round of them, bounded by count and time (ssh -R's cost
#: ~44 ms each): an idle second left the next ~400 connections 20-50% slower (measured on ssh -L and the tunnel).
WARM_CONNECTIONS = 500
WARM_SECONDS = 0.5
#: down: the generator writes into the server's public port and the tunnel server sends it to the
#: client (server->client websocket frames, unmasked); up: the target's source writes, the tunnel
#: client sends it to the server (client->server frames, masked per RFC 6455).


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """Holds the live paths and their results; a path that fails is reported and skipped."""

    def __init__(self, cfg: Config, target: _paths.Target) -> None:
        self.cfg = cfg
        self.target = target
        self.paths: dict[str, _paths.Path] = {}
        self.results: dict[str, Result] = {}
        self.foreign_busy = 0.0
        self.foreign_wall = 0.0
        self._turn = 0  # which path each() starts with

    def add(self, label: str, setup: Callable[[], _paths.Path]) -> None:
        log(f"[{label}] setting up")
        self.results[label] = Result(label)
        for attempt in range(3):
            try:
                path = setup()
                break
            except Exception as exc:  # noqa: BLE001 - one failed path must not hide the others
                if "already in use" in str(exc) and attempt < 2:  # a port taken by another process meanwhile
                    log(f"[{label}] port race, retrying: {str(exc).splitlines()[0]}")
                    continue
                self.fail(label, exc)
                return
        self.paths[label] = path
        self.results[label].note = path.note

    def fail(self, label: str, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
        path = self.paths.pop(label, None)
        if path is not None and path.procs:
            msg += "\n" + path.logs()
        log(f"[{label}] FAILED: {msg}")
        self.results[label].error = msg

    def each(self, fn: Callable[[str, _paths.Path, Result], None]) -> None:
        """``fn`` on every path, in ``round_order``: no path always runs first, nor always right after the same one."""
        order = round_order(list(self.paths.items()), self._turn)
        self._turn += 1
        for label, path in order:
            try:
                fn(label, path, self.results[label])
            except Exception as exc:  # noqa: BLE001
                self.fail(label, exc)

    def our_pids(self) -> list[int]:
        pids = [os.getpid(), self.target.proc.popen.pid]
        for path in self.paths.values():
            pids += path.server_pids() + path.client_pids()
        return pids

    # -- phases ---------------------------------------------------------------------

    def memory(self, key: str) -> None:
        def one(label: str, path: _paths.Path, r: Result) -> None:
            if path.server_pids():
                r.metrics[f"rss_server_{key}"] = rss_mib(path.server_pids())
                r.metrics[f"rss_client_{key}"] = rss_mib(path.client_pids())
        self.each(one)

    def throughput(self) -> None:
        cfg = self.cfg
        for rep in range(cfg.repeat):
            self.wait_quiet()
            for way in DIRECTIONS:
                for streams in (1, 4):
                    self.each(lambda label, path, r: self._throughput_once(label, path, r, streams, way))
        for r in self.results.values():
            for way in DIRECTIONS:
                for streams in (1, 4):
                    key = f"{streams}_{way}"
                    got = r.samples.get(f"thr{key}")
                    if got and not r.error:
                        r.metrics[f"thr{key}"] = median(got)
                        r.metrics[f"thr{key}_best"] = max(got)
                    if r.samples.get(f"cpu{key}") and not r.error:
                        r.metrics[f"cpu{key}"] = median(r.samples[f"cpu{key}"])

    def wait_quiet(self) -> None:
        """Wait, bounded by --quiet-wait, until other processes leave the CPUs mostly idle.

        The machine may be shared (tests, other benches); a round measured while it is
        busy says more about the scheduler than about the tunnel.
        """
        if self.cfg.quiet_wait <= 0:
            return
        deadline = time.monotonic() + self.cfg.quiet_wait
        share = foreign_share(self.our_pids())
        waited = False
        while share > self.cfg.quiet_share and time.monotonic() < deadline:
            if not waited:
                log(f"  waiting up to {self.cfg.quiet_wait:.0f} s for a quiet machine "
                    f"(other processes use {share:.0%} of the CPUs)")
                waited = True
            share = foreign_share(self.our_pids(), 2.0)
        if waited:
            log(f"  {'quiet' if share <= self.cfg.quiet_share else 'still busy'}: other processes use {share:.0%}")

    def _throughput_once(self, label: str, path: _paths.Path, r: Result, streams: int, way: str) -> None:
        port = path.sink_port if way == "down" else path.source_port
        if port is None:
            raise BenchError(f"{label} has no source port for the upload direction")
        pids = path.server_pids() + path.client_pids()
        ours = self.our_pids()
        cpu0, gen0, tgt0 = cpu_seconds(pids), cpu_seconds([os.getpid()]), cpu_seconds([self.target.proc.popen.pid])
        busy0, ours0, t0 = machine_busy_seconds(), cpu_seconds(ours), time.monotonic()
        res = _load.throughput(port, streams, self.cfg.max_bytes, self.cfg.seconds, receive=way == "up")
        wall = time.monotonic() - t0
        foreign = max(0.0, (machine_busy_seconds() - busy0) - (cpu_seconds(ours) - ours0))
        self.foreign_busy += foreign
        self.foreign_wall += wall
        cpu = cpu_seconds(pids) - cpu0
        gen, tgt = cpu_seconds([os.getpid()]) - gen0, cpu_seconds([self.target.proc.popen.pid]) - tgt0
        r.samples.setdefault(f"thr{streams}_{way}", []).append(res.gbits)
        if pids:
            r.samples.setdefault(f"cpu{streams}_{way}", []).append(cpu * 1e3 / (res.bytes / (1024 * MIB)))
        log(f"  {label}: {way} {streams} stream(s) {res.gbits:.2f} Gbit/s ({res.bytes / MIB:.0f} MiB in "
            f"{res.seconds:.2f} s; CPU s: path {cpu:.2f}, generator {gen:.2f}, target {tgt:.2f}, "
            f"other processes {foreign:.2f})")

    def short_connections(self) -> None:
        """In ``repeat`` rounds interleaved across paths, like the throughput runs."""
        rounds = max(1, min(self.cfg.repeat, self.cfg.conns // 100))
        per_round = [self.cfg.conns // rounds + (i < self.cfg.conns % rounds) for i in range(rounds)]
        for n in per_round:
            def one(label: str, path: _paths.Path, r: Result, n: int = n) -> None:
                # untimed first: after an idle stretch (ssh -R's rounds wait on Nagle) the machine's next few
                # hundred connections ran 20-50% slower, whichever path they took (measured), so without it a
                # path that follows one was charged for it
                _load.short_connections(path.echo_port, WARM_CONNECTIONS, max_seconds=WARM_SECONDS)
                sc = _load.short_connections(path.echo_port, n, max_seconds=max(60.0, n * 0.2))
                if sc.failures:
                    raise BenchError(f"{sc.failures} of {n} short connections failed; first: {sc.first_error}")
                r.samples.setdefault("conn_ms", []).extend(sc.samples_ms)
                r.metrics["conns_total"] = r.metrics.get("conns_total", 0.0) + sc.total_s
                log(f"  {label}: {n} sequential connections in {sc.total_s:.2f} s, "
                    f"p50 {sc.p50_ms:.2f} ms, p99 {sc.p99_ms:.2f} ms")
            self.each(one)
        for r in self.results.values():
            if r.samples.get("conn_ms") and not r.error:
                r.metrics["conns_p50"] = percentile(r.samples["conn_ms"], 50)
                r.metrics["conns_p99"] = percentile(r.samples["conn_ms"], 99)

    def idle_streams(self, fresh: bool) -> None:
        """One path at a time, so each path's memory reading holds only its own streams. ``fresh`` (before any
        load): the marginal KiB per stream, from the idle reading. Measured after the load instead, heap the bulk
        runs had freed but not given back took the new streams in: --quick runs read 0.2 KiB per stream where a
        fresh tunnel took 2.3. After the load: the RSS with the streams open (issue 2's bound) and descriptors."""
        def one(label: str, path: _paths.Path, r: Result) -> None:
            t = time.monotonic()
            socks = _load.open_idle(path.echo_port, self.cfg.idle, max_seconds=max(60.0, self.cfg.idle * 0.2))
            log(f"  {label}: {self.cfg.idle} idle streams opened in {time.monotonic() - t:.2f} s")
            try:
                if path.server_pids():
                    time.sleep(self.cfg.settle)
                    now = {"server": rss_mib(path.server_pids()), "client": rss_mib(path.client_pids())}
                    for side in ("server", "client"):
                        base = r.metrics.get(f"rss_{side}_idle")
                        if fresh and base is not None:
                            r.metrics[f"kib_{side}_stream"] = (now[side] - base) * 1024 / len(socks)
                        elif not fresh:
                            r.metrics[f"rss_{side}_streams"] = now[side]
                    if not fresh:
                        r.metrics["fds_server_streams"] = fd_count(path.server_pids())
                        r.metrics["fds_client_streams"] = fd_count(path.client_pids())
            finally:
                _load.close_all(socks)
        self.each(one)

    def peaks(self) -> None:
        def one(label: str, path: _paths.Path, r: Result) -> None:
            if path.server_pids():
                r.metrics["rss_server_peak"] = rss_mib(path.server_pids(), "VmHWM")
                r.metrics["rss_client_peak"] = rss_mib(path.client_pids(), "VmHWM")
            for proc in path.procs:
                if proc.popen.poll() is not None:
                    raise BenchError(f"{proc.name} exited with {proc.popen.returncode} during the run")
        self.each(one)


def parse_args(argv: list[str] | None) -> tuple[Config, list[str], FsPath | None]:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s, 512 MiB, 1 repeat, 200 conns/streams")
    ap.add_argument("--paths", default=DEFAULT_PATHS,
                    help=f"comma-separated subset of {','.join(PATHS)} (default {DEFAULT_PATHS})")
    ap.add_argument("--seconds", type=at_least(0, float, above=True), help="time bound per throughput run (default 5)")
    ap.add_argument("--max-mib", type=at_least(1), help="byte bound per throughput run, MiB (default 2048)")
    ap.add_argument("--repeat", type=at_least(1),
                    help="throughput runs per path, direction and stream count; median reported (default 3)")
    ap.add_argument("--conns", type=at_least(1), help="sequential short connections (default 1000)")
    ap.add_argument("--idle", type=at_least(1), help="idle streams held open for the memory reading (default 1000)")
    ap.add_argument("--ssh-cipher", default=SSH_CIPHER,
                    help=f"the ssh baseline's cipher, the ssh -R / ssh -L columns (default {SSH_CIPHER}, "
                         "OpenSSH's fastest with AES-NI)")
    ap.add_argument("--ssh-cipher2", default=SSH_CIPHER2,
                    help=f"the second ssh column's cipher, ssh-R2 / ssh-L2 (default {SSH_CIPHER2}, "
                         "OpenSSH's default)")
    ap.add_argument("--quiet-wait", type=at_least(0, float),
                    help="before each throughput round, wait up to this many seconds for other processes "
                         "to use < 15%% of the CPUs (default 60; 0 with --quick)")
    ap.add_argument("--json", type=FsPath, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    q = args.quick
    cfg = Config(
        seconds=args.seconds or (1.0 if q else 5.0),
        max_bytes=(args.max_mib or (512 if q else 2048)) * MIB,
        repeat=args.repeat or (1 if q else 3),
        conns=args.conns or (200 if q else 1000),
        idle=args.idle or (200 if q else 1000),
        ssh_cipher=args.ssh_cipher,
        ssh_cipher2=args.ssh_cipher2,
        settle=0.5 if q else 1.0,
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else (0.0 if q else 60.0),
    )
    wanted = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PATHS]
    if unknown or not wanted:
        ap.error(f"unknown path(s) {unknown}; choose from {','.join(PATHS)}" if unknown else
                 f"--paths names no path; choose from {','.join(PATHS)}")
    return cfg, wanted, args.json


def main(argv: list[str] | None = None) -> int:
    cfg, wanted, json_out = parse_args(argv)
    raise_nofile()
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    mark = StealMark()
    with tempfile.TemporaryDirectory(prefix="inlets-bench-") as tmpname, contextlib.ExitStack() as stack:
        tmp = FsPath(tmpname)
        target = stack.enter_context(_paths.target(tmp))
        bench = Bench(cfg, target)
        setups: dict[str, Callable[[], _paths.Path]] = {
            "direct": lambda: stack.enter_context(_paths.direct(target)),
            "tunnel": lambda: stack.enter_context(_paths.tunnel(target, tmp)),
            "py-relay": lambda: stack.enter_context(_paths.py_relay(target, tmp)),
            "ssh-R": lambda: stack.enter_context(_paths.ssh_path("-R", target, tmp, cfg.ssh_cipher)),
            "ssh-L": lambda: stack.enter_context(_paths.ssh_path("-L", target, tmp, cfg.ssh_cipher)),
            "ssh-R2": lambda: stack.enter_context(_paths.ssh_path("-R", target, tmp, cfg.ssh_cipher2)),
            "ssh-L2": lambda: stack.enter_context(_paths.ssh_path("-L", target, tmp, cfg.ssh_cipher2)),
        }
        for name in PATHS:
            if name in wanted:
                bench.add(PATHS[name], setups[name])
        time.sleep(cfg.settle)
        bench.memory("idle")
        log("idle streams on the fresh processes (KiB per stream) ...")
        bench.idle_streams(fresh=True)
        time.sleep(cfg.settle)
        log("throughput runs ...")
        bench.throughput()
        log("sequential connections ...")
        bench.short_connections()
        time.sleep(cfg.settle)
        bench.memory("loaded")
        log("idle streams after the load ...")
        bench.idle_streams(fresh=False)
        time.sleep(cfg.settle)
        bench.memory("closed")
        bench.peaks()
    results = bench.results
    foreign = bench.foreign_busy / (bench.foreign_wall * (os.cpu_count() or 1)) if bench.foreign_wall else None
    print()
    print(environment(cfg, foreign, started_at, mark))
    print()
    print(table(results, cfg))
    print()
    print("targets (issue 17; RSS with idle streams: issue 2):")
    for label, ok, detail in targets(results, cfg):
        mark = "PASS" if ok else ("n/a " if ok is None else "FAIL")
        print(f"  [{mark}] {label}: {detail}")
    failed = [r for r in results.values() if r.error]
    for r in failed:
        lines = r.error.strip().splitlines()
        print(f"\n{r.name} FAILED: {lines[0] if lines else ''}")
        for line in lines[1:60]:
            print(f"  {line}")
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if json_out:
        json_out.write_text(json.dumps({"config": asdict(cfg), "foreign_cpu": foreign,
                                        "results": {k: asdict(v) for k, v in results.items()}}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main, "bench_tcp")
