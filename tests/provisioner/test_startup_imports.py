"""What the real ``inletsctl`` imports: each command only what it uses.

Every command reads each provider's PROVIDER declaration (the help text and the flag checks are written from
them), so a cloud SDK imported beside a declaration was loaded by ``--help`` too: libcloud (with requests and
paramiko) cost ~1 s of CPU on every invocation. The installed ``inletsctl`` script runs in a child process as a
user runs it, and reports the child's ``sys.modules`` as it exits (``-X importtime`` would miss what
``importlib.import_module`` loads: the provider modules themselves).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers.prov_support import Result, free_port, one_line_error, run_inletsctl

#: no command of the local provider, nor --help, needs a cloud SDK or SSH
CLOUD = {"libcloud", "paramiko", "requests", "hcloud", "scaleway", "scaleway_core"}
#: --help and flag errors render nothing, show no progress, dial nothing and make no certificate
RENDERING = {"jinja2", "rich", "websockets", "cryptography"}
#: ... nor the modules that create, wait (the TLS probe) and build the wheel: they need only the declarations
COMMANDS = {f"inlets_py.provisioner.{name}" for name in ("create", "manage", "status", "wait", "render", "wheel")}


#: runs the script named by argv[1] as its own ``__main__``, then writes ``sys.modules`` where $MODULES_OUT says
REPORT = (
    "import atexit, json, os, runpy, sys\n"
    "atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w').write(json.dumps(sorted(sys.modules))))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def imported(out: Path, *args: str) -> tuple[Result, set[str]]:
    """Run ``inletsctl ARGS``: its result, and the modules loaded when it exited."""
    report = out / "modules.json"
    report.unlink(missing_ok=True)
    result = run_inletsctl(*args, env={"MODULES_OUT": str(report)}, wrap=(sys.executable, "-c", REPORT))
    names = set(json.loads(report.read_text()))
    assert "inlets_py.provisioner.cli" in names  # the report is the command's
    return result, names


def packages(names: set[str]) -> set[str]:
    return {name.split(".", 1)[0] for name in names}


@pytest.mark.parametrize("args, shown", [
    (["--help"], "Usage: inletsctl [OPTIONS] COMMAND"),
    (["create", "--help"], "scaleway"),  # --provider's help, written from the declarations
    (["create", "--provider", "local", "--help"], "hetzner $HCLOUD_TOKEN"),  # --access-token-file's
])
def test_help_imports_no_sdk_and_nothing_it_does_not_show(tmp_path: Path, args: list[str], shown: str) -> None:
    result, names = imported(tmp_path, *args)
    assert result.code == 0, result.err
    assert shown in " ".join(result.out.split())
    assert "inlets_py.provisioner.providers.scaleway" in names  # every declaration was read
    assert packages(names) & (CLOUD | RENDERING) == set()
    assert names & COMMANDS == set()


def test_flag_error_imports_no_sdk(tmp_path: Path) -> None:
    """A flag the provider does not read: refused after every declaration is read, before anything is made."""
    result, names = imported(tmp_path, "create", "--provider", "local", "--region", "eu-west-1", "--state-dir", str(tmp_path))
    assert result.code != 0
    assert "--region does not apply to --provider local" in one_line_error(result)
    assert packages(names) & (CLOUD | RENDERING) == set()
    assert names & COMMANDS == set()


def test_local_create_list_delete_import_no_cloud_sdk(tmp_path: Path) -> None:
    """The local provider's whole life: a real exit server started, listed and deleted, without a cloud SDK."""
    state = ["--state-dir", str(tmp_path / "state")]
    created, names = imported(tmp_path, "create", "quick-fox", "--provider", "local", "--ports", str(free_port()), *state)
    try:
        assert created.code == 0, created.err
        assert "inlets_py.provisioner.providers.local" in names
        assert packages(names) & CLOUD == set()
        listed, names = imported(tmp_path, "list", "--provider", "local", *state)
        assert listed.code == 0 and "quick-fox" in listed.out, listed.err
        assert packages(names) & CLOUD == set()
    finally:
        deleted, names = imported(tmp_path, "delete", "quick-fox", *state)
    assert deleted.code == 0 and "deleted quick-fox" in deleted.out, deleted.err
    assert packages(names) & CLOUD == set()
