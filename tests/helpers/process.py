"""Run the `inlets` command as users do: real processes, logs in files, bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from helpers import cli_fork
from helpers.tunnel import TlsFiles

INLETS = [sys.executable, "-c", "from inlets_py.runtime.cli.main import main; main()"]
ROOT = Path(__file__).resolve().parents[2]


def inlets(*args: str, timeout: float = 20, env: dict | None = None, environment: dict | None = None,
           cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``inlets ARGS`` run to completion in a process of its own (forked from one with the imports done: cli_fork),
    with this environment and ``env``, or with ``environment`` alone."""
    if environment is None:
        environment = {**os.environ, **(env or {})}
    if os.environ.get("INLETS_TESTS_FRESH") == "1" or not hasattr(os, "fork"):
        return subprocess.run([*INLETS, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=environment)
    return cli_fork.run(list(args), environment, cwd, timeout)


#: A prefix that runs a command with 1 GiB of address space: a file read without limit (/dev/zero) then ends in
#: a MemoryError at once instead of taking the test machine's memory.
MEMORY_CAPPED = (sys.executable, "-c", "import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
                 "os.execv(sys.argv[1], sys.argv[1:])")


#: What a one-line error must never show: Python's own words.
INTERNALS = ("Traceback", "Error:", "_ssl.c", "[Errno", "None", "codec")


def one_line_error(result: subprocess.CompletedProcess, message: str, status: int = 2) -> str:
    """The single stderr line of a refused command, checked for ``message`` and the absence of internals."""
    assert result.returncode == status, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], lines[0]
    for word in INTERNALS:
        assert word not in lines[0] and "Traceback" not in result.stdout, lines[0]
    return lines[0]


def spawn(*args: str, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([*INLETS, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_port(port: int, timeout: float = 15, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{host}:{port} never accepted")


def wait_for_text(path: Path, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}:\n{path.read_text()}")


def wait_count(path: Path, text: str, count: int, timeout: float = 30) -> str:
    """The log once ``text`` is in it ``count`` times (a rotation's or a reconnect's steps repeat the same lines)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text()
        if content.count(text) >= count:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not {count} times in {path}:\n{path.read_text()}")


def echo_once(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def server_args(control: int, tls: TlsFiles, token_file: Path, *extra: str) -> list[str]:
    return [
        "tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr", "127.0.0.1",
        "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file), *extra,
    ]


def client_args(control: int, tls: TlsFiles, token_file: Path, *extra: str) -> list[str]:
    return ["tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
            "--tls-ca", str(tls.ca), *extra]


def stop_all(*processes: subprocess.Popen) -> list[int]:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    return [p.wait(15) for p in processes]


def terminate(process: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process whatever state a test left it in: SIGTERM, then SIGKILL after ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def wait_while_running(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen) -> None:
    """Until ``predicate()`` holds; fails at once, with its stderr, if ``proc`` exits meanwhile (not at the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited while waiting for {what}: {proc.stderr.read() if proc.stderr else ''}")
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def recording_environments(folder: Path) -> dict[str, str]:
    """An environment for a process whose Python children should write down theirs: a sitecustomize on $PYTHONPATH
    (which children keep: Python finds this installation's modules with it) saves each one's argv and environment
    in ``folder``, read back with ``recorded_environments``."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import json, os\n"
        "argv = open('/proc/self/cmdline', 'rb').read().decode().split('\\0')\n"
        "with open(os.path.join(os.path.dirname(__file__), f'{os.getpid()}.json'), 'w') as file:\n"
        "    json.dump({'argv': argv, 'env': dict(os.environ)}, file)\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def recorded_environments(folder: Path, module: str) -> list[dict[str, str]]:
    """The environments ``recording_environments`` saved of the processes that ran ``python -m module``."""
    import json

    seen = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    return [entry["env"] for entry in seen if module in entry["argv"]]
