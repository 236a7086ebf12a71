"""A client given a link-local server with its zone (``wss://[fe80::1%lo]:PORT``), in a network namespace of its own:
real processes (on uvloop, as the CLI runs), real TLS with a certificate for IP fe80::1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from helpers.netns import ip as _ip, namespace
from helpers.process import INLETS, ROOT, terminate, wait_for_text
from helpers.tunnel import make_tls


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with only ``lo`` up; skipped, with why, where one cannot be made (no root, no iproute2)."""
    with namespace("clienttls") as name:
        yield name


def _spawn(netns: str, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as handle:
        return subprocess.Popen(["ip", "netns", "exec", netns, *INLETS, *args], stdout=handle, stderr=subprocess.STDOUT,
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_client_checks_a_zoned_link_local_server_against_its_address(netns: str, tmp_path: Path, token_file: Path) -> None:
    """Found by review: the client checked the certificate against ``fe80::1%lo``, which no certificate can name
    ("Hostname mismatch"), so it never connected; the zone is kept for the dial and dropped for the check, as curl does."""
    added = _ip("-n", netns, "addr", "add", "fe80::1/64", "dev", "lo", "nodad")
    assert added.returncode == 0, added.stderr
    tls = make_tls(tmp_path / "tls", ["fe80::1"])
    server = _spawn(netns, tmp_path / "server.log", "tcp", "server", "--control-addr", "fe80::1%lo",
                    "--control-port", "22231", "--data-addr", "127.0.0.1", "--tls-cert", str(tls.cert),
                    "--tls-key", str(tls.key), "--token-file", str(token_file))
    client = None
    try:
        wait_for_text(tmp_path / "server.log", "event=started")
        client = _spawn(netns, tmp_path / "client.log", "tcp", "client", "--url", "wss://[fe80::1%lo]:22231",
                        "--tls-ca", str(tls.ca), "--token-file", str(token_file), "--upstream", "22232=127.0.0.1:22233")
        wait_for_text(tmp_path / "client.log", "event=connected")
    finally:
        for process in (client, server):
            if process is not None:
                terminate(process)
    assert "mismatch" not in (tmp_path / "client.log").read_text()


def test_client_says_a_zoned_link_local_server_is_unreachable(netns: str, tmp_path: Path, token_file: Path) -> None:
    """Found by review: on uvloop the zone was dropped on the way to connect(), which then failed with "Invalid
    argument" (or timed out) where the system says at once that the network is unreachable (``lo`` here has no
    link-local address), as the client on asyncio's loop says."""
    tls = make_tls(tmp_path / "tls", ["fe80::1"])
    client = _spawn(netns, tmp_path / "client.log", "tcp", "client", "--url", "wss://[fe80::1%lo]:22234",
                    "--tls-ca", str(tls.ca), "--token-file", str(token_file), "--upstream", "22235=127.0.0.1:22236")
    try:
        log = wait_for_text(tmp_path / "client.log", "event=connect_failed")
    finally:
        terminate(client)
    first = next(line for line in log.splitlines() if "event=connect_failed" in line)
    assert 'error="Network is unreachable"' in first, first
