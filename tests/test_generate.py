"""``--generate=systemd``: a unit whose own sandboxing would hide what it needs is refused; units pass
systemd-analyze."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fixtures.proxy_daemons import binary
from process_helpers import inlets

def _verified(tmp_path: Path, text: str, name: str = "inlets-http-client.service") -> str:
    unit = tmp_path / name
    unit.write_text(text)
    check = subprocess.run([binary("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stderr.strip() == "", check.stderr
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


# ------------------------------------------------------------- the unit's own sandbox


def test_a_file_under_tmp_is_refused_since_private_tmp_hides_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    result = inlets("tcp", "client", "--url", "wss://h:8123", "--token-file", str(token), "--upstream", "127.0.0.1",
                    "--ports", "80", "--generate=systemd")
    assert result.returncode == 2
    assert result.stderr == (f"inlets: error: --token-file {token} is under /tmp, which the unit's PrivateTmp=true "
                             "hides from the service: keep it elsewhere (e.g. /etc/inlets/) and give that path\n")


def test_an_inlets_under_tmp_is_refused_and_one_under_home_gets_a_readable_home(tmp_path: Path) -> None:
    installed = Path(sys.executable).with_name("inlets")  # this installation's command
    args = ["tcp", "client", "--url", "wss://h:8123", "--token-file", "/etc/inlets/token", "--upstream", "127.0.0.1",
            "--ports", "80", "--generate=systemd"]
    under_tmp = tmp_path / "bin"
    under_tmp.mkdir()
    (under_tmp / "inlets").symlink_to(installed)  # as if installed from a checkout under /tmp
    refused = inlets(*args, env={"PATH": f"{under_tmp}{os.pathsep}{os.environ['PATH']}"})
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"this inlets runs from {under_tmp / 'inlets'}, under /tmp, which the unit's PrivateTmp=true hides" in refused.stderr
    assert "pip install ." in refused.stderr
    home = Path(tempfile.mkdtemp(prefix="inlets-generate-", dir=Path.home()))
    if not (str(home) + "/").startswith(("/home/", "/root/")):
        shutil.rmtree(home)
        pytest.skip(f"this user's home {Path.home()} is not where ProtectHome= applies")
    try:
        (home / "inlets").symlink_to(installed)
        readable = inlets(*args, env={"PATH": f"{home}{os.pathsep}{os.environ['PATH']}"})
        assert readable.returncode == 0, readable.stderr
        assert "ProtectHome=read-only" in readable.stdout  # ProtectHome=true would make the command vanish
        exec_start = _verified(tmp_path, readable.stdout, "inlets-tcp-client.service")
        assert exec_start.startswith(f"ExecStart={home / 'inlets'} tcp client --url wss://h:8123 ")
    finally:
        shutil.rmtree(home)
