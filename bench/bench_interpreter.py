#!/usr/bin/env python3
"""The same runtime on other Pythons (a newer CPython, PyPy), against this venv's: one load, all at once.

Issue 17's unmet targets leave a decision open: a runtime other than CPython 3.11 for the hot paths, or
targets stated against two bare Python relays (README, Benchmarks). ``bench_compiled`` measures one
candidate (the hot modules compiled with mypyc); this one measures the others without changing a line:
the unchanged source (``PYTHONPATH``) run by each interpreter given with ``--python``.

    .venv/bin/python bench/bench_interpreter.py --python "pypy=/opt/pypy/bin/python"
    .venv/bin/python bench/bench_interpreter.py --python "3.13=chroot /srv/trixie /opt/py313/bin/python" \\
        --python "pypy=chroot /srv/trixie /opt/pypy/bin/python"

Each ``--python NAME=COMMAND`` is a command that starts a Python with the runtime's dependencies installed
(websockets, cryptography, typer, httptools, prometheus-client, python-socks; uvloop if it has one). A
command may enter a chroot, as long as this checkout and /tmp are at the same paths inside it
(bench/README.md says how the figures there were made). For every interpreter, this venv's included, an
HTTP tunnel and a TCP tunnel come up at once; wrk (-t2 -c64) then asks nginx's 1 KiB and 64 KiB files
through each in bench_http's rounds, after a warm-up long enough for PyPy's JIT (``--warmup``). Rows:
requests per second, p99, each side's CPU per request, and each side's idle RSS; ratios are against this
venv's Python.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path as FsPath

from _report import StealMark, machine_line, steal_line
from _util import BenchError, Parser, raise_nofile, rss_mib, run_main
from bench_compiled import finish, measure_cases, print_tables, python_path, tunnels
from bench_http import Result, ensure_packages, nginx

ROOT = FsPath(__file__).resolve().parent.parent
BASE = "venv"
#: What each interpreter says of itself. The imports prove that the runtime and its dependencies load, the
#: compiled ones included (a cryptography wheel built for a newer PyPy imports, then fails at its first use).
PROBE = """import platform, ssl, sys
import inlets_py.runtime.http.front, inlets_py.runtime.client.http_upstreams
import cryptography.hazmat.bindings._rust, httptools.parser.parser
try:
    import uvloop; loop = "uvloop " + uvloop.__version__
except ImportError:
    loop = "asyncio"
print(platform.python_implementation(), sys.version.split()[0], loop, ssl.OPENSSL_VERSION, sep="; ")
"""


def interpreter(spec: str) -> tuple[str, list[str]]:
    """``NAME=COMMAND`` -> (name, argv)."""
    name, sep, command = spec.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9._-]{1,16}", name) or not command.strip():
        raise argparse.ArgumentTypeError(f"{spec!r}: give NAME=COMMAND, NAME of 1-16 letters, digits, '.', '_', '-'")
    if name == BASE:
        raise argparse.ArgumentTypeError(f"{name!r} names this venv's Python: choose another name")
    return name, shlex.split(command)


def describe(name: str, argv: list[str]) -> str:
    """One line on the interpreter; BenchError when it cannot run the runtime."""
    try:
        done = subprocess.run(argv + ["-c", PROBE], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise BenchError(f"{name}: {shlex.join(argv)} did not run: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name}: {shlex.join(argv)} did not load the runtime within 120 s") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["nothing"])[-1]
        raise BenchError(f"{name}: the runtime does not load under {shlex.join(argv)}: {said}")
    return done.stdout.strip()


def rss_line(kind: str, names: list[str], idle: dict[str, tuple[float, float]]) -> str:
    cells = [f"{idle[f'{kind} {n}'][0]:.1f} / {idle[f'{kind} {n}'][1]:.1f}" for n in names]
    return f"  {'server / client RSS idle, MiB':<29} " + " ".join(f"{c:>14}" for c in cells)


def table(case: str, names: list[str], results: dict[str, Result]) -> str:
    rows = [("req/s", "rps", "{:,.0f}"), ("p99, ms", "p99_ms", "{:.2f}"),
            ("server CPU per request, us", "server_us", "{:.1f}"),
            ("client CPU per request, us", "client_us", "{:.1f}")]
    others = [n for n in names if n != BASE]
    head = f"{case}, 64 connections".ljust(31) + " ".join(f"{n:>14}" for n in names)
    lines = [head + "".join(f" {n + '/' + BASE:>14}" for n in others)]
    for kind in ("http", "tcp"):
        lines.append(f"{kind.upper()} tunnel")
        for label, attr, fmt in rows:
            values = {n: getattr(results[f"{kind} {n}"], attr) for n in names}
            shown = [fmt.format(values[n]) if values[n] else "-" for n in names]
            ratios = [f"{values[n] / values[BASE]:.2f}x" if values[n] and values[BASE] else "-" for n in others]
            lines.append(f"  {label:<29} " + " ".join(f"{v:>14}" for v in shown) + "".join(f" {r:>14}" for r in ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", type=interpreter, action="append", required=True, metavar="NAME=COMMAND",
                    help="another Python to run the tunnel's processes (repeatable)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every path and case (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default 5)")
    ap.add_argument("--warmup", type=int, default=10, help="seconds of untimed load per path and case first (default 10)")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 1 <= args.seconds <= 60 or not 0 <= args.warmup <= 120:
        ap.error("--rounds is 1 to 50, --seconds 1 to 60, --warmup 0 to 120")
    commands = {BASE: [sys.executable]} | dict(args.python)
    if len(commands) != len(args.python) + 1:
        ap.error("each --python needs a NAME of its own")
    args.threads, args.repeat = 2, args.rounds
    raise_nofile()
    ensure_packages("wrk", "nginx", "curl")
    started = time.monotonic()
    mark = StealMark()
    idle: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-interpreter-") as tmpdir:
        tmp = FsPath(tmpdir)
        source = tmp / "src"  # PYTHONPATH: this checkout's runtime as ``inlets_py.runtime``
        (source / "inlets_py").mkdir(parents=True)
        (source / "inlets_py" / "runtime").symlink_to(ROOT / "runtime")
        with python_path(source):
            versions = {name: describe(name, command) for name, command in commands.items()}
        with nginx(tmp) as upstream, contextlib.ExitStack() as stack:
            variants = {name: (command + ["-m", "inlets_py.runtime"], source) for name, command in commands.items()}
            targets = tunnels(stack, upstream, tmp, variants)
            for name, target in targets.items():  # right after set-up: each has answered one request
                idle[name] = (rss_mib(target.server_pids()), rss_mib(target.client_pids()))
            results = measure_cases(targets, args, args.warmup)
    names = list(commands)
    print()
    print(machine_line())
    print(steal_line(mark))
    for name in names:
        print(f"{name}: {versions[name]}  ({shlex.join(commands[name])})")
    print(f"{args.rounds} rounds of wrk -t2 -c64 -d{args.seconds}s after {args.warmup} s of warm-up, each path's median run")
    errors = print_tables(results, lambda case, by_path: table(case, names, by_path))
    print()
    print("idle, before any load".ljust(31) + " ".join(f"{n:>14}" for n in names))
    for kind in ("http", "tcp"):
        print(f"{kind.upper()} tunnel")
        print(rss_line(kind, names, idle))
    return finish(errors, started)


if __name__ == "__main__":
    run_main(main, "bench_interpreter")
