"""``inlets`` started with a standard fd closed (``<&-``, ``>&-``), or with a stdout that cannot take its output
(a full disk): real processes, as a shell starts them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.process import INLETS, ROOT, server_args, terminate, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port

#: ``sh -c 'exec "$@" <&-' sh inlets ...``: inlets itself starts with the fd closed, as from a shell's redirection
CLOSED = {"stdin": "<&-", "stdout": ">&-"}
FULL_DISK = "inlets: error: No space left on device writing the output: make room (or write elsewhere) and run it again"


def _closed(fd: str, *args: str) -> list[str]:
    return ["sh", "-c", f'exec "$@" {CLOSED[fd]}', "sh", *INLETS, *args]


@pytest.mark.parametrize("fd", sorted(CLOSED))
def test_a_server_started_with_a_standard_fd_closed_drains_on_sigterm(
        tmp_path: Path, tls: TlsFiles, token_file: Path, fd: str) -> None:
    """uvloop's epoll fd took the free fd 0 (or 1) and libuv aborts rather than close it: a SIGTERM ended the
    server with "uv__close: Assertion `fd > STDERR_FILENO' failed" (status 134), not a drain and exit 0; with stdout
    closed the parsing child also printed two tracebacks (sys.stdout was None)."""
    control = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        server = subprocess.Popen(_closed(fd, *server_args(control, tls, token_file)), stdout=handle,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(control)
        wait_for_text(log, "event=started")
        server.send_signal(signal.SIGTERM)
        code = server.wait(15)
    finally:
        terminate(server)
    output = log.read_text()
    assert code == 0, output
    assert "event=draining" in output and "Traceback" not in output and "Assertion" not in output, output


@pytest.mark.parametrize("args", [["--help"], ["tcp", "client", "--help"]])
def test_help_with_stdout_closed_exits_0_without_a_traceback(args: list[str]) -> None:
    result = subprocess.run(_closed("stdout", *args), stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def _run(args: list[str], stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INLETS, *args], stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["tcp", "client", "--help"],
    ["tcp", "server", "--plaintext", "--token", "abcdefabcdefabcdef", "--allow-ports", "80", "--generate", "k8s_yaml"],
])
def test_output_that_cannot_be_written_is_one_line_and_a_closed_pipe_none(args: list[str]) -> None:
    """``inlets --help > /dev/full`` ended in a traceback of ~50 lines (click's echo, OSError [Errno 28]), where
    inletsctl says it in one line; a reader that stops early (``| head -1``) is still exit 1 without a word."""
    with open("/dev/full", "w") as full:
        result = _run(args, full.fileno())
    assert result.returncode == 1, result.stderr
    assert _said(result) == [FULL_DISK], result.stderr
    read, write = os.pipe()
    os.close(read)
    try:
        result = _run(args, write)
    finally:
        os.close(write)
    assert (result.returncode, _said(result)) == (1, []), result.stderr


def _said(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines on stderr but --generate's note on the image (it comes before the output)."""
    return [line for line in result.stderr.splitlines() if not line.startswith("inlets: note:")]
