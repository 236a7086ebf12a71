"""inletsctl's output where it was missing: ``list --json`` failures that printed no JSON, and ``create`` on a dumb
terminal (TERM=dumb), which showed no progress at all."""

from __future__ import annotations

import os
import pty
import subprocess
import time
from pathlib import Path

from helpers.prov_support import INLETSCTL, free_port, run_inletsctl, user_env


def test_list_json_prints_its_object_on_every_failure(tmp_path: Path) -> None:
    """`list --json --provider nosuch` printed {"servers", ..., "error", "state": "invalid"}, while a state folder
    that cannot be read, or a flag given empty, printed nothing on stdout: a script's jq read an empty document."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    state = tmp_path / "state"
    cases = [(("--state-dir", str(a_file)), 1, f"cannot read exit servers from {a_file}: {a_file} is a file"),
             (("--provider", "", "--state-dir", str(state)), 2, "--provider is empty"),
             (("--region", "", "--state-dir", str(state)), 2, "--region is empty"),
             (("--provider", "nosuch", "--state-dir", str(state)), 2, "unknown provider 'nosuch'")]  # as before
    for flags, status, words in cases:
        listed = run_inletsctl("list", "--json", *flags)
        assert listed.code == status, (flags, listed)
        assert listed.err.splitlines() == [f"inletsctl: error: {listed.json()['error']}"], (flags, listed.err)
        assert listed.json() == {"servers": [], "notes": [], "pruned": [], "error": listed.json()["error"],
                                 "state": "invalid"}, (flags, listed.out)
        assert words in listed.json()["error"], (flags, listed.json())
        plain = run_inletsctl("list", *flags)
        assert (plain.code, plain.out, plain.err) == (status, "", listed.err), (flags, plain)


def _read_until_exit(master: int, proc: subprocess.Popen, timeout: float) -> bytes:
    """Everything written to the terminal until ``proc`` exits (bounded): reading keeps it from blocking."""
    seen = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(master, False)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except BlockingIOError:
            chunk = None
        except OSError:  # EIO: every writer closed the terminal
            break
        if chunk:
            seen += chunk
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.01)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return seen


def test_a_dumb_terminal_gets_the_plain_progress_lines(tmp_path: Path) -> None:
    """rich's spinner draws nothing on a dumb terminal (Emacs' shell, some CI consoles), and create used it whenever
    stderr was a terminal: the first thing shown was "Exit server ... is ready." after seconds of silence."""
    state, name = tmp_path / "state", "dumb-term"
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(INLETSCTL), "create", name, "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state),
             "--timeout", "30"], env=user_env({"TERM": "dumb"}), stdin=subprocess.DEVNULL, stdout=slave,
            stderr=slave)
        os.close(slave)
        shown = _read_until_exit(master, proc, 60).decode(errors="replace").replace("\r\n", "\n")
        assert proc.returncode == 0, shown
        before = shown.split("Exit server")[0]
        assert f"inletsctl: creating '{name}' on local\n" in before, shown
        assert "\x1b" not in shown, shown  # no cursor movement either: a dumb terminal shows escapes as they are
        assert run_inletsctl("delete", name, "--state-dir", str(state)).code == 0
    finally:
        os.close(master)
        run_inletsctl("delete", name, "--state-dir", str(state))  # whatever failed above: no server left running
