"""``inletsctl create`` whose terminal closes under it (SIGHUP), run as a user runs it: on a terminal of its own.

A closed terminal window, a dropped SSH session: the kernel hangs up the terminal and sends SIGHUP to the session.
create then died by the signal (status -1 to Python, 129 to a shell) without a word, its exit server left running;
once SIGHUP was taken as Ctrl-C is, the spinner's last write and the error line (EIO on the closed terminal) made
it exit 1 with a traceback instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import subprocess
import termios
import time
from pathlib import Path
from typing import Callable

import pytest

from helpers.prov_support import INLETSCTL, Result, one_line_error, run_inletsctl, user_env
from helpers.tunnel import free_port


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def _own_terminal(slave: int) -> Callable[[], None]:
    def take() -> None:  # in the child, after start_new_session's setsid: the terminal becomes its controlling one
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    return take


def _meta(state: Path, name: str) -> dict:
    try:
        return json.loads((state / name / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def _drain(master: int) -> None:
    """Read what the spinner wrote, so that it never waits on a full terminal."""
    try:
        while True:
            os.set_blocking(master, False)
            if not os.read(master, 65536):
                return
    except OSError:  # EAGAIN: nothing more now
        return


@pytest.mark.parametrize("stderr_to", ["file", "terminal"])
def test_a_terminal_closed_while_create_waits_says_what_is_left_and_exits_129(tmp_path: Path, stderr_to: str) -> None:
    """The hang-up is taken as Ctrl-C is: exit 129 (128 + SIGHUP), and where stderr still goes somewhere (a log) one
    line naming the server left and the command that deletes it, which does; no traceback either way."""
    state, log = tmp_path / "state", tmp_path / "stderr.log"
    for attempt in range(3):  # the server may answer before the hang-up lands: then try again
        name = f"hangup-{attempt}"
        master, slave = pty.openpty()
        with open(log, "wb") as err_file:
            proc = subprocess.Popen(
                [str(INLETSCTL), "create", name, "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state),
                 "--timeout", "30"], env=user_env(), stdin=slave, stdout=slave,
                stderr=err_file if stderr_to == "file" else slave, start_new_session=True,
                preexec_fn=_own_terminal(slave))
        os.close(slave)
        pid = None
        try:
            deadline = time.monotonic() + 30
            while pid is None and proc.poll() is None and time.monotonic() < deadline:
                _drain(master)
                pid = _meta(state, name).get("id")
                time.sleep(0.005)
        finally:
            os.close(master)  # the terminal window closes: the kernel sends SIGHUP to its session
        try:
            proc.wait(timeout=30)
            if "client_command" in _meta(state, name):  # it was ready before the hang-up landed
                assert run_inletsctl("delete", name, "--state-dir", str(state)).code == 0
                continue
            assert pid is not None and proc.returncode == 129, (proc.returncode, log.read_text())
            if stderr_to == "file":
                one_line_error(Result(proc.returncode, "", log.read_text()),
                               f"interrupted: exit server {name!r} was left on local (id {pid}) without its client "
                               f"command; delete it with: inletsctl delete {name} --state-dir {state}")
            assert "Traceback" not in log.read_text() and _pid_alive(int(pid))
            listed = run_inletsctl("list", "--state-dir", str(state), "--json")
            assert [(r["name"], r["id"], r["where"]) for r in listed.json()["servers"]] == [(name, pid, "both")]
            deleted = run_inletsctl("delete", name, "--state-dir", str(state))
            assert deleted.code == 0 and not _pid_alive(int(pid)) and not (state / name).exists(), deleted
        finally:
            if proc.poll() is None:
                proc.kill()
            if pid is not None and _pid_alive(int(pid)):
                os.killpg(int(pid), signal.SIGTERM)
        return
    pytest.fail("create finished before the hang-up three times in a row")


def test_a_create_run_with_nohup_still_ignores_sighup(tmp_path: Path) -> None:
    """``nohup inletsctl create``: a SIGHUP ignored when create starts stays ignored; create finishes."""
    state, name = tmp_path / "state", "kept-on"
    proc = subprocess.Popen(
        [str(INLETSCTL), "create", name, "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state), "--json",
         "--timeout", "30"], env=user_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 30
        while not _meta(state, name).get("id") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and json.loads(out)["name"] == name, (proc.returncode, err)
    finally:
        assert run_inletsctl("delete", name, "--state-dir", str(state)).code == 0
