"""The FAQ's high availability with a real balancer (issue 18): HAProxy in front of two inlets servers'
data planes, two clients each connected to both servers, under a bounded request loop.

TCP mode: HAProxy health-checks each server's data port (open only while a client serves it) and
sends the PROXY protocol (the servers run ``--lb-proxy-protocol v1``). HTTP mode: HAProxy's HTTP
checks ask for the tunnelled site through each server. We kill -9 a server (only requests in flight
may fail; none once HAProxy marks it down), restart it (traffic returns), and kill a client (the
other serves everything). The counts and times are printed and kept in $INLETS_HA_REPORT when set.
Loopback only; every loop bounded in count and time.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from helpers.process import spawn, stop_all, terminate
from helpers.tunnel import TlsFiles, free_port

DATA_ADDRS = ("127.0.0.2", "127.0.0.3")
FRONT = "127.0.0.4"
CHECK_MS = 200  # HAProxy's check interval; fall 2: a dead server is out after about 0.4 s
WORKERS = 4
MAX_REQUESTS = 50_000  # bounds the loop in count; MAX_SECONDS in time (a slow restart must not end it early)
MAX_SECONDS = 90
HOST = "app.example.test"

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/install-test-tools.sh "
                                "installs Debian's haproxy)")


class _Named(http.server.BaseHTTPRequestHandler):
    """An upstream that says which client's upstream it is."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        body = self.server.label.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Quiet(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # TCP-mode health checks open a stream to the upstream and close it at once: resets are expected


@pytest.fixture
def upstreams() -> Iterator[dict[str, int]]:
    """One upstream per client: ``u1`` and ``u2``."""
    servers = {}
    for label in ("u1", "u2"):
        server = _Quiet(("127.0.0.1", 0), _Named)
        server.label = label  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers[label] = server
    yield {label: s.server_address[1] for label, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


class HAProxy:
    """haproxy -db with a config of our own, and its stats socket to see what it marked down or up."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.sock = workdir / "haproxy.sock"
        path = workdir / "haproxy.cfg"
        path.write_text(f"global\n  stats socket {self.sock} level admin\n  maxconn 2000\n{config}")
        check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=open(workdir / "haproxy.log", "wb"),
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stat(self) -> dict[str, dict[str, str]]:
        """``show stat`` per server of the backend: status (UP/DOWN), stot (sessions so far)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.sock))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r["pxname"] == "be" and r["svname"] not in ("BACKEND", "FRONTEND")}

    def wait_status(self, server: str, status: str, timeout: float = 15) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.stat()[server]["status"].startswith(status):
                    return time.monotonic()
            except (OSError, KeyError, IndexError):
                pass
            time.sleep(0.02)
        raise AssertionError(f"haproxy never marked {server} {status}: {self.stat()}")

    def close(self) -> None:
        terminate(self.process)


