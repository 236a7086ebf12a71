"""``--generate=systemd`` refuses a unit its user ``inlets`` could not start: an inlets, its Python (a venv's link
into a pyenv under /root, 0700) or a file it names behind a folder that user cannot enter failed every start with
"Permission denied" (runtime/generate/reachable.py). Real folders, modes and owners; the kernel's own answer is
asked by running the command as ``nobody`` (as root), the check's for the same paths compared with it."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.process import ROOT, inlets
from helpers.service_python import VERSION, folder_outside_tmp, make_venv, service_inlets, unit_inlets

from inlets_py.runtime.generate import reachable
from inlets_py.runtime.generate.service import PRIVATE_TMP_DIRS

CLIENT = ["tcp", "client", "--url", "wss://203.0.113.10:8123", "--upstream", "127.0.0.1", "--ports", "80"]
FIX_RUNTIME = ("install inlets where every user can read it, with a Python every user can run (e.g. /usr/bin/python3 "
               "-m venv /opt/inlets && /opt/inlets/bin/pip install .), and run /opt/inlets/bin/inlets ... "
               "--generate=systemd")


def _owner(path: Path) -> str:
    info = path.stat()
    return f"{pwd.getpwuid(info.st_uid).pw_name}:{grp.getgrgid(info.st_gid).gr_name}"


def _as_nobody(*argv: str) -> subprocess.CompletedProcess:
    """``argv`` run as the user nobody, in no other group: the kernel's answer to "could another user run this?".
    (Not setpriv: it keeps root's capabilities until its exec, which then finds any program, behind any folder.)"""
    if os.geteuid() != 0:
        pytest.skip("running a command as another user needs root")
    nobody = pwd.getpwnam("nobody")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/", user=nobody.pw_uid,
                              group=nobody.pw_gid, extra_groups=[])
    except PermissionError as exc:  # the exec itself, as systemd's status 203/EXEC
        return subprocess.CompletedProcess(argv, 126, "", str(exc))


def _exec_start(unit: str) -> list[str]:
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()  # the paths here hold no space, quote or %


