#!/usr/bin/env python3
"""HTTP tunnel benchmark: wrk against nginx, direct vs this tunnel vs ssh -R / -L.

One run on this machine: nginx (Debian package, own config in a temp dir, high
loopback port) serves a 1 KiB and a 64 KiB file; wrk (Debian package) measures
requests/s and p50/p99 latency with keep-alive connections in three cases (1 KiB with
64 connections, 1 KiB with 1,000 connections, 64 KiB with 64 connections), straight to nginx, through
``inlets http server/client`` (TLS, token), through ``inlets tcp`` (the core
without HTTP, for reference) and through OpenSSH ``ssh -R`` and ``ssh -L``
(private sshd, AES-GCM as in bench_tcp.py, see _paths.py), and through two plain Python
relays in a row (``_relay.py``: what two Python processes spend with no TLS and no tunnel work, a
reference for what a Python tunnel can reach here). Every path is up at once; each case runs in
rounds, every path once per round, each round starting with the next path and every other one in
reverse. Missing packages are
installed with apt-get when run as root. Every wrk run is bounded by ``--seconds``. Besides wrk's figures, each path's
own processes (the tunnel's server and client, or sshd and ssh) are read for the CPU they
spent per request during the run: where the time goes, and which side to profile.

    .venv/bin/python bench/bench_http.py            # full run, about 10 minutes
    .venv/bin/python bench/bench_http.py --quick    # smoke run

Targets (issue 17), in every case: HTTP tunnel req/s >= 1.0x ssh -L's and >= 0.9x the
TCP tunnel's; p99 <= 1.0x ssh -L's. (Issue 3's req/s against ssh -R is shown too.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path as FsPath
from types import SimpleNamespace


import _paths  # noqa: E402
from _report import SSH_CIPHER, StealMark, machine_line, steal_line  # noqa: E402
from _util import (LOOPBACK, BenchError, Parser, at_least, Procs, cpu_seconds, run_main, descendants, free_port, port_accepts,  # noqa: E402
                   raise_nofile, round_order, spawn, wait_until, which)

PATHS = ("direct", "tunnel", "tcp-tunnel", "py-relay", "ssh-R", "ssh-L")
#: tcp-tunnel: the same wrk load through ``inlets tcp`` (no HTTP parsing): the runtime core's ceiling,
#: so the table shows what the HTTP layer costs on top of it. py-relay: two plain Python relays in a row
#: (``_relay.py``: no TLS, no multiplexing, no HTTP), what two Python processes spend before any tunnel work.

#: (name, file, wrk connections or None for --connections): issue 17's cases.
CASES = (("1 KiB", "1k.bin", None), ("1 KiB x1000", "1k.bin", 1000), ("64 KiB", "64k.bin", None))


def ensure_packages(*tools: str) -> None:
    """Install Debian's wrk / nginx when missing (root only), else fail with what to run."""
    missing = [t for t in tools if which(t, "/usr/sbin") is None]
    if missing and os.geteuid() == 0 and which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
            subprocess.run(argv, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        missing = [t for t in tools if which(t, "/usr/sbin") is None]
    if missing:
        raise BenchError(f"missing {' '.join(missing)}: apt-get install {' '.join(missing)}")


@contextlib.contextmanager
def nginx(tmp: FsPath):
    """nginx, one worker, serving /1k.bin (1 KiB) and /64k.bin (64 KiB) on a free loopback port.

    ``multi_accept on``: by default nginx's worker accepts one connection per wake-up, and wrk's 1,000
    connections arriving at once gave every path that dials nginx per connection a tail of nginx's own
    (wrk straight to nginx, 5 runs of 5 s: p99 8.6-951 ms, the longest request 0.24-1.6 s; with it,
    8.1-11.0 ms and at most 16 ms; a larger listen backlog alone changed nothing)."""
    d = tmp / "nginx"
    (d / "www").mkdir(parents=True)
    (d / "www" / "1k.bin").write_bytes(os.urandom(1024))
    (d / "www" / "64k.bin").write_bytes(os.urandom(64 * 1024))
    for path in (tmp, d, d / "www"):
        os.chmod(path, 0o755)  # the worker runs as an unprivileged user
    port = free_port()
    temp = " ".join(f"{kind}_temp_path {d}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    {temp}
    keepalive_requests 1000000;
    server {{
        listen {LOOPBACK}:{port};
        root {d}/www;
        tcp_nodelay on;
    }}
}}
""")
    procs = Procs()
    try:
        proc = procs.add(spawn("nginx", [which("nginx", "/usr/sbin"), "-c", str(d / "nginx.conf"), "-p", str(d)], d))
        wait_until(lambda: port_accepts(port), 15, f"nginx on port {port}", proc=proc)
        yield port
    finally:
        procs.stop_all()


@contextlib.contextmanager
def tunnel(upstream_port: int, tmp: FsPath):
    """``inlets http server`` (auto TLS, token file) + ``inlets http client`` with nginx as the catch-all."""
    d = tmp / "tunnel"
    d.mkdir()
    token = d / "token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    os.chmod(token, 0o600)
    control, data = free_port(), free_port()
    inlets = _paths.inlets_command()
    procs = Procs()
    try:
        server = procs.add(spawn("inlets-http-server", inlets + [
            "http", "server", "--port", str(data), "--data-addr", LOOPBACK, "--control-addr", LOOPBACK,
            "--control-port", str(control), "--auto-tls", "--auto-tls-path", str(d / "tls"),
            "--auto-tls-san", LOOPBACK, "--token-file", str(token), "--log-level", "warning",
            # wrk's users all come from 127.0.0.1, as an office's behind one NAT: the README's advice for them. At
            # the default (64 connections per source before their first request head) wrk -c1000's burst of
            # connections, accepted before any of them is read, was cut past the 64th (1,000-2,300 read errors a run)
            "--max-pending-connections-per-source", "1024"], d))
        wait_until(lambda: port_accepts(control) and (d / "tls" / "ca.crt").exists(), 30, "inlets http server",
                   proc=server)
        client = procs.add(spawn("inlets-http-client", inlets + [
            "http", "client", "--url", f"wss://{LOOPBACK}:{control}", "--token-file", str(token),
            "--tls-ca", str(d / "tls" / "ca.crt"), "--upstream", f"http://{LOOPBACK}:{upstream_port}",
            "--log-level", "warning"], d))

        def served() -> bool:
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{LOOPBACK}:{data}/1k.bin"],
                                 capture_output=True, timeout=5)
            return out.stdout == b"200"

        wait_until(served, 30, "the tunnel to serve /1k.bin", proc=client)
        yield _paths.Path("tunnel", data, data, server_pids=lambda: descendants(server.popen.pid),
                          client_pids=lambda: descendants(client.popen.pid), procs=[server, client])
    finally:
        procs.stop_all()


@contextlib.contextmanager
def ssh(kind: str, upstream_port: int, sshd: _paths.Sshd):
    target = SimpleNamespace(sink_port=upstream_port, echo_port=upstream_port)
    with _paths.ssh_forward(kind, target, sshd, SSH_CIPHER) as path:  # type: ignore[arg-type]
        yield path


@dataclass
class Result:
    path: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    #: wrk's own words for them ("Socket errors: connect 0, read 1136, ..."; "Non-2xx or 3xx responses: 3")
    error_kinds: str = ""
    error: str = ""
    #: CPU microseconds per request of the path's own processes in the median run: the tunnel's server and
    #: client, or sshd and ssh (None for ``direct``, which has none).
    server_us: float | None = None
    client_us: float | None = None

    @property
    def path_us(self) -> float | None:
        return None if self.server_us is None or self.client_us is None else self.server_us + self.client_us


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(name: str, target: _paths.Path, args: argparse.Namespace, path: str, conns: int) -> Result:
    """One wrk run; the CPU the path's server and client sides spent meanwhile, per request."""
    argv = ["wrk", f"-t{args.threads}", f"-c{conns}", f"-d{args.seconds}s", "--latency", "--timeout", "10s",
            f"http://{LOOPBACK}:{target.sink_port}/{path}"]
    sides = (target.server_pids(), target.client_pids())
    before = [cpu_seconds(pids) for pids in sides]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 30)
    out = run.stdout
    spent = [cpu_seconds(pids) - start for pids, start in zip(sides, before)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    requests = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not (rps and p50 and p99 and requests):
        said = (out + run.stderr).strip() or "nothing"
        raise BenchError(f"wrk exited with {run.returncode} and printed no figures; it said: {said}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    count = int(requests.group(1))
    server_us = client_us = None  # direct: no processes of its own
    if sides[0] and count:
        server_us, client_us = (cpu * 1e6 / count for cpu in spent)
    kinds = "; ".join(line.strip() for line in out.splitlines() if line.strip().startswith(("Socket errors", "Non-2xx")))
    return Result(name, float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)),
                  errors + (int(non2xx.group(1)) if non2xx else 0), kinds, server_us=server_us, client_us=client_us)


