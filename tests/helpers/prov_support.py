"""Helpers shared by the provisioner tests: run inletsctl, serve HTTP, bound every wait."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from inlets_py.provisioner.cli import main
from helpers.process import terminate
from helpers.tunnel import free_port  # noqa: F401  (the provisioner tests import it from here)

BIN = Path(sys.executable).parent
INLETSCTL = BIN / "inletsctl"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``inletsctl ARGS`` in this process (the real CLI, without a Python start-up per call)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def run_inletsctl(*args: str, env: dict[str, str] | None = None, timeout: float = 60, wrap: tuple[str, ...] = ()) -> Result:
    """``inletsctl ARGS`` as a separate process, the way a user runs it (``wrap``: a command that runs it, e.g. setpriv)."""
    proc = subprocess.run(
        [*wrap, str(INLETSCTL), *args], capture_output=True, text=True, timeout=timeout, env=user_env(env),
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user whose PATH holds this installation's ``inlets``/``inletsctl``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITALOCEAN_", "INLETS_", "INLETSCTL_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


class HelloUpstream(http.server.BaseHTTPRequestHandler):
    """Answers every GET with its path: the service behind a tunnel."""

    def do_GET(self) -> None:
        body = f"hello from the upstream, path={self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_upstream(port: int) -> Iterator[None]:
    """A real HTTP service on 127.0.0.1:port: the client's upstream."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), HelloUpstream)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # shutdown() in 0.05 s, not 0.5
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def run_client(command: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run the printed client command exactly as printed, through a shell, with PATH as a user's."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"], env=user_env(), stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )
    try:
        yield proc
    finally:
        terminate(proc)


def get_through(url: str, timeout: float = 20.0, host: str | None = None, logs: tuple[Path, ...] = ()) -> str:
    """GET ``url`` (with a Host header) until it answers 200 (the client needs a moment), bounded in time."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                return response.read().decode()
        except OSError as exc:
            last = exc
            time.sleep(0.2)
    tails = "".join(f"\n--- {log}:\n" + "\n".join(_tail(log)) for log in logs)
    raise AssertionError(f"{url} never answered through the tunnel: {last}{tails}")


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return [f"(unreadable: {exc})"]


def split_command(command: str) -> list[str]:
    return shlex.split(command)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err + result.out, result.err


def one_line_error(result: Result, *needles: str) -> str:
    """The result failed with exactly one line on stderr containing every needle."""
    no_traceback(result)
    assert result.code != 0, result
    errors = [line for line in result.err.splitlines() if "error:" in line]
    assert len(errors) == 1, result.err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def assert_server_answered(result: Result) -> None:
    """``inletsctl status --json``: the server answered its /status (or /healthz before /status existed)."""
    assert result.code == 0, result.err
    server = result.json()["server"]
    if server["endpoint"] == "/status":
        assert isinstance(server["status"], dict) and server["status"].get("version"), server
    else:
        assert server["endpoint"] == "/healthz" and server["http_status"] == 200, server
