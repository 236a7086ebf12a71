"""Hostile input on the HTTP data plane (issue 14): smuggling through Connection, pipelines, protection
that fails open, status codes, absolute-form targets. Real server, tunnel clients and upstreams on loopback."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time

import pytest

from http_helpers import LOOPBACK, Stack, raw_request
from process_helpers import INLETS, ROOT, wait_port
from runtime.cli_common import run_until_signalled
from tunnel_helpers import free_port

def wait_until(predicate, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---------------------------------------------------------------- the real command, without uvloop

#: ``inlets`` as installed without the ``fast`` extra: ``import uvloop`` fails, so the loop runs inside
#: ``except ImportError`` (the state in which refusals used to become "No module named 'uvloop'").
NO_UVLOOP = [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; from runtime.cli import main; main()"]


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-http")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32) + "\n")
    stack = Stack()
    procs: list[subprocess.Popen] = []
    try:
        app, up = stack.upstream("P")
        control, data = free_port(), free_port()
        procs.append(subprocess.Popen(NO_UVLOOP + [
            "http", "server", "--port", str(data), "--data-addr", LOOPBACK, "--control-addr", LOOPBACK,
            "--control-port", str(control), "--auto-tls", "--auto-tls-path", str(tmp / "tls"),
            "--auto-tls-san", LOOPBACK, "--token-file", str(token), "--drain-timeout", "1"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w")))
        wait_port(control)
        procs.append(subprocess.Popen(INLETS + [
            "http", "client", "--url", f"wss://{LOOPBACK}:{control}", "--token-file", str(token),
            "--tls-ca", str(tmp / "tls" / "ca.crt"), "--upstream", f"app.test=http://{LOOPBACK}:{up}",
            "--drain-timeout", "1"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(tmp / "client.log", "w")))
        wait_until(lambda: raw_request(data, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
                                       ).startswith(b"HTTP/1.1 200 "), 20)
        yield dict(server=procs[0], port=data, app=app)
    finally:
        for process in reversed(procs):
            process.terminate()
            process.wait(10)
        stack.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n", 405),
    (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"h" * 70_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
])
def test_refusals_keep_their_status_and_name_no_internals(proc, request_bytes, status):
    """Issue 14 item 7: these got '400 bad HTTP message: No module named 'uvloop''."""
    answer = raw_request(proc["port"], request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    body = answer.partition(b"\r\n\r\n")[2].lower()
    for internal in (b"uvloop", b"module", b"callback", b"error", b"traceback"):
        assert internal not in body, body


def test_the_loop_runs_outside_the_uvloop_import_check(monkeypatch):
    """What is raised in the server's loop carries no ImportError along (nor do its tracebacks in logs)."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    contexts = []

    async def start() -> None:
        pass

    async def main() -> None:
        try:
            raise ValueError("raised in the loop")
        except ValueError as exc:
            contexts.append(exc.__context__)

    run_until_signalled(start, main)
    assert contexts == [None]
