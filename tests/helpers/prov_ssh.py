"""Parts of the ``--provider ssh`` tests: the test sshd's description, a key maker, and inletsctl's ssh flags
for it. The sshd itself is tests/provisioner/conftest.py's fixture."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


SSHD = "/usr/sbin/sshd"
DATA_ADDR = "127.0.0.2"  # the exit server's data plane; the client's upstream is on 127.0.0.1


@dataclass
class Sshd:
    port: int
    client_key: Path
    fingerprint: str  # SHA256:... of the host key, as ssh-keygen -lf prints it
    log: Path
    user_keys: Path  # authorized keys of users other than root, one file per user name (readable by them)


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)


def ssh_args(sshd: Sshd, tmp_path: Path, *extra: str) -> list[str]:
    return ["--provider", "ssh", "--host", "root@127.0.0.1", "--port", str(sshd.port), "--ssh-key", str(sshd.client_key),
            "--known-hosts", str(tmp_path / "known_hosts"), "--supervisor", "plain",
            "--remote-python", sys.executable, "--state-dir", str(tmp_path / "state"), *extra]


def wait_for_sshd(proc: subprocess.Popen, port: int, log: Path | None = None) -> None:
    """Until the sshd ``proc`` accepts on ``port`` (15 s at most); fails the test with its log's end otherwise."""
    import socket
    import time

    import pytest

    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                said = log.read_text(errors="replace")[-2000:] if log is not None else ""
                pytest.fail(f"sshd did not start: {said}")
            time.sleep(0.1)