def measure_case(targets: dict[str, _paths.Path], args: argparse.Namespace, path: str,
                 conns: int) -> dict[str, Result]:
    """Every path's runs of one case, in rounds: each round runs every path once, in ``round_order`` (as
    bench_tcp does), so a burst of other load on this shared machine (the hypervisor's steal) spreads
    over every column instead of halving whichever path ran during it. Each path's median run by req/s,
    with the errors of all its runs; a path whose run fails is left out of the later rounds."""
    names = list(targets)
    print(f"  warm-up, then {args.repeat} round(s) of {args.seconds}s wrk -c{conns} /{path} on "
          f"{', '.join(names)}, each round starting with the next, every other one reversed", file=sys.stderr)
    runs: dict[str, list[Result]] = {name: [] for name in names}
    failed: dict[str, Result] = {}
    for name, target in targets.items():
        try:
            subprocess.run(["wrk", "-t1", "-c4", "-d1s", f"http://{LOOPBACK}:{target.sink_port}/{path}"],
                           capture_output=True, timeout=30)
        except subprocess.TimeoutExpired as exc:
            failed[name] = Result(name, error=f"warm-up: {exc}\n{target.logs()}".rstrip())
    for round_no in range(args.repeat):
        for name in round_order(names, round_no):
            if name in failed:
                continue
            target = targets[name]
            try:
                runs[name].append(run_wrk(name, target, args, path, conns))
            except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                failed[name] = Result(name, error=f"{exc}\n{target.logs()}".rstrip())
    results: dict[str, Result] = {}
    for name in names:
        if name in failed:
            results[name] = failed[name]
            continue
        ordered = sorted(runs[name], key=lambda r: r.rps)
        median = ordered[len(ordered) // 2]
        median.errors = sum(r.errors for r in ordered)
        median.error_kinds = " | ".join(r.error_kinds for r in ordered if r.error_kinds)
        results[name] = median
    return results


def _x(a: Result | None, b: Result | None, attr: str) -> str:
    if a is None or b is None or a.error or b.error or not getattr(b, attr) or getattr(a, attr) is None:
        return "-"
    return f"{getattr(a, attr) / getattr(b, attr):.2f}x"


def table(case: str, conns: int, results: dict[str, Result], args: argparse.Namespace) -> str:
    """One case: every path's figures, and each path's ratios against ssh -L, the TCP tunnel, ssh -R and,
    for CPU per request, the plain Python relays."""
    ssh_r, ssh_l, tcp, relay = (results.get(name) for name in ("ssh-R", "ssh-L", "tcp-tunnel", "py-relay"))
    lines = [f"{case}: wrk -t{args.threads} -c{conns} -d{args.seconds}s, median of {args.repeat} interleaved; "
             f"ssh cipher {SSH_CIPHER}",
             f"{'path':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'req/s/ssh-L':>11} "
             f"{'req/s/tcp':>9} {'p99/ssh-L':>9} {'req/s/ssh-R':>11} {'CPU us/req srv+cli':>18} {'CPU/ssh-L':>9} "
             f"{'CPU/relay':>9}"]
    for name in PATHS:
        r = results.get(name)
        if r is None:
            continue
        if r.error:
            lines.append(f"{name:<10} FAILED: {r.error.splitlines()[0]}")
            continue
        cpu = "-" if r.path_us is None else f"{r.server_us:.0f} + {r.client_us:.0f}"
        lines.append(f"{name:<10} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6} "
                     f"{_x(r, ssh_l, 'rps'):>11} {_x(r, tcp, 'rps'):>9} {_x(r, ssh_l, 'p99_ms'):>9} "
                     f"{_x(r, ssh_r, 'rps'):>11} {cpu:>18} {_x(r, ssh_l, 'path_us'):>9} {_x(r, relay, 'path_us'):>9}")
    t = results.get("tunnel")
    if t and not t.error:
        verdicts = []
        for label, ref, attr, limit, higher in (("req/s >= 1.0x ssh -L", ssh_l, "rps", 1.0, True),
                                                ("req/s >= 0.9x tcp tunnel", tcp, "rps", 0.9, True),
                                                ("p99 <= 1.0x ssh -L", ssh_l, "p99_ms", 1.0, False)):
            if ref is None or ref.error or not getattr(ref, attr):
                verdicts.append(f"{label}: n/a")
                continue
            ratio = getattr(t, attr) / getattr(ref, attr)
            ok = ratio >= limit if higher else ratio <= limit
            verdicts.append(f"{label}: {'MET' if ok else 'NOT MET'} ({ratio:.2f}x)")
        lines.append("targets (issue 17): " + "; ".join(verdicts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s per path, one run")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument("--seconds", type=at_least(1), default=None, help="wrk duration per run (default 10)")
    ap.add_argument("--repeat", type=at_least(1), default=None, help="wrk runs per path, median reported (default 3)")
    ap.add_argument("--threads", type=at_least(1), default=2, help="wrk threads (default 2)")
    ap.add_argument("--connections", type=at_least(1), default=64,
                    help="wrk keep-alive connections in the 1 KiB and 64 KiB cases (default 64)")
    ap.add_argument("--cases", type=lambda v: [c.strip() for c in v.split(",")],
                    help=f"comma-separated subset of: {', '.join(c[0] for c in CASES)} (default: all)")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (2 if args.quick else 10)
    if args.cases and (unknown_cases := set(args.cases) - {c[0] for c in CASES}):
        ap.error(f"unknown case(s): {', '.join(sorted(unknown_cases))}")
    args.repeat = args.repeat or (1 if args.quick else 3)
    paths = [p for p in args.paths.split(",") if p]
    if unknown := set(paths) - set(PATHS):
        ap.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    if not paths:
        ap.error(f"--paths names no path; choose from {','.join(PATHS)}")
    raise_nofile()
    ensure_packages("wrk", "nginx", "curl")
    cases = [c for c in CASES if c[0] in args.cases] if args.cases else list(CASES)
    results: dict[str, dict[str, Result]] = {case: {} for case, _, _ in cases}
    started = time.monotonic()
    mark = StealMark()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmpdir:
        tmp = FsPath(tmpdir)
        with nginx(tmp) as upstream, contextlib.ExitStack() as stack:
            sshd: _paths.Sshd | None = None  # started with the first ssh path: a missing OpenSSH fails those only
            targets: dict[str, _paths.Path] = {}
            for name in paths:  # all up at once: an idle path costs nothing
                print(f"{name}: setting up", file=sys.stderr)
                try:
                    if name == "direct":
                        targets[name] = _paths.Path(name, upstream, upstream)
                    elif name == "tunnel":
                        targets[name] = stack.enter_context(tunnel(upstream, tmp))
                    elif name in ("tcp-tunnel", "py-relay"):
                        nginx_only = SimpleNamespace(sink_port=upstream, echo_port=upstream)
                        make = _paths.tunnel if name == "tcp-tunnel" else _paths.py_relay
                        targets[name] = stack.enter_context(make(nginx_only, tmp))  # type: ignore[arg-type]
                    else:
                        sshd = sshd or stack.enter_context(_paths.sshd(tmp))
                        targets[name] = stack.enter_context(ssh("-R" if name == "ssh-R" else "-L", upstream, sshd))
                except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                    for case, _, _ in cases:
                        results[case][name] = Result(name, error=str(exc))
            for case, file, conns in cases:
                print(f"{case}:", file=sys.stderr)
                results[case].update(measure_case(targets, args, file, conns or args.connections))
    print()
    print(machine_line())
    print(steal_line(mark))
    print(f"{'uvloop' if _has_uvloop() else 'asyncio'} in the tunnel; nginx 1 worker; {_ssh_version()}")
    for case, _, conns in cases:
        print()
        print(table(case, conns or args.connections, results[case], args))
    print(f"\n({time.monotonic() - started:.0f} s)")
    bad = [r for per_case in results.values() for r in per_case.values() if r.error or r.errors]
    for case, per_case in results.items():
        for r in per_case.values():
            if r.error:
                print(f"\n{r.path} failed:\n{r.error}", file=sys.stderr)
            elif r.errors:  # the exit status says 1: say why, in wrk's words per run
                print(f"\n{r.path} ({case}): {r.errors} errors: {r.error_kinds}", file=sys.stderr)
    return 1 if bad else 0


def _ssh_version() -> str:
    try:
        out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "no OpenSSH client"
    return (out.stderr or out.stdout).strip().split(",")[0]


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    run_main(main, "bench_http")
