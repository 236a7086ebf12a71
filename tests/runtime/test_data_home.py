"""Where ``inlets`` keeps --auto-tls's CA and Let's Encrypt's keys by default: a blank $HOME put them in
/.local/share/inlets, at the filesystem root, a relative one under the folder the server started in. ~ is $HOME,
else the passwd entry's home (as OpenSSH takes it); with neither, the server refuses in one line."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.process import INLETS
from helpers.tunnel import free_port


@pytest.mark.parametrize("home", ["", "rel", "rel/dir"])
def test_a_blank_or_relative_home_is_the_passwd_entrys(monkeypatch: pytest.MonkeyPatch, home: str) -> None:
    from inlets_py.runtime.cli.config import default_data_dir

    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    assert default_data_dir() == Path(pwd.getpwuid(os.getuid()).pw_dir) / ".local" / "share" / "inlets"


def test_a_server_with_no_home_at_all_refuses_auto_tls_in_one_line(tmp_path: Path, token_file: Path) -> None:
    """A uid no passwd entry names (a container's ``--user 54321``), in a user namespace of its own, with HOME
    relative (blank put the CA in /.local/share/inlets, which this test must not write): --auto-tls made its CA under
    the current folder; now it says where to put it instead."""
    uid = 54321
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    wrap = ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}"]
    if shutil.which("unshare") is None or subprocess.run([*wrap, "true"], capture_output=True, timeout=10).returncode:
        pytest.skip("unshare cannot make a user namespace here")
    environment = {k: v for k, v in os.environ.items() if k != "XDG_DATA_HOME"} | {"HOME": "rel"}
    result = subprocess.run(
        [*wrap, *INLETS, "tcp", "server", "--auto-tls", "--control-addr", "127.0.0.1", "--control-port",
         str(free_port()), "--data-addr", "127.0.0.1", "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=15, cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "inlets: error: no home folder to keep inlets' keys in: $HOME is not an absolute path and this user has no "
        "home in /etc/passwd; set HOME or XDG_DATA_HOME, or give --auto-tls-path (--letsencrypt-path)"], result.stderr
    assert not (tmp_path / "rel").exists()