@pytest.mark.parametrize("how", ["copy", "link"])
def test_a_python_behind_a_folder_the_user_cannot_enter_is_refused(how: str) -> None:
    """A venv others can enter whose python leads into a 0700 folder, as this checkout's .venv into /root/.pyenv:
    the real path (a copy there) or only a link on the way (a link there) is behind it."""
    base = os.path.realpath(service_inlets().python)
    with folder_outside_tmp(0o700) as closed, folder_outside_tmp() as venv:
        bin_dir = make_venv(venv / "v", str(service_inlets().python))
        python = closed / f"python{VERSION}"
        if how == "copy":
            shutil.copy2(base, python)
        else:
            python.symlink_to(base)
        (bin_dir / f"python{VERSION}").unlink()
        (bin_dir / f"python{VERSION}").symlink_to(python)
        assert subprocess.run([bin_dir / "inlets", "--help"], capture_output=True, timeout=60).returncode == 0  # as root
        result = subprocess.run([bin_dir / "python", "-m", "inlets_py.runtime", *CLIENT, "--generate=systemd"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
        assert result.returncode == 2 and result.stdout == "", result
        assert result.stderr == (f"inlets: error: this inlets needs {bin_dir / 'python'} (which leads to {python}), but "
                                 f"the unit's user inlets cannot enter {closed} (0700, {_owner(closed)}): {FIX_RUNTIME}\n")
        denied = _as_nobody(str(bin_dir / "inlets"), "--help")  # what the unit would have met at every start
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied


def test_this_venvs_own_inlets_is_refused_exactly_when_another_user_could_not_run_it() -> None:
    """Here this .venv's Python is a link into /root/.pyenv (0700): the kernel refuses it to other users, and so
    does --generate. Where it is not, both accept it. Either way they agree."""
    own = Path(sys.executable).with_name("inlets")
    if (str(own.resolve()) + "/").startswith(PRIVATE_TMP_DIRS) or (str(own) + "/").startswith(PRIVATE_TMP_DIRS):
        pytest.skip(f"{own} is under /tmp, which --generate refuses first (the unit's PrivateTmp=true hides it)")
    ran = _as_nobody(str(own), "tcp", "client", "--help")
    generated = inlets(*CLIENT, "--token-file", "/etc/inlets/token", "--generate=systemd")
    assert (generated.returncode == 0) == (ran.returncode == 0), (generated.stderr, ran.stderr)
    if ran.returncode != 0:
        assert "Permission denied" in ran.stderr, ran.stderr
        assert generated.stderr.startswith("inlets: error: this inlets needs ") and "cannot enter" in generated.stderr
        assert generated.stderr.endswith(f"{FIX_RUNTIME}\n") and generated.stderr.count("\n") == 1, generated.stderr


def test_the_unit_printed_from_service_inlets_really_runs_as_another_user() -> None:
    """The tests' installation (helpers/service_python.py) is no way around the check: the command its unit names
    starts as an unprivileged user, with the Python, the standard library, the packages and this checkout."""
    unit = unit_inlets(*CLIENT, "--token-file", "/etc/inlets/token", "--generate=systemd")
    assert unit.returncode == 0, unit.stderr
    command = _exec_start(unit.stdout)[0]
    ran = _as_nobody(command, "tcp", "client", "--help")
    assert ran.returncode == 0 and "Usage: inlets tcp client" in ran.stdout, ran


def test_a_token_file_in_a_folder_the_user_cannot_enter_is_refused() -> None:
    """The setup line chowns the file to the user, not the folders on its way: a 0700 one refused it at every start.
    The same folder with others' x passes."""
    with folder_outside_tmp(0o700) as closed:
        token = closed / "token"
        token.write_text("tok-Rq7\n")
        token.chmod(0o600)
        refused = unit_inlets(*CLIENT, "--token-file", str(token), "--generate=systemd")
        assert refused.returncode == 2 and refused.stdout == "", refused
        assert refused.stderr == (f"inlets: error: --token-file {token}: the unit's user inlets cannot enter {closed} "
                                  f"(0700, {_owner(closed)}): keep it in a folder user inlets can enter (e.g. "
                                  "/etc/inlets/, 0750 root:inlets) and give that path\n")
        closed.chmod(0o711)
        passed = unit_inlets(*CLIENT, "--token-file", str(token), "--generate=systemd")
        assert passed.returncode == 0 and f"--token-file {token}" in " ".join(_exec_start(passed.stdout)), passed.stderr


def test_a_folder_the_server_writes_under_a_closed_folder_is_refused() -> None:
    with folder_outside_tmp(0o700) as closed:
        certs = closed / "certs"
        result = unit_inlets("tcp", "server", "--auto-tls", "--auto-tls-path", str(certs), "--token-file",
                             "/etc/inlets/token", "--generate=systemd")
        assert result.returncode == 2 and result.stdout == "", result
        assert result.stderr == (f"inlets: error: --auto-tls-path {certs}: the unit's user inlets cannot enter {closed} "
                                 f"(0700, {_owner(closed)}): leave --auto-tls-path out (the unit keeps its certificates "
                                 "in its StateDirectory, /var/lib/inlets) or give a folder user inlets can enter\n")


def test_a_folder_the_service_user_owns_passes() -> None:
    try:
        user = pwd.getpwnam("inlets")
    except KeyError:
        pytest.skip("there is no user inlets here (the unit's setup line makes it): the rule is checked with "
                    "the user nobody in test_the_kernels_rule_for_owner_group_and_others")
    if os.geteuid() != 0:
        pytest.skip("handing a folder to the user inlets needs root")
    with folder_outside_tmp(0o700) as owned:
        os.chown(owned, user.pw_uid, user.pw_gid)
        result = unit_inlets(*CLIENT, "--token-file", str(owned / "token"), "--generate=systemd")
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mode, owner, group, passes", [
    (0o700, "nobody", "root", True),  # the owner's bits count for the owner
    (0o700, "root", "root", False),
    (0o710, "root", "nobody's group", True),  # its primary group (Debian's nogroup)
    (0o710, "root", "root", False),
    (0o701, "root", "root", True),  # the others' bits
    (0o077, "nobody", "root", False),  # an owner gets only the owner's bits, whatever the others may
])
def test_the_kernels_rule_for_owner_group_and_others(mode: int, owner: str, group: str, passes: bool) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving folders to other users needs root")
    with folder_outside_tmp() as scratch:
        closed = scratch / "folder"
        closed.mkdir()
        (closed / "token").write_text("t\n")  # readable by all: only the way in is in question
        gid = pwd.getpwnam("nobody").pw_gid if group == "nobody's group" else grp.getgrnam(group).gr_gid
        os.chown(closed, pwd.getpwnam(owner).pw_uid, gid)
        group = grp.getgrgid(gid).gr_name
        closed.chmod(mode)
        found = reachable.blocked(str(closed / "token"), "nobody")
        assert (found is None) == passes, found
        assert (_as_nobody("cat", str(closed / "token")).returncode == 0) == passes  # the kernel agrees
        if found:
            assert found.reason("nobody") == f"the unit's user nobody cannot enter {closed} ({mode:04o}, {owner}:{group})"
        link = scratch / "link"  # a link others can pass on the way: what counts is where it leads
        link.symlink_to(closed)
        assert (reachable.blocked(str(link / "token"), "nobody") is None) == passes
        # a user not made yet owns nothing and is in no group: only the others' bits count
        assert (reachable.blocked(str(closed / "token"), "no-such-user-here") is None) == bool(mode & 0o001)
