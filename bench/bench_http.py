#!/usr/bin/env python3
"""HTTP tunnel benchmark: wrk against nginx serving 1 KiB, direct vs this tunnel vs ssh -R / -L.

One run on this machine: nginx (Debian package, own config in a temp dir, high
loopback port) serves a 1 KiB file; wrk (Debian package) measures requests/s and
p50/p99 latency with keep-alive connections, straight to nginx, through
``inlets http server/client`` (TLS, token), through ``inlets tcp`` (the core
without HTTP, for reference) and through OpenSSH ``ssh -R`` and ``ssh -L``
(private sshd, see _paths.py). Missing packages are installed with
apt-get when run as root. Every wrk run is bounded by ``--seconds``.

    .venv/bin/python bench/bench_http.py            # full run, about a minute
    .venv/bin/python bench/bench_http.py --quick    # smoke run

Targets (issue 3): tunnel req/s >= 3x ssh -R's; tunnel p99 <= 2x ssh -L's.
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

sys.path.insert(0, str(FsPath(__file__).resolve().parent))

import _paths  # noqa: E402
from _util import LOOPBACK, BenchError, Procs, free_port, port_accepts, raise_nofile, spawn, wait_until, which  # noqa: E402

PATHS = ("direct", "tunnel", "tcp-tunnel", "ssh-R", "ssh-L")
#: tcp-tunnel: the same wrk load through ``inlets tcp`` (no HTTP parsing): the runtime core's ceiling,
#: so the table shows what the HTTP layer costs on top of it.


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
    """nginx, one worker, serving /1k.bin (1 KiB) on a free loopback port."""
    d = tmp / "nginx"
    (d / "www").mkdir(parents=True)
    (d / "www" / "1k.bin").write_bytes(os.urandom(1024))
    for path in (tmp, d, d / "www"):
        os.chmod(path, 0o755)  # the worker runs as an unprivileged user
    port = free_port()
    temp = " ".join(f"{kind}_temp_path {d}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
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
            "--auto-tls-san", LOOPBACK, "--token-file", str(token), "--log-level", "warning"], d))
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
        yield data
    finally:
        procs.stop_all()


@contextlib.contextmanager
def ssh(kind: str, upstream_port: int, sshd: _paths.Sshd):
    target = SimpleNamespace(sink_port=upstream_port, echo_port=upstream_port)
    with _paths.ssh_forward(kind, target, sshd) as path:  # type: ignore[arg-type]
        yield path.sink_port


@dataclass
class Result:
    path: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    error: str = ""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, args: argparse.Namespace) -> tuple[float, float, float, int]:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
            f"http://{LOOPBACK}:{port}/1k.bin"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise BenchError(f"could not parse wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors + (int(non2xx.group(1)) if non2xx else 0)


def measure(name: str, port: int, args: argparse.Namespace) -> Result:
    print(f"  {name}: warm-up then {args.repeat} x {args.seconds}s wrk ...", file=sys.stderr)
    subprocess.run(["wrk", "-t1", "-c4", "-d1s", f"http://{LOOPBACK}:{port}/1k.bin"], capture_output=True, timeout=30)
    runs = sorted((run_wrk(port, args) for _ in range(args.repeat)), key=lambda r: r[0])
    rps, p50, p99, _ = runs[len(runs) // 2]  # the median run by req/s
    return Result(name, rps, p50, p99, sum(r[3] for r in runs))


def table(results: dict[str, Result], args: argparse.Namespace) -> str:
    ssh_r, ssh_l = results.get("ssh-R"), results.get("ssh-L")
    lines = [f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, nginx 1 KiB file, median of {args.repeat}",
             f"{'path':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'req/s vs ssh -R':>16} {'p99 vs ssh -L':>14}"]
    for name in PATHS:
        r = results.get(name)
        if r is None:
            continue
        if r.error:
            lines.append(f"{name:<10} FAILED: {r.error.splitlines()[0]}")
            continue
        vs_r = f"{r.rps / ssh_r.rps:.2f}x" if ssh_r and ssh_r.rps else "-"
        vs_l = f"{r.p99_ms / ssh_l.p99_ms:.2f}x" if ssh_l and ssh_l.p99_ms else "-"
        lines.append(f"{name:<10} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6} {vs_r:>16} {vs_l:>14}")
    t = results.get("tunnel")
    if t and not t.error and ssh_r and ssh_l and not (ssh_r.error or ssh_l.error):
        ok_rps = t.rps >= 3 * ssh_r.rps
        ok_p99 = t.p99_ms <= 2 * ssh_l.p99_ms
        lines.append(f"target req/s >= 3x ssh -R: {'MET' if ok_rps else 'NOT MET'} ({t.rps / ssh_r.rps:.2f}x); "
                     f"target p99 <= 2x ssh -L: {'MET' if ok_p99 else 'NOT MET'} ({t.p99_ms / ssh_l.p99_ms:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s per path, one run")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument("--seconds", type=int, default=None, help="wrk duration per run (default 10)")
    ap.add_argument("--repeat", type=int, default=None, help="wrk runs per path, median reported (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (default 64)")
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (2 if args.quick else 10)
    args.repeat = args.repeat or (1 if args.quick else 3)
    paths = [p for p in args.paths.split(",") if p]
    if unknown := set(paths) - set(PATHS):
        ap.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    raise_nofile()
    ensure_packages("wrk", "nginx", "curl")
    results: dict[str, Result] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmpdir:
        tmp = FsPath(tmpdir)
        with nginx(tmp) as upstream, contextlib.ExitStack() as stack:
            sshd = stack.enter_context(_paths.sshd(tmp)) if {"ssh-R", "ssh-L"} & set(paths) else None
            for name in paths:
                print(f"{name}:", file=sys.stderr)
                try:
                    if name == "direct":
                        results[name] = measure(name, upstream, args)
                    elif name == "tunnel":
                        with tunnel(upstream, tmp) as port:
                            results[name] = measure(name, port, args)
                    elif name == "tcp-tunnel":
                        target = SimpleNamespace(sink_port=upstream, echo_port=upstream)
                        with _paths.tunnel(target, tmp) as path:  # type: ignore[arg-type]
                            results[name] = measure(name, path.sink_port, args)
                    else:
                        with ssh("-R" if name == "ssh-R" else "-L", upstream, sshd) as port:  # type: ignore[arg-type]
                            results[name] = measure(name, port, args)
                except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                    results[name] = Result(name, error=str(exc))
    print(table(results, args))
    print(f"({time.monotonic() - started:.0f} s; {os.cpu_count()} CPUs; "
          f"{'uvloop' if _has_uvloop() else 'asyncio'} in the tunnel)")
    for r in results.values():
        if r.error:
            print(f"\n{r.path} failed:\n{r.error}", file=sys.stderr)
    return 1 if any(r.error or r.errors for r in results.values()) else 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
