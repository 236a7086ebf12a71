"""inletsctl's output on a stdout that cannot take it (a full disk): one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.prov_support import INLETSCTL, free_port, run_inletsctl, user_env


def _to_full_disk(*args: str) -> subprocess.CompletedProcess[str]:
    """``inletsctl ARGS > /dev/full``: every write to stdout fails with ENOSPC, as on a full disk."""
    with open("/dev/full", "w") as full:
        return subprocess.run([str(INLETSCTL), *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                              env=user_env(), stdin=subprocess.DEVNULL)


def test_a_summary_that_cannot_be_written_names_the_server_made_and_list_says_why(tmp_path: Path) -> None:
    """`inletsctl create > file` on a full disk made the exit server, then ended in a traceback of print(), saying
    neither that the server runs nor how to see its client command; `list` and `status` did the same."""
    state = tmp_path / "state"
    try:
        for extra in ((), ("--json",)):
            created = _to_full_disk("create", "full-disk", "--ports", str(free_port("127.0.0.2")),
                                    "--state-dir", str(state), *extra)
            assert created.returncode == 1 and "Traceback" not in created.stderr, created.stderr
            errors = [line for line in created.stderr.splitlines() if "error:" in line]
            assert errors == [f"inletsctl: error: exit server 'full-disk' is ready, but its summary could not be "
                              f"written (No space left on device); see its client command with: "
                              f"inletsctl status full-disk --state-dir {state}"], created.stderr
            shown = run_inletsctl("status", "full-disk", "--state-dir", str(state), "--json")
            assert shown.code == 0 and shown.json()["client_command"], shown.err
            for command in (("list",), ("list", "--json"), ("status", "full-disk", "--json")):
                listed = _to_full_disk(*command, "--state-dir", str(state))
                assert listed.returncode == 1, listed.stderr
                assert listed.stderr == ("inletsctl: error: No space left on device writing the output: make room "
                                         "(or write elsewhere) and run it again\n"), listed.stderr
            assert run_inletsctl("delete", "full-disk", "--state-dir", str(state)).code == 0
    finally:
        run_inletsctl("delete", "full-disk", "--state-dir", str(state))


def test_a_reader_that_stops_early_gets_no_error_message(tmp_path: Path) -> None:
    """`inletsctl list | head -1`: the closed pipe is the reader's choice, not an error to report."""
    state = tmp_path / "state"
    (state / "some-name").mkdir(parents=True)
    (state / "some-name" / "server.json").write_text("{")  # one damaged row: list has something to print
    proc = subprocess.Popen([str(INLETSCTL), "list", "--state-dir", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=user_env(), stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception ignored" not in err, err


def test_printed_commands_name_inletsctl_and_inlets_by_path_when_path_does_not_find_them(tmp_path: Path) -> None:
    """Run by its path (a venv not activated), create printed `inletsctl delete NAME`, which the same shell then
    could not run ("inletsctl: command not found"); the client command already named inlets by its path."""
    import json
    import shlex

    state = tmp_path / "state"
    env = {**user_env(), "PATH": "/usr/bin:/bin"}  # no inlets, no inletsctl
    run = lambda *a: subprocess.run([str(INLETSCTL), *a, "--state-dir", str(state)],  # noqa: E731
                                    capture_output=True, text=True, timeout=90, env=env, stdin=subprocess.DEVNULL)
    created = run("create", "by-path", "--ports", str(free_port("127.0.0.2")), "--json")
    try:
        assert created.returncode == 0, created.stderr
        summary = json.loads(created.stdout)
        assert shlex.split(summary["delete_command"])[0] == str(INLETSCTL), summary["delete_command"]
        assert shlex.split(summary["client_command"])[0] == str(INLETSCTL.with_name("inlets"))
        deleted = subprocess.run(summary["delete_command"], shell=True, capture_output=True, text=True, timeout=90,
                                 env=env)  # exactly as printed, in that user's shell
        assert deleted.returncode == 0 and "deleted by-path" in deleted.stdout + deleted.stderr, deleted.stderr
    finally:
        run("delete", "by-path")
