"""An inlets the unit's user can run, for the tests that generate a systemd unit.

``--generate=systemd`` refuses a unit whose user ``inlets`` could not reach what it runs
(runtime/generate/reachable.py). This checkout's .venv may be made from a Python behind a folder others cannot
enter (pyenv's, under /root 0700), so those tests run ``inlets`` from this installation when that user could run
it, and otherwise from ``.venv/service-python3.X``: a venv of the system's Python of the same version
(/usr/bin/python3.X), which loads this .venv's packages and this checkout (the editable install) through a .pth
file, with an ``inlets`` script as pip writes one. The unit such a run prints really starts as another user
(tests/runtime/test_unit_reachable.py runs its command as ``nobody``). Made once and reused, under a lock, as
pytest-xdist's workers may ask for it together. No such Python, or a checkout others cannot enter: the tests skip
and say why.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from inlets_py.runtime.generate import reachable
from inlets_py.runtime.generate.service import PRIVATE_TMP_DIRS, SERVICE_USER, _runtime_paths

ROOT = Path(__file__).resolve().parents[2]
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
MAIN = "from inlets_py.runtime.cli.main import main; main()"
RUN = reachable.READ | reachable.EXECUTE


@dataclass(frozen=True)
class ServiceInlets:
    python: Path  # the Python the unit's ExecStart ends up running
    bin: Path  # the folder of its ``inlets``, beside ``python``: the one --generate writes into ExecStart

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The caller's environment with ``extra``; PATH, unless ``extra`` gives one, starts with ``bin``."""
        return {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
        """``inlets ARGS`` as helpers.process.inlets runs it, with this Python and its ``inlets`` on PATH."""
        return subprocess.run([str(self.python), "-c", MAIN, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, env=self.env(env))


def first_blocked(paths: list[str]) -> reachable.Blocked | None:
    return next((found for p in paths if (found := reachable.blocked(p, SERVICE_USER, RUN))), None)


def make_venv(dest: Path, python: str) -> Path:
    """A venv of ``python`` at ``dest`` that imports this .venv's packages and this checkout, with an ``inlets``
    script; every part readable by all (``dest`` itself keeps the mode it has). Returns its bin folder."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True, timeout=120)
    paths = sysconfig.get_paths()
    folders = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    site = dest / "lib" / f"python{VERSION}" / "site-packages"
    (site / "inlets-checkout.pth").write_text("".join(f"import site; site.addsitedir({f!r})\n" for f in folders))
    script = dest / "bin" / "inlets"
    script.write_text(f"#!{dest / 'bin' / 'python'}\nimport sys\nfrom inlets_py.runtime.cli.main import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            if not (Path(folder) / name).is_symlink():
                (Path(folder) / name).chmod(0o755 if name in dirs or Path(folder) == dest / "bin" else 0o644)
    return dest / "bin"


def _build(dest: Path, python: str) -> None:
    ready = dest / ".ready"
    with open(ROOT / ".venv" / ".service-python.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return
        shutil.rmtree(dest, ignore_errors=True)  # a build another session left half done
        dest.mkdir(mode=0o755)
        dest.chmod(0o755)
        make_venv(dest, python)
        check = subprocess.run([str(dest / "bin" / "inlets"), "tcp", "server", "--help"], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, f"{dest} was made but its inlets does not run:\n{check.stderr}"
        ready.touch()


@lru_cache(maxsize=1)
def _find() -> ServiceInlets | str:
    own = Path(sys.executable).with_name("inlets")
    hidden = [p for p in _runtime_paths([str(own)]) + [str(ROOT)]
              if any((q + "/").startswith(PRIVATE_TMP_DIRS) for q in (p, os.path.realpath(p)))]
    if hidden:  # the unit's PrivateTmp=true hides it from the service; a venv made in this checkout would be too
        return (f"this checkout's inlets runs from {hidden[0]}, under /tmp or /var/tmp, which the unit's "
                "PrivateTmp=true hides from the service: clone the checkout elsewhere to run these tests")
    if not (blocked := first_blocked(_runtime_paths([str(own)]))):
        return ServiceInlets(Path(sys.executable), own.parent)
    why = f"this .venv's inlets needs {blocked.named()}, but {blocked.reason(SERVICE_USER)}"
    system = next((p for p in (f"/usr/bin/python{VERSION}", f"/usr/local/bin/python{VERSION}")
                   if os.path.exists(p) and not first_blocked([p])), None)
    if system is None:
        return f"{why}, and there is no /usr/bin/python{VERSION} to make one it can run (apt-get install python{VERSION})"
    dest = ROOT / ".venv" / f"service-python{VERSION}"
    _build(dest, system)
    site = [sysconfig.get_paths()["purelib"], str(ROOT / "runtime")]
    if blocked := first_blocked([str(dest / "bin" / "inlets"), str(dest / "bin" / "python"), *site]):
        return f"{why}, and a venv of {system} in this checkout would not help: {blocked.reason(SERVICE_USER)}"
    return ServiceInlets(dest / "bin" / "python", dest / "bin")


def service_inlets() -> ServiceInlets:
    """The installation to generate systemd units with; skips the test (saying why) if there is none."""
    found = _find()
    if isinstance(found, str):
        pytest.skip(f"--generate=systemd refuses units from here: {found}")
    return found


def unit_inlets(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    """``inlets ARGS`` run from ``service_inlets()``: for the tests whose ``--generate=systemd`` must print a unit."""
    return service_inlets().run(*args, env=env, timeout=timeout)


@contextmanager
def folder_outside_tmp(mode: int = 0o755) -> Iterator[Path]:
    """A scratch folder of ``mode`` in this checkout, removed after: a unit may not name /tmp (its PrivateTmp=true
    hides it), and the checkout is where every user may enter when ``service_inlets()`` has not skipped."""
    folder = Path(tempfile.mkdtemp(prefix=".generate-test-", dir=ROOT))
    try:
        folder.chmod(mode)
        yield folder
    finally:
        shutil.rmtree(folder)
