"""Soak: mixed TCP and HTTP load through real tunnel processes for a long while.

    .venv/bin/python bench/soak.py [--minutes 30] [--reconnect-every 180]

Runs a TCP tunnel (echo upstream) and an HTTP tunnel (a small HTTP upstream) on
loopback, drives both with bounded load loops, and every --reconnect-every seconds
makes the clients reconnect (alternately SIGHUP: make-before-break, and SIGKILL plus
restart: a crash). Prints resident memory and open file descriptors of every tunnel
process at the start (after warm-up) and at the end, and the request counts and
failures per phase. Exits 1, saying which, when a phase after a SIGHUP had failed
requests (make-before-break promises none). Loopback only; every loop is bounded by --minutes.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import BenchError, Parser, Proc, Procs, at_least, free_ports, nodelay, port_accepts, run_main  # noqa: E402

from inlets_py.runtime.core.certs import ensure_auto_tls  # noqa: E402

INLETS = [sys.executable, "-c", "from inlets_py.runtime.cli.main import main; main()"]


def proc_stats(pid: int) -> tuple[float, int]:
    """(RSS MiB, open fds) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(port):
            return
        time.sleep(0.05)
    raise BenchError(f"port {port} never opened")


class Echo(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(nodelay(conn),), daemon=True).start()

    @staticmethod
    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms a request)

    def do_GET(self) -> None:  # noqa: N802
        body = b"x" * 1024
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Web(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a killed client resets upstream sockets
        pass


class Load(threading.Thread):
    """One bounded load loop: ``kind`` is tcp (echo 4 KiB) or http (GET, keep-alive per 20)."""

    def __init__(self, kind: str, port: int, until: float) -> None:
        super().__init__(daemon=True)
        self.kind, self.port, self.until = kind, port, until
        self.ok = 0
        self.failed = 0
        self.last_error = ""

    def run(self) -> None:
        payload = os.urandom(4096)
        while time.monotonic() < self.until:
            try:
                if self.kind == "tcp":
                    with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        sock.sendall(payload)
                        sock.shutdown(socket.SHUT_WR)
                        got = b""
                        while chunk := sock.recv(65536):
                            got += chunk
                        if got != payload:
                            raise OSError(f"echo mismatch ({len(got)} bytes)")
                    self.ok += 1
                else:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        reader = sock.makefile("rb")
                        for _ in range(20):
                            sock.sendall(b"GET / HTTP/1.1\r\nHost: soak.test\r\n\r\n")
                            status = reader.readline()
                            length = 0
                            while (line := reader.readline()) not in (b"\r\n", b""):
                                if line.lower().startswith(b"content-length:"):
                                    length = int(line.split(b":")[1])
                            reader.read(length)
                            if not status.startswith(b"HTTP/1.1 200"):
                                raise OSError(f"status {status!r}")
                            self.ok += 1
            except OSError as exc:
                self.failed += 1
                self.last_error = str(exc)
                time.sleep(0.05)


def main() -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=at_least(0, float, above=True), default=30.0)
    parser.add_argument("--reconnect-every", type=at_least(0, float, above=True), default=180.0, help="seconds")
    parser.add_argument("--workers", type=at_least(1), default=2, help="load threads per protocol")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="inlets-soak-"))
    files = ensure_auto_tls(tmp / "tls", ["127.0.0.1"])
    token = tmp / "token"
    token.write_text(os.urandom(16).hex() + "\n")
    token.chmod(0o600)
    echo = Echo()
    echo.start()
    web = Web(("127.0.0.1", 0), Hello)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    tcp_control, http_control, tcp_public, http_public = free_ports(4)
    common = ["--control-addr", "127.0.0.1", "--data-addr", "127.0.0.1", "--tls-cert", str(files.cert),
              "--tls-key", str(files.key), "--token-file", str(token)]
    logs = {name: open(tmp / f"{name}.log", "w") for name in ("tcp-server", "http-server", "tcp-client", "http-client")}
    every = Procs()  # all started, restarted clients too: stopped whatever happens (a Ctrl-C left all four running)

    def spawn(name: str, argv: list[str]) -> subprocess.Popen:
        popen = subprocess.Popen([*INLETS, *argv], stdout=logs[name], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return every.add(Proc(name, popen, tmp / f"{name}.log")).popen

    client_argv = {
        "tcp-client": ["tcp", "client", "--url", f"wss://127.0.0.1:{tcp_control}", "--token-file", str(token),
                       "--tls-ca", str(files.ca_cert), "--upstream", f"{tcp_public}=127.0.0.1:{echo.port}"],
        "http-client": ["http", "client", "--url", f"wss://127.0.0.1:{http_control}", "--token-file", str(token),
                        "--tls-ca", str(files.ca_cert), "--upstream", f"http://127.0.0.1:{web.server_address[1]}"],
    }
    try:
        procs = {
            "tcp-server": spawn("tcp-server", ["tcp", "server", "--control-port", str(tcp_control), *common]),
            "http-server": spawn("http-server", ["http", "server", "--control-port", str(http_control),
                                                 "--port", str(http_public), *common]),
        }
        wait_port(tcp_control)
        wait_port(http_control)
        for name, argv in client_argv.items():
            procs[name] = spawn(name, argv)
        wait_port(tcp_public)
        wait_port(http_public)
        time.sleep(2)
        start = {name: proc_stats(p.pid) for name, p in procs.items()}
        started = time.monotonic()
        until = started + args.minutes * 60
        loads = [Load(kind, port, until) for kind, port in (("tcp", tcp_public), ("http", http_public))
                 for _ in range(args.workers)]
        for load in loads:
            load.start()
        print(f"soak: {args.minutes} min, reconnect every {args.reconnect_every:.0f}s, logs in {tmp}", flush=True)
        reconnects = 0
        next_reconnect = started + args.reconnect_every
        seen_ok, seen_failed = 0, 0
        broken: list[str] = []  # the SIGHUP phases with failed requests: the promise soak checks

        def phase_end(then: str) -> None:
            """Print the phase that ends now (it began with the previous event); a SIGHUP one with failures is broken."""
            nonlocal seen_ok, seen_failed
            ok, failed = sum(l.ok for l in loads), sum(l.failed for l in loads)
            before = "start" if reconnects == 0 else ("SIGHUP" if reconnects % 2 else "SIGKILL+restart")
            print(f"  t={time.monotonic() - started:6.0f}s since the last event ({before}): "
                  f"{ok - seen_ok} ok, {failed - seen_failed} failed; {then}", flush=True)
            if before == "SIGHUP" and failed > seen_failed:
                broken.append(f"{failed - seen_failed} of {ok - seen_ok + failed - seen_failed} after reconnect #{reconnects}")
            seen_ok, seen_failed = ok, failed

        while time.monotonic() < until:
            time.sleep(1)
            if time.monotonic() >= next_reconnect and next_reconnect + 30 < until:  # none just before the end
                action = "SIGHUP" if reconnects % 2 == 0 else "SIGKILL+restart"
                phase_end(f"now reconnect #{reconnects + 1} ({action})")
                reconnects += 1
                for name in client_argv:
                    if action == "SIGHUP":
                        procs[name].send_signal(signal.SIGHUP)  # make-before-break
                    else:
                        procs[name].kill()  # a crash, and a systemd-like restart
                        procs[name].wait(10)
                        procs[name] = spawn(name, client_argv[name])
                next_reconnect += args.reconnect_every
        for load in loads:
            load.join(30)
        phase_end("end")  # the last phase: after a SIGHUP, it is held to the same promise
        end = {name: proc_stats(p.pid) for name, p in procs.items()}
        print(f"\n{'process':12s} {'RSS start':>10s} {'RSS end':>10s} {'fds start':>10s} {'fds end':>8s}")
        for name in procs:
            print(f"{name:12s} {start[name][0]:9.1f}M {end[name][0]:9.1f}M {start[name][1]:10d} {end[name][1]:8d}"
                  + ("   (restarted)" if name.endswith("client") and reconnects > 1 else ""))
        for kind in ("tcp", "http"):
            mine = [l for l in loads if l.kind == kind]
            errors = {l.last_error for l in mine if l.last_error}
            print(f"{kind}: {sum(l.ok for l in mine)} ok, {sum(l.failed for l in mine)} failed"
                  + (f" (last: {'; '.join(sorted(errors))[:200]})" if errors else ""))
        print(f"reconnects: {reconnects}")
    finally:
        every.stop_all()
        for fh in logs.values():
            fh.close()
    if broken:
        print(f"soak: requests failed after a SIGHUP reconnect, where make-before-break should fail none: "
              f"{'; '.join(broken)} (logs in {tmp})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, "soak")