@dataclass
class Loop:
    """Requests through the balancer from WORKERS threads until stopped (at most MAX_REQUESTS, MAX_SECONDS)."""

    port: int
    http_host: str | None = None
    results: list[tuple[float, float, str | None]] = field(default_factory=list)  # (start, end, answer or None)
    stop: threading.Event = field(default_factory=threading.Event)

    def one(self) -> None:
        started = time.monotonic()
        answer: str | None = None
        try:
            with socket.create_connection((FRONT, self.port), timeout=3) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(f"GET / HTTP/1.0\r\nHost: {self.http_host or 'x'}\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            if data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]:
                answer = data.rsplit(b"\r\n\r\n", 1)[-1].decode()
        except OSError:
            pass
        self.results.append((started, time.monotonic(), answer))

    def run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS

        def worker() -> None:
            while not self.stop.is_set() and len(self.results) < MAX_REQUESTS and time.monotonic() < deadline:
                self.one()
                time.sleep(0.002)

        self.threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def between(self, start: float, end: float) -> list[tuple[float, float, str | None]]:
        return [r for r in self.results if start <= r[0] < end]


def _tokens(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("ha-token-Zq81x-0123456789\n")
    path.chmod(0o600)
    return path


def _start_server(mode: str, n: int, control: int, tls: TlsFiles, token: Path, tmp_path: Path, port: int,
                  tag: str = "") -> subprocess.Popen:
    extra = ["--allow-ports", str(port), "--lb-proxy-protocol", "v1"] if mode == "tcp" else ["--port", str(port)]
    log = tmp_path / f"server-{n}{tag}.log"
    process = spawn(mode, "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr",
                    DATA_ADDRS[n], "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token),
                    *extra, log=log)
    deadline = time.monotonic() + 15
    while "event=started" not in log.read_text():  # its own ready line: a port another test took answers too
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.05)
    return process


def _start_servers(mode: str, tls: TlsFiles, token: Path, tmp_path: Path) -> tuple[list[subprocess.Popen], list[int], int]:
    """Both servers on fresh ports: (servers, control ports, data port). free_port's port can be taken by
    another test (the other xdist worker) before the server binds it: then new ports, three tries."""
    for attempt in range(3):
        port, controls, servers = free_port(), [free_port(), free_port()], []
        try:
            for n in range(2):
                servers.append(_start_server(mode, n, controls[n], tls, token, tmp_path, port))
            return servers, controls, port
        except AssertionError as exc:
            stop_all(*servers)
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_client(mode: str, label: str, controls: list[int], tls: TlsFiles, token: Path, tmp_path: Path, port: int,
                  upstream: int) -> subprocess.Popen:
    urls = [a for c in controls for a in ("--url", f"wss://127.0.0.1:{c}")]
    target = (["--upstream", f"{port}=127.0.0.1:{upstream}"] if mode == "tcp"
              else ["--upstream", f"{HOST}=http://127.0.0.1:{upstream}"])
    log = tmp_path / f"client-{label}.log"
    process = spawn(mode, "client", *urls, "--token-file", str(token), "--tls-ca", str(tls.ca), *target, log=log)
    deadline = time.monotonic() + 20
    while "event=servers held=2/2" not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.05)
    return process


def _wait_held_all(log: Path, timeout: float) -> None:
    """Until the client's latest ``event=servers`` line says it holds both servers."""
    deadline = time.monotonic() + timeout
    while True:
        held = [line for line in log.read_text().splitlines() if "event=servers held=" in line]
        if held and "held=2/2" in held[-1]:
            return
        assert time.monotonic() < deadline, f"{log.name}: {held[-1:] or 'no event=servers line'}"
        time.sleep(0.05)


def _haproxy_config(mode: str, front: int, port: int) -> str:
    common = f"  default-server inter {CHECK_MS}ms fastinter {CHECK_MS}ms downinter {CHECK_MS}ms fall 2 rise 2\n"
    servers = "".join(f"  server s{n + 1} {addr}:{port} check{' send-proxy' if mode == 'tcp' else ''}\n"
                      for n, addr in enumerate(DATA_ADDRS))
    checks = ("" if mode == "tcp" else
              f"  option httpchk\n  http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {HOST}\n"
              "  http-check expect status 200\n")
    return (f"defaults\n  mode {mode}\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n"
            f"  retries 2\n  option redispatch\n"
            f"frontend fe\n  bind {FRONT}:{front}\n  default_backend be\n"
            f"backend be\n  balance roundrobin\n{checks}{common}{servers}")


