"""A local exit server's --ttl: the server runs until the expiry create recorded, never a moment less, so ``status``
needs no slack to tell the end its --ttl set from a crash."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from helpers.prov_support import free_port, run_cli


def _running(pid: int) -> bool:
    """The process ``pid`` has not ended (a zombie, not reaped yet, has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_local_server_ends_at_its_ttl_expiry_never_before(tmp_path: Path, capsys) -> None:
    """``timeout`` was given the seconds to the expiry rounded down: a create a fraction of a second after a whole
    second (the expiry counts from that whole second) ended the server up to a second before its recorded expiry."""
    state = tmp_path / "state"
    time.sleep(1.05 - time.time() % 1)  # just after a whole second: rounding down then loses most of one
    created = run_cli(capsys, "create", "tx", "--ttl", "2s", "--ports", str(free_port("127.0.0.2")), "--json",
                      "--state-dir", str(state))
    assert created.code == 0, created.err
    made = created.json()
    expires = datetime.datetime.strptime(made["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    expires_at = expires.replace(tzinfo=datetime.timezone.utc).timestamp()
    try:
        deadline = time.monotonic() + 30
        while _running(int(made["id"])) and time.monotonic() < deadline:
            time.sleep(0.02)
        ended_at = time.time()
        assert not _running(int(made["id"])), "the server ran on 30 s past its --ttl"
        assert ended_at >= expires_at, f"ended {expires_at - ended_at:.2f} s before its expiry {made['expires_at']}"
    finally:
        assert run_cli(capsys, "delete", "tx", "--state-dir", str(state)).code == 0
