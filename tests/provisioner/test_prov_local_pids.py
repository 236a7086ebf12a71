"""A local exit server is known by the pid create recorded; once it dies that pid can be another's (reused)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from helpers.prov_support import free_port, one_line_error, run_cli


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def test_a_recorded_pid_now_serving_another_exit_server_is_never_stopped_or_shown_as_this_one(
        tmp_path: Path, capsys) -> None:
    """`delete first` after first's server died (a reboot, a kill -9) and its pid went to second's server stopped
    second's server, and `list` showed first active and second absent. The pid reuse is made by writing second's
    pid into first's state, as the kernel would hand it out again."""
    state = tmp_path / "state"
    pids = {}
    for name in ("first", "second"):
        created = run_cli(capsys, "create", name, "--ports", str(free_port("127.0.0.2")), "--json",
                          "--state-dir", str(state))
        assert created.code == 0, created.err
        pids[name] = int(created.json()["id"])
    try:
        os.killpg(pids["first"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pids["first"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        meta_file = state / "first" / "server.json"
        meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"id": str(pids["second"])}))

        listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
        assert listed.code == 0, listed.err
        rows = {row["name"]: row["status"] for row in listed.json()["servers"]}
        assert rows == {"first": "absent", "second": "active"}, listed.out

        status = run_cli(capsys, "status", "first", "--state-dir", str(state))
        one_line_error(status, "exit server first is gone from local")

        deleted = run_cli(capsys, "delete", "first", "--state-dir", str(state))
        assert deleted.code == 0, deleted.err
        assert "first was already gone on local" in deleted.out, deleted.out
        assert _alive(pids["second"]) and not (state / "first").exists()
    finally:
        run_cli(capsys, "delete", "second", "--state-dir", str(state))
        assert not _alive(pids["second"])


def test_a_running_server_whose_recorded_id_was_edited_is_listed_and_deleted_by_its_state_folder(
        tmp_path: Path, capsys) -> None:
    """A server.json edited or restored with another id: `list` showed the server twice (the state absent, the process
    "local only") and `delete NAME` said it was already gone, removed the token and key and left the server serving."""
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "edited", "--ports", str(free_port("127.0.0.2")), "--json",
                      "--state-dir", str(state))
    assert created.code == 0, created.err
    pid = int(created.json()["id"])
    try:
        meta_file = state / "edited" / "server.json"
        meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"id": "12"}))
        listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
        rows = [(row["name"], row["id"], row["status"], row["where"]) for row in listed.json()["servers"]]
        assert rows == [("edited", str(pid), "active", "both")], listed.out
        deleted = run_cli(capsys, "delete", "edited", "--state-dir", str(state))
        assert deleted.code == 0 and f"deleted edited (local {pid})" in deleted.out, deleted
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid) and not (state / "edited").exists()
    finally:
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
