#!/usr/bin/env python3
"""Instructions the tunnel executes per request and per connection, this checkout against a git ref.

Wall-clock and CPU-time benches on a shared 2-core machine move by 10-15% from run to run,
so a 5% change cannot be seen in them. Instruction counts can: each side of the tunnel runs
under ``valgrind --tool=callgrind``, whose counters are zeroed after a warm-up and dumped
after a fixed number of requests, so the figure (user-space instructions, the Python work
that dominates this runtime) repeats to within a fraction of a percent. Kernel work (system
calls, TCP) is not counted: read it with ``bench_tcp.py`` / ``bench_http.py``.

    .venv/bin/python bench/bench_instructions.py --base main      # about 5 minutes
    .venv/bin/python bench/bench_instructions.py --base HEAD~3 --requests 500
    .venv/bin/python bench/bench_instructions.py --connections 1000   # does the work grow with connections?

The base's ``runtime/`` comes from ``git archive REF`` and runs from a temporary directory
(``PYTHONPATH``), this checkout's from its own folder; both under this checkout's virtualenv.
Each path runs once per side: ``inlets http server/client`` serving keep-alive requests for
nginx's 1 KiB file, one at a time, in turn over 4 kept-alive connections (``--connections``),
and ``inlets tcp server/client`` carrying the same requests, then the same number of
one-request connections (connect, request, close).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import LOOPBACK, BenchError, Parser, connect, free_port, port_accepts, raise_nofile, run_main, which  # noqa: E402
from bench_http import nginx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 200


def runtime_of(ref: str | None, tmp: Path) -> Path:
    """A directory to put on PYTHONPATH whose ``inlets_py.runtime`` is ``ref``'s (None: this checkout's)."""
    home = tmp / (ref or "checkout").replace("/", "_") / "inlets_py"
    home.mkdir(parents=True)
    if ref is None:
        (home / "runtime").symlink_to(ROOT / "runtime")
        return home.parent
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "runtime"], capture_output=True)
    if archive.returncode != 0:
        raise BenchError(f"git archive {ref}: {archive.stderr.decode().strip()}")
    (tmp / "base.tar").write_bytes(archive.stdout)
    with tarfile.open(tmp / "base.tar") as tar:
        tar.extractall(home, filter="data")
    return home.parent


def get(sock: socket.socket) -> None:
    """One GET of /1k.bin, read to the end of its body."""
    sock.sendall(b"GET /1k.bin HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or _closed()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise BenchError(f"answer {head[:60]!r}")
    length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536) or _closed()


def _closed() -> bytes:
    raise BenchError("connection closed mid-answer")


class Callgrind:
    """The tunnel's two processes, each under callgrind; ``count`` gives each one's instructions for a workload."""

    def __init__(self, mode: str, pythonpath: Path, upstream: int, tmp: Path) -> None:
        token = tmp / "token"
        token.write_text(secrets.token_urlsafe(32) + "\n")
        token.chmod(0o600)
        self.tmp, self.control, self.data = tmp, free_port(), free_port()
        tls = tmp / "tls"
        inlets = [sys.executable, "-m", "inlets_py.runtime", mode]
        common = ["--token-file", str(token), "--log-level", "warning"]
        server = inlets + ["server", "--control-addr", LOOPBACK, "--control-port", str(self.control),
                           "--data-addr", LOOPBACK, "--auto-tls", "--auto-tls-path", str(tls), "--auto-tls-san", LOOPBACK]
        server += ["--port", str(self.data)] if mode == "http" else []
        upstream_flag = f"http://{LOOPBACK}:{upstream}" if mode == "http" else f"{self.data}={LOOPBACK}:{upstream}"
        client = inlets + ["client", "--url", f"wss://{LOOPBACK}:{self.control}", "--tls-ca", str(tls / "ca.crt"),
                           "--upstream", upstream_flag]
        env = dict(os.environ, PYTHONPATH=str(pythonpath))
        self.procs: dict[str, subprocess.Popen] = {}
        try:
            for side, argv in (("server", server + common), ("client", client + common)):
                valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/{side}.%p", "--dump-instr=no"]
                with open(tmp / f"{side}.log", "wb") as log:
                    self.procs[side] = subprocess.Popen(valgrind + argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                                                        stderr=log)
                if side == "server":
                    self._wait(lambda: (tls / "ca.crt").exists() and port_accepts(self.control), "the tunnel server")
            self._wait(self._serves, "the tunnel to answer")
        except BaseException:  # ``measure`` closes only a started tunnel: a Ctrl-C or failure here left both running
            for proc in self.procs.values():
                proc.kill()
                proc.wait(10)
            raise

    def _serves(self) -> bool:
        try:
            with connect(self.data, timeout=30) as sock:
                get(sock)
            return True
        except (OSError, BenchError):
            return False

    def _wait(self, ready, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout  # the interpreter starts ~50x slower under valgrind
        while not ready():
            for side, proc in self.procs.items():
                if proc.poll() is not None:
                    raise BenchError(f"inlets {side} exited: {(self.tmp / f'{side}.log').read_text()[-400:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"{what} not ready within {timeout:.0f}s")
            time.sleep(0.3)

    def count(self, workload) -> dict[str, int]:
        """Instructions each side executed during ``workload()``."""
        for proc in self.procs.values():
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        workload()
        counts = {}
        for side, proc in self.procs.items():
            before = set(self.tmp.glob(f"{side}.{proc.pid}*"))
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            dump = self._new_dump(side, proc.pid, before)
            counts[side] = int(re.search(r"^(?:summary|totals):\s+(\d+)", dump.read_text(), re.M).group(1))  # type: ignore[union-attr]
        return counts

    def _new_dump(self, side: str, pid: int, before: set[Path]) -> Path:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = set(self.tmp.glob(f"{side}.{pid}*")) - before
            if new:
                time.sleep(0.2)  # written whole before the next look
                return max(new, key=lambda p: p.stat().st_mtime)
            time.sleep(0.1)
        raise BenchError(f"callgrind wrote no dump for the {side}")

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def measure(mode: str, pythonpath: Path, upstream: int, tmp: Path, requests: int, connections: int) -> dict[str, float]:
    """Instructions per request (and, for tcp, per connection) on each side."""
    run = Callgrind(mode, pythonpath, upstream, tmp)
    try:
        socks = [connect(run.data, timeout=60) for _ in range(connections)]

        def keep_alive() -> None:
            for i in range(requests):
                get(socks[i % connections])

        def one_per_connection() -> None:
            for _ in range(requests):
                with connect(run.data, timeout=60) as sock:
                    get(sock)

        for i in range(max(WARMUP, connections)):  # every connection has carried a request before the count
            get(socks[i % connections])
        results = {f"{mode} request, {side}": n / requests for side, n in run.count(keep_alive).items()}
        if mode == "tcp":
            one_per_connection()  # warm-up of the connection path
            results.update({f"tcp connection, {side}": n / requests for side, n in run.count(one_per_connection).items()})
        for sock in socks:
            sock.close()
        return results
    finally:
        run.close()


def main() -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="git ref to compare with (default HEAD: uncommitted changes)")
    ap.add_argument("--requests", type=int, default=1000, help="requests (and connections) counted per path")
    ap.add_argument("--connections", type=int, default=4,
                    help="kept-alive connections the counted requests take turns on (default 4)")
    args = ap.parse_args()
    if args.connections < 1 or args.requests < 1:
        ap.error("--connections and --requests must be at least 1")
    raise_nofile()  # this process holds --connections sockets; the tunnel's processes inherit the limit
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if which(tool, "/usr/sbin") is None:
            print(f"bench_instructions: {tool} not found: apt-get install valgrind nginx", file=sys.stderr)
            return 2
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with nginx(tmp) as upstream:
            for label, ref in (("base", args.base), ("this", None)):
                pythonpath = runtime_of(ref, tmp / "src")
                for mode in ("http", "tcp"):
                    print(f"{label}: {mode} ...", file=sys.stderr, flush=True)
                    work = tmp / f"{label}-{mode}"
                    work.mkdir()
                    for case, value in measure(mode, pythonpath, upstream, work, args.requests, args.connections).items():
                        rows.setdefault(case, {})[label] = value
    print(f"instructions (user space, callgrind) per request / connection; base {args.base}, "
          f"{args.requests} counted after {max(WARMUP, args.connections)} warm-up over {args.connections} kept-alive "
          f"connections; 1 KiB answers from nginx")
    print(f"{'path, side':28} {'base':>12} {'this':>12} {'ratio':>7}")
    for case, values in rows.items():
        print(f"{case:28} {values['base']:12,.0f} {values['this']:12,.0f} {values['this'] / values['base']:7.3f}")
    return 0


if __name__ == "__main__":
    run_main(main, "bench_instructions")
