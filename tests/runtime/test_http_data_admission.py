"""`inlets http server`'s data port (--port, no Let's Encrypt) under connections that never send a request head.

Nothing capped them but --idle-timeout (75 s): from one loopback address 3,000 silent connections, or 3,000 that
sent half a request head, held 3,000 server sockets each, and 12,000 in 13 s held 12,000 (RSS 46 -> 91 MiB),
towards the descriptor limit the control port shares. Now capped as the Let's Encrypt plain port is
(``server.admission``): per source and in total until the first request head is complete.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from helpers.process import inlets, one_line_error, spawn, terminate, wait_for_text
from helpers.prov_support import HelloUpstream
from helpers.tunnel import free_port

from inlets_py.runtime.server.admission import PUBLIC_MAX_PER_SOURCE

HOST = b"app.test"
FLOOD = 1000  # from one address: far past the per-source cap, well within the total


@contextlib.contextmanager
def http_server(tmp_path: Path, tls, token: str, *extra: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """A server process and a client serving HOST through it: (server, data port)."""
    app = ThreadingHTTPServer(("127.0.0.1", 0), HelloUpstream)
    threading.Thread(target=app.serve_forever, args=(0.05,), daemon=True).start()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    control, port = free_port(), free_port()
    server = spawn("http", "server", "--control-addr", "127.0.0.1", "--control-port", str(control),
                   "--data-addr", "127.0.0.1", "--port", str(port), "--tls-cert", str(tls.cert),
                   "--tls-key", str(tls.key), "--token-file", str(token_file), *extra, log=tmp_path / "server.log")
    client = spawn("http", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                   "--tls-ca", str(tls.ca), "--upstream", f"{HOST.decode()}=http://127.0.0.1:{app.server_address[1]}",
                   log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "connected", timeout=20)
        yield server, port
    finally:
        terminate(client)
        terminate(server)
        app.shutdown()


def _connect(port: int, source: str, first: bytes = b"") -> socket.socket | None:
    with contextlib.suppress(OSError):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        if first:
            sock.sendall(first)
        return sock
    return None


def _still_open(socks: list[socket.socket]) -> int:
    """How many the server has not closed (no EOF or reset seen)."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            count += sock.recv(1) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def _get(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    sock.sendall(b"GET /k HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n")
    answer = b""
    while not answer.endswith(b"path=/k"):
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    return answer


def test_silent_and_half_head_connections_are_capped_per_source_and_users_get_through(tmp_path: Path, tls,
                                                                                      token: str) -> None:
    held: list[socket.socket] = []
    users: list[socket.socket] = []
    with http_server(tmp_path, tls, token) as (_server, port):
        try:
            # more kept-alive users from one address than the per-source cap: each sent its head, none is pending
            for _ in range(PUBLIC_MAX_PER_SOURCE + 20):
                sock = _connect(port, "127.0.10.2")
                assert sock is not None
                users.append(sock)
                assert _get(sock).startswith(b"HTTP/1.1 200 "), "a kept-alive user was refused"
            for i in range(FLOOD):
                sock = _connect(port, "127.0.10.1", b"GET / HTTP/1.1\r\nHost: app.te" if i % 2 else b"")
                if sock is not None:
                    held.append(sock)
            time.sleep(1)
            flooding = _still_open(held)
            for _ in range(PUBLIC_MAX_PER_SOURCE + 5):  # a second address while the first's are pending: named too
                sock = _connect(port, "127.0.10.4", b"")
                if sock is not None:
                    held.append(sock)
            sock = _connect(port, "127.0.10.3")  # a user from another address during the flood
            assert sock is not None
            with sock:
                answer = _get(sock)
            kept = [_get(sock).startswith(b"HTTP/1.1 200 ") for sock in users]  # between requests: not pending
        finally:
            for sock in held + users:
                sock.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert flooding <= PUBLIC_MAX_PER_SOURCE, f"{flooding} of {FLOOD} connections without a request head open"
    assert all(kept), f"{kept.count(False)} kept-alive users closed"
    log = (tmp_path / "server.log").read_text()
    assert "event=handshakes_refused listener=data " in log, log[-2000:]
    assert "remote=127.0.10.1 " in log and "remote=127.0.10.4 " in log, log[-2000:]  # each address it refused


def test_behind_a_proxy_protocol_balancer_the_real_source_is_capped_not_the_balancer(tmp_path: Path, tls,
                                                                                  token: str) -> None:
    """--lb-proxy-protocol: the balancer carries many users, each counted by the source its header names."""
    one: list[socket.socket] = []
    many: list[socket.socket] = []
    count = PUBLIC_MAX_PER_SOURCE * 3
    with http_server(tmp_path, tls, token, "--lb-proxy-protocol", "v1") as (_server, port):
        try:
            for i in range(count):
                header = b"PROXY TCP4 198.51.100.7 127.0.0.1 4000 80\r\n"
                one.append(_connect(port, "127.0.10.5", header))  # type: ignore[arg-type]
                header = b"PROXY TCP4 198.51.%d.%d 127.0.0.1 4000 80\r\n" % (i // 200, i % 200 + 1)
                many.append(_connect(port, "127.0.10.5", header))  # type: ignore[arg-type]
            time.sleep(1)
            one_open, many_open = _still_open(one), _still_open(many)
        finally:
            for sock in one + many:
                if sock is not None:
                    sock.close()
    assert one_open <= PUBLIC_MAX_PER_SOURCE, f"{one_open} of {count} from one real source open"
    assert many_open == count, f"{many_open} of {count} from {count} real sources open"


def test_the_caps_are_the_operators_to_set(tmp_path: Path, tls, token: str) -> None:
    """--max-pending-connections(-per-source): one NAT's many users share an address, so its cap is a knob."""
    held: list[socket.socket] = []
    spread: list[socket.socket] = []
    with http_server(tmp_path, tls, token, "--max-pending-connections", "12",
                     "--max-pending-connections-per-source", "8") as (_server, port):
        try:
            for _ in range(40):
                sock = _connect(port, "127.0.10.21")
                if sock is not None:
                    held.append(sock)
            time.sleep(1)
            one_open = _still_open(held)
            for i in range(40):  # 2 from each of 20 addresses: within 8 each, past 12 in all
                sock = _connect(port, f"127.0.11.{i // 2 + 1}")
                if sock is not None:
                    spread.append(sock)
            time.sleep(1)
            all_open = _still_open(held) + _still_open(spread)
            sock = _connect(port, "127.0.10.22")
            assert sock is not None
            with sock:
                answer = _get(sock)
        finally:
            for sock in held + spread:
                sock.close()
    assert one_open == 8, f"{one_open} of 40 silent connections from one address open (--max-pending-connections-per-source 8)"
    assert all_open <= 12, f"{all_open} of 80 silent connections open (--max-pending-connections 12)"
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_cap_that_cannot_work_is_refused_in_one_line() -> None:
    for args, said in ((["--max-pending-connections-per-source", "0"], "Invalid value for '--max-pending-connections-per-source'"),
                       (["--max-pending-connections", "-5"], "Invalid value for '--max-pending-connections'"),
                       (["--max-pending-connections", "16", "--max-pending-connections-per-source", "64"],
                        "--max-pending-connections-per-source 64 is above --max-pending-connections 16")):
        result = inlets("http", "server", "--plaintext", "--token-file", "/etc/inlets/token", "--data-addr", "127.0.0.1",
                        "--control-addr", "127.0.0.1", "--port", "23710", "--control-port", "23711", *args, timeout=20)
        one_line_error(result, said)
