"""Where inletsctl keeps exit servers without --state-dir: a relative $XDG_CONFIG_HOME kept them under the current
folder (the XDG Base Directory spec says to ignore it), and a blank $HOME put them in /.config/inletsctl, at the
filesystem root. ~ is $HOME, else the passwd entry's home (as OpenSSH takes it); with neither, one line."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.prov_support import INLETSCTL, Result, one_line_error, user_env


def _inletsctl(cwd: Path, env: dict[str, str], *args: str, wrap: tuple[str, ...] = ()) -> Result:
    """``inletsctl ARGS`` run in ``cwd`` with ``env``, no $XDG_CONFIG_HOME unless given, as a user would."""
    environment = {k: v for k, v in user_env().items() if k != "XDG_CONFIG_HOME"} | env
    proc = subprocess.run([*wrap, str(INLETSCTL), *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=environment, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _looked_in(result: Result) -> str:
    """The state root that ``status NAME`` of a name kept nowhere says it looked in."""
    line = one_line_error(result, "no exit server named 'nosuch' in ")
    return line.split(" in ", 1)[1].split(" (", 1)[0]


@pytest.mark.parametrize("config", ["rel", "rel/dir", " "])
def test_a_relative_xdg_config_home_is_ignored(tmp_path: Path, config: str) -> None:
    home = tmp_path / "home"
    result = _inletsctl(tmp_path, {"HOME": str(home), "XDG_CONFIG_HOME": config}, "status", "nosuch")
    assert _looked_in(result) == str(home / ".config" / "inletsctl"), result.err
    absolute = _inletsctl(tmp_path, {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}, "status", "nosuch")
    assert _looked_in(absolute) == str(tmp_path / "cfg" / "inletsctl"), absolute.err  # an absolute one: as before


@pytest.mark.parametrize("home", ["", "rel"])
def test_a_blank_or_relative_home_is_the_passwd_entrys(tmp_path: Path, home: str) -> None:
    """Only read here: the passwd home is the real one of the user running the tests."""
    result = _inletsctl(tmp_path, {"HOME": home}, "status", "nosuch")
    assert _looked_in(result) == str(Path(pwd.getpwuid(os.getuid()).pw_dir) / ".config" / "inletsctl"), result.err


def _as_uid_without_passwd_entry() -> tuple[str, ...]:
    """A prefix that runs a command as a uid no passwd entry names (a container's ``--user 54321``), in a user
    namespace of its own: its files are still those of the user running the tests."""
    uid = 54321
    try:
        pwd.getpwuid(uid)
        pytest.skip(f"uid {uid} has a passwd entry here")
    except KeyError:
        pass
    wrap = ("unshare", "--user", f"--map-user={uid}", f"--map-group={uid}")
    if shutil.which("unshare") is None or subprocess.run([*wrap, "true"], capture_output=True, timeout=10).returncode:
        pytest.skip("unshare cannot make a user namespace here")
    return wrap


def test_no_home_at_all_is_refused_in_one_line(tmp_path: Path) -> None:
    wrap = _as_uid_without_passwd_entry()
    words = ("no home folder to keep exit servers in: $HOME is not an absolute path and this user has no home in "
             "/etc/passwd; set HOME, or give --state-dir (or $INLETSCTL_STATE_DIR)")
    one_line_error(_inletsctl(tmp_path, {"HOME": ""}, "status", "nosuch", wrap=wrap), words)
    listed = _inletsctl(tmp_path, {"HOME": ""}, "list", "--json", wrap=wrap)
    assert listed.code == 1 and listed.json()["error"] == words and listed.json()["state"] == "invalid", listed
    given = _inletsctl(tmp_path, {"HOME": ""}, "list", "--state-dir", str(tmp_path / "state"), wrap=wrap)
    assert (given.code, given.out) == (0, "no exit servers\n"), given  # --state-dir needs no home
