"""A client's ``upstream_failed`` lines, with the real CLIs: each upstream's failure is said, however busy another
dead one is, and a flood of one is told by its count, not line by line."""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path
from typing import Iterator

from helpers.process import client_args, server_args, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port


def _refused_user(port: int) -> None:
    """One user of a public port whose upstream refuses: the tunnel resets it (on loopback, at times before
    ``connect`` returns)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as user:
            assert user.recv(1) == b""
    except ConnectionResetError:
        pass


@contextlib.contextmanager
def _two_dead_upstreams(tmp_path: Path, tls: TlsFiles, token_file: Path, scheme: str) -> Iterator[tuple[int, ...]]:
    """A server and a client whose two public ports (``scheme``: "" for TCP, "udp:") lead to upstreams nothing listens
    on: (busy port, other port, busy upstream's port, other upstream's port); the client's log is client.log."""
    control, busy, other = free_port(), free_port(), free_port()
    busy_dead, other_dead = free_port(), free_port()  # nothing listens on either
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = None
    try:
        wait_port(control)
        client = spawn(*client_args(control, tls, token_file, "--upstream", f"{scheme}{busy}=127.0.0.1:{busy_dead}",
                                    "--upstream", f"{scheme}{other}=127.0.0.1:{other_dead}"), log=tmp_path / "client.log")
        wait_for_text(tmp_path / "client.log", "event=connected")
        wait_for_text(tmp_path / "server.log", "event=client_connected")  # its ports listen before it is said
        yield busy, other, busy_dead, other_dead
    finally:
        stop_all(*(p for p in (client, server) if p is not None))


def _said_while_the_other_floods(log: Path, busy_dead: int, other_dead: int) -> None:
    said = wait_for_text(log, f"upstream=127.0.0.1:{other_dead} ", timeout=5)
    busy_lines = [line for line in said.splitlines() if f"upstream=127.0.0.1:{busy_dead} " in line]
    assert len(busy_lines) <= 3, busy_lines  # one per 10 s, however slow this machine


def test_a_second_dead_upstream_is_said_while_a_first_one_floods_and_the_flood_is_counted(
        tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """Found by a review helper: 300 users of one dead upstream, then one of another: the log limits a kind of line
    (20 per 10 s), so the first upstream's 20 identical lines took them all and the second upstream was not said
    (0 of 1) while the client ran. Each upstream and failure is said once per window now, the rest counted."""
    log = tmp_path / "client.log"
    with _two_dead_upstreams(tmp_path, tls, token_file, "") as (busy, other, busy_dead, other_dead):
        for _ in range(60):
            _refused_user(busy)
        _refused_user(other)
        for _ in range(20):
            _refused_user(busy)
        _said_while_the_other_floods(log, busy_dead, other_dead)
    busy_lines = [line for line in log.read_text().splitlines() if f"upstream=127.0.0.1:{busy_dead} " in line]
    told = sum(1 + int(m.group(1)) if (m := re.search(r" suppressed=(\d+)$", line)) else 1 for line in busy_lines)
    assert told == 80, busy_lines  # every failed dial said or counted, the last ones at exit


def test_a_second_dead_udp_upstream_is_said_while_a_first_one_floods(
        tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """Found by a probe: UDP's upstream_failed (once a flow) had no cause, so 60 sources of one dead UDP upstream took
    the kind's 20 lines and another dead UDP upstream's failure was never said (0 of 1), though TCP's was."""
    log = tmp_path / "client.log"
    with _two_dead_upstreams(tmp_path, tls, token_file, "udp:") as (busy, other, busy_dead, other_dead):
        for _ in range(60):  # a flow each: a source of its own
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as user:
                user.sendto(b"x", ("127.0.0.1", busy))
        wait_for_text(log, f"upstream=127.0.0.1:{busy_dead} ", timeout=5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as user:
            user.sendto(b"y", ("127.0.0.1", other))
        _said_while_the_other_floods(log, busy_dead, other_dead)
