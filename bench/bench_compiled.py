#!/usr/bin/env python3
"""What compiling the runtime's hot modules with mypyc would buy: one load, interpreted and compiled.

Issue 17 leaves a decision open: its HTTP, connection and client-memory targets ask the tunnel for
what two bare Python relays spend, or less (README, Benchmarks). One candidate keeps the code as it
is: mypyc, mypy's compiler (PyPI), turns the modules every request and message runs through
(``MODULES``) into C extensions built from this checkout's own source, and the same .py files stay
the pure-Python path. Nothing ships it: this script builds that copy in a temp dir and measures both
on this machine, so that the decision rests on figures.

    .venv/bin/pip install mypy                  # the compiler; no dependency of the runtime
    .venv/bin/python bench/bench_compiled.py    # about 6 minutes

wrk (-t2 -c64) against nginx's 1 KiB and 64 KiB files, as bench_http's cases, through the HTTP
tunnel and the TCP tunnel, each interpreted and compiled (PYTHONPATH puts the compiled copy first).
All four are up at once; each case runs in bench_http's rounds (every path once a round, the order
turning each round and every other round reversed), and the table has each path's median run:
requests per second, p99, and the CPU each side spent per request.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path as FsPath
from types import SimpleNamespace
from typing import Callable

import _paths
from _report import StealMark, machine_line, steal_line
from _util import LOOPBACK, BenchError, Parser, raise_nofile, run_main
from bench_http import Result, ensure_packages, measure_case, nginx, tunnel

ROOT = FsPath(__file__).resolve().parent.parent
#: What each request and tunnel message runs through, less what mypyc cannot compile as it stands. An
#: interpreted class cannot inherit from a compiled one: ``core/wsflow``'s classes are bases of the websockets
#: library's, and ``core/bridge``'s ``TcpBridge`` is the base of classes in ``server/tcp`` and
#: ``client/local_forward``, the latter holding an ``OSError`` subclass, which mypyc does not compile. (So
#: ``acme/https_front``'s subclass of ``FrontConnection`` would not load: --letsencrypt-domain is not measured.)
MODULES = ("http/parser", "http/request_reader", "http/response_reader", "http/exchange", "http/front", "http/leg", "http/messages",
           "http/write", "core/mux", "core/muxqueue", "core/muxframe", "core/session", "core/wsframe")
CASES = (("1 KiB", "1k.bin"), ("64 KiB", "64k.bin"))
MYPY_CONFIG = """[mypy]
namespace_packages = True
explicit_package_bases = True
follow_imports = silent
python_executable = {python}
"""


def find_mypyc() -> str:
    search = os.pathsep.join([str(FsPath(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("mypyc", path=search)
    if found is None:
        raise BenchError("mypyc not found: install it with `.venv/bin/pip install mypy`")
    return found


def build(tmp: FsPath) -> FsPath:
    """This checkout's runtime with ``MODULES`` compiled, under ``tmp/compiled`` (a PYTHONPATH entry)."""
    mypyc = find_mypyc()
    root = tmp / "compiled"
    shutil.copytree(ROOT / "runtime", root / "inlets_py" / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "mypy.ini").write_text(MYPY_CONFIG.format(python=sys.executable))
    files = [f"inlets_py/runtime/{name}.py" for name in MODULES]
    print(f"compiling {len(files)} modules with mypyc (about a minute) ...", file=sys.stderr)
    done = subprocess.run([mypyc, "--config-file", "mypy.ini", *files], cwd=root, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise BenchError(f"mypyc failed:\n{(done.stdout + done.stderr)[-3000:]}")
    check = subprocess.run([sys.executable, "-c", "import inlets_py.runtime.core.mux as m; print(m.__file__)"],
                           cwd=tmp, env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True,
                           timeout=60)
    if not check.stdout.strip().endswith(".so"):
        raise BenchError(f"the compiled modules do not load in {sys.executable} (mypy must be installed in the "
                         f"same Python): {check.stdout.strip() or check.stderr.strip()[-500:]}")
    return root


@contextlib.contextmanager
def python_path(entry: FsPath | None):
    """Processes started meanwhile import the runtime from ``entry`` first (None: as installed)."""
    before = os.environ.get("PYTHONPATH")
    if entry is not None:
        os.environ["PYTHONPATH"] = str(entry)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def tunnels(stack: contextlib.ExitStack, upstream: int, tmp: FsPath,
            variants: dict[str, tuple[list[str] | None, FsPath | None]]) -> dict[str, _paths.Path]:
    """An HTTP and a TCP tunnel to nginx per variant, named ``"http NAME"`` and ``"tcp NAME"``: each started
    with its command (None: this venv's ``inlets``) and its PYTHONPATH entry first (None: as installed)."""
    targets: dict[str, _paths.Path] = {}
    for kind in ("http", "tcp"):
        for name, (command, entry) in variants.items():
            home = tmp / f"{kind}-{name}"
            home.mkdir()
            _paths.INLETS_COMMAND = command
            try:
                with python_path(entry):
                    if kind == "http":
                        targets[f"{kind} {name}"] = stack.enter_context(tunnel(upstream, home))
                    else:
                        nginx_only = SimpleNamespace(sink_port=upstream, echo_port=upstream)
                        targets[f"{kind} {name}"] = stack.enter_context(_paths.tunnel(nginx_only, home))  # type: ignore[arg-type]
            finally:
                _paths.INLETS_COMMAND = None
    return targets


def measure_cases(targets: dict[str, _paths.Path], args: argparse.Namespace, warmup: int = 0) -> dict[str, dict[str, Result]]:
    """Each of ``CASES`` in bench_http's rounds (every path once a round, in ``_util.round_order``), after
    ``warmup`` seconds of untimed load per path; a path that failed or answered nothing ends the run."""
    results: dict[str, dict[str, Result]] = {}
    for case, file in CASES:
        print(f"{case}:" + (f" {warmup} s of untimed load on each path" if warmup else ""), file=sys.stderr)
        for name, target in targets.items() if warmup else ():
            try:
                subprocess.run(["wrk", "-t2", "-c64", f"-d{warmup}s", f"http://{LOOPBACK}:{target.sink_port}/{file}"],
                               capture_output=True, timeout=warmup + 30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{name}: the warm-up's wrk did not end within {warmup + 30} s\n{target.logs()}") from None
        results[case] = measure_case(targets, args, file, 64)
        for name, result in results[case].items():
            if result.error:
                raise BenchError(f"{name}: {result.error}")
            if not result.rps:
                raise BenchError(f"{name}: no request was answered\n{targets[name].logs()}")
    return results


def print_tables(results: dict[str, dict[str, Result]], table_of: Callable[[str, dict[str, Result]], str]) -> int:
    """Each case's table; the count of failed or non-2xx requests (any makes the figures incomparable)."""
    errors = 0
    for case, _ in CASES:
        errors += sum(r.errors for r in results[case].values())
        print()
        print(table_of(case, results[case]))
    return errors


def finish(errors: int, started: float) -> int:
    print(f"\n({time.monotonic() - started:.0f} s)")
    if errors:
        print(f"\n{errors} failed or non-2xx requests: the figures above are not comparable", file=sys.stderr)
    return 1 if errors else 0


def table(case: str, results: dict[str, Result]) -> str:
    rows = [("req/s", "rps", "{:,.0f}"), ("p99, ms", "p99_ms", "{:.2f}"),
            ("server CPU per request, us", "server_us", "{:.1f}"),
            ("client CPU per request, us", "client_us", "{:.1f}")]
    lines = [f"{case}, 64 connections  {'interpreted':>12} {'compiled':>10} {'compiled/interp.':>17}"]
    for kind in ("http", "tcp"):
        plain, compiled = results[f"{kind} interpreted"], results[f"{kind} compiled"]
        lines.append(f"{kind.upper()} tunnel")
        for label, attr, fmt in rows:
            a, b = getattr(plain, attr), getattr(compiled, attr)
            ratio = f"{b / a:.2f}x" if a and b else "-"
            shown = [fmt.format(v) if v else "-" for v in (a, b)]
            lines.append(f"  {label:<29} {shown[0]:>12} {shown[1]:>10} {ratio:>17}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every path and case (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default 5)")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 50 or not 1 <= args.seconds <= 60:
        ap.error("--rounds is 1 to 50, --seconds 1 to 60")
    args.threads, args.repeat = 2, args.rounds
    raise_nofile()
    ensure_packages("wrk", "nginx", "curl")
    started = time.monotonic()
    mark = StealMark()
    with tempfile.TemporaryDirectory(prefix="bench-compiled-") as tmpdir:
        tmp = FsPath(tmpdir)
        compiled = build(tmp)
        with nginx(tmp) as upstream, contextlib.ExitStack() as stack:
            targets = tunnels(stack, upstream, tmp, {"interpreted": (None, None), "compiled": (None, compiled)})
            results = measure_cases(targets, args)
    print()
    print(machine_line())
    print(steal_line(mark))
    version = subprocess.run([find_mypyc(), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"compiled with {version}; "
          f"{args.rounds} rounds of wrk -t2 -c64 -d{args.seconds}s, each path's median run")
    return finish(print_tables(results, table), started)


if __name__ == "__main__":
    run_main(main, "bench_compiled")
