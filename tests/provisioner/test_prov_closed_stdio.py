"""``inletsctl`` started with stdout closed (``>&-``, and stdin with it), as from a shell's redirection: the output
goes nowhere, without a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers.prov_support import INLETSCTL, user_env


@pytest.mark.parametrize("closed", [">&-", "<&- >&-"])
@pytest.mark.parametrize("command", [["--help"], ["list"], ["list", "--json"]])
def test_a_closed_stdout_is_no_traceback(tmp_path: Path, closed: str, command: list[str]) -> None:
    """``inletsctl list >&-`` ended in ``AttributeError: 'NoneType' object has no attribute 'flush'`` (sys.stdout
    was None) from the flush after the command, status 1."""
    if command[0] == "list":
        command = [*command, "--state-dir", str(tmp_path / "state")]
    result = subprocess.run(["sh", "-c", f'exec "$@" {closed}', "sh", str(INLETSCTL), *command],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60, env=user_env())
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
