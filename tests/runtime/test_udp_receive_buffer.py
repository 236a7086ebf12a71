"""A UDP socket's burst buffer against the kernel's cap: ``net.core.rmem_max`` bounds SO_RCVBUF for a process
without CAP_NET_ADMIN (an exit server's systemd unit runs as the user ``inlets``), and a burst past the smaller
buffer is dropped. The runtime says so once, with the fix, rather than lose bursts without a word.

The process under test runs without CAP_NET_ADMIN (setpriv drops it from its bounding set), so the kernel's cap is
real; it asks four times this machine's rmem_max, which no setting here can grant."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RMEM_MAX = int(Path("/proc/sys/net/core/rmem_max").read_text()) if Path("/proc/sys/net/core/rmem_max").exists() else 0

pytestmark = pytest.mark.skipif(sys.platform != "linux" or not shutil.which("setpriv") or not RMEM_MAX,
                                reason="Linux's rmem_max and setpriv (util-linux)")

PROGRAM = """
import logging, socket, sys
from inlets_py.runtime.core.datagram import raise_receive_buffer
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
for _ in range(3):  # three ports (or flows) of one process
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        print(raise_receive_buffer(sock, int(sys.argv[1])))
"""


def _buffers_without_net_admin(size: int) -> tuple[list[int], str]:
    done = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable, "-c", PROGRAM, str(size)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [int(line) for line in done.stdout.split()], done.stderr


def test_a_buffer_the_kernel_capped_is_said_once_with_the_fix() -> None:
    asked = 4 * RMEM_MAX  # the kernel grants half of what a granted one reports: under half of it is said
    got, log = _buffers_without_net_admin(asked)
    assert got == [2 * RMEM_MAX] * 3, got  # the cap holds: SO_RCVBUFFORCE was refused
    warnings = [line for line in log.splitlines() if "event=udp_receive_buffer_small" in line]
    assert len(warnings) == 1, log  # once a process, not once a socket
    assert f"asked={asked} got={2 * RMEM_MAX} rmem_max={RMEM_MAX}" in warnings[0]
    assert f"sysctl -w net.core.rmem_max={asked}" in warnings[0]


def test_a_buffer_the_kernel_granted_is_not_said() -> None:
    got, log = _buffers_without_net_admin(RMEM_MAX)
    assert got == [2 * RMEM_MAX] * 3, got
    assert "udp_receive_buffer_small" not in log