@pytest.mark.parametrize("mode", ["tcp", "http"])
def test_failover_behind_haproxy(mode: str, tmp_path: Path, tls: TlsFiles, upstreams: dict[str, int]) -> None:
    token, front = _tokens(tmp_path), free_port(FRONT)
    servers, controls, port = _start_servers(mode, tls, token, tmp_path)
    clients: dict[str, subprocess.Popen] = {}
    haproxy = None
    loop = Loop(front, HOST if mode == "http" else None)
    report: dict[str, object] = {"mode": mode, "check_interval_ms": CHECK_MS, "workers": WORKERS}
    try:
        for label in ("u1", "u2"):
            clients[label] = _start_client(mode, label, controls, tls, token, tmp_path, port, upstreams[label])
        haproxy = HAProxy(tmp_path, _haproxy_config(mode, front, port))
        haproxy.wait_status("s1", "UP")
        haproxy.wait_status("s2", "UP")
        loop.run()
        time.sleep(1.5)
        # kill -9 one server
        killed = time.monotonic()
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait(10)
        down = haproxy.wait_status("s1", "DOWN")
        time.sleep(1.0)
        before_restart = int(haproxy.stat()["s1"]["stot"])
        restarted = time.monotonic()
        servers[0] = _start_server(mode, 0, controls[0], tls, token, tmp_path, port, tag="-restarted")
        up = haproxy.wait_status("s1", "UP", timeout=30)  # the clients reconnect by themselves first
        time.sleep(1.0)
        after_restart = int(haproxy.stat()["s1"]["stot"])
        for label in clients:  # each in its own backoff: one back is enough for HAProxy, not for the kill below
            _wait_held_all(tmp_path / f"client-{label}.log", timeout=30)
        # kill -9 one client: the other serves everything
        client_killed = time.monotonic()
        clients["u1"].send_signal(signal.SIGKILL)
        clients["u1"].wait(10)
        time.sleep(1.5)
        loop.join()
        end = time.monotonic()
    finally:
        loop.stop.set()
        for process in (*clients.values(), *servers):
            terminate(process)
        if haproxy is not None:
            haproxy.close()

    def failed(rows: list) -> int:
        return sum(1 for r in rows if r[2] is None)

    in_flight_at_kill = [r for r in loop.results if r[0] < killed <= r[1]]
    after_down = loop.between(down, restarted)
    after_client_kill = loop.between(client_killed + 0.5, end)
    first_after_client_kill_ok = next((r[1] for r in sorted(loop.results) if r[0] >= client_killed and r[2]), None)
    report |= {
        "requests": len(loop.results), "failed_total": failed(loop.results),
        "server_kill": {"in_flight": len(in_flight_at_kill), "failed_in_flight": failed(in_flight_at_kill),
                        "failed_kill_to_down": failed(loop.between(killed, down)),
                        "failed_after_down": failed(after_down), "marked_down_after_s": round(down - killed, 3)},
        "server_restart": {"marked_up_after_s": round(up - restarted, 3), "sessions_since_up": after_restart - before_restart,
                           "failed": failed(loop.between(restarted, client_killed))},
        "client_kill": {"failed": failed(loop.between(client_killed, end)),
                        "failed_in_flight": failed([r for r in loop.results if r[0] < client_killed <= r[1]]),
                        "served_by_u1_after": sum(1 for r in after_client_kill if r[2] == "u1"),
                        "served_after": len(after_client_kill),
                        "first_ok_after_s": round(first_after_client_kill_ok - client_killed, 3)
                        if first_after_client_kill_ok else None},
        "served_by": {label: sum(1 for r in loop.results if r[2] == label) for label in ("u1", "u2")},
        "failures_at_s": [round(r[0] - killed, 3) for r in sorted(loop.results) if r[2] is None],
        "marks_s": {"down": round(down - killed, 3), "restarted": round(restarted - killed, 3),
                    "up": round(up - killed, 3), "client_killed": round(client_killed - killed, 3)},
    }
    print(json.dumps(report))
    if os.environ.get("INLETS_HA_REPORT"):
        with open(os.environ["INLETS_HA_REPORT"], "a") as out:
            out.write(json.dumps(report) + "\n")
    assert len(loop.results) > 200, report
    assert report["served_by"]["u1"] > 0 and report["served_by"]["u2"] > 0, report  # both clients served
    failures = [r for r in loop.results if r[2] is None]
    # before the server died: nothing failed but what was in flight when it did
    assert all(r[1] >= killed for r in failures if r[0] < killed), report
    # once HAProxy marked it down, and through its restart, nothing fails (but what the client kill cut)
    assert all(r[1] >= client_killed for r in failures if down <= r[0] < client_killed), report
    assert after_restart - before_restart > 0, report  # traffic returned to the restarted server
    # the client kill: the other client serves everything; what failed was in flight or sent in the
    # moment before the servers saw the dead client's connection close
    assert after_client_kill and all(r[2] == "u2" for r in after_client_kill), report
    assert all(r[0] < client_killed + 0.5 for r in failures if r[0] >= down), report
    assert failed(loop.between(client_killed - 3, end)) <= 2 * WORKERS, report
