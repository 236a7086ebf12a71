"""wheel.compact_source: the exit server's modules without docstrings, comments or hints, a tab a level.

Every byte of the wheel counts against the 64 KiB user-data of DigitalOcean, Scaleway and Equinix
(test_prov_clouds_limits.py); the code that runs must stay the code in the checkout.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

from inlets_py.provisioner import wheel as wheel_module
from inlets_py.provisioner.wheel import _sources_fingerprint, _tab_indented, build_runtime_wheel, compact_source

SAMPLE = '''
"""Module docstring."""
import textwrap


class Box:
    """Class docstring."""

    def __init__(self, items: list[int]) -> None:
        self.items = items  # a comment

    def total(self) -> str:
        text = """first
    indented in the string
        more"""
        table = {
            "a": 1,
            "b": [x for x in self.items if x > 1],
        }
        for item in self.items:
            if item % 2:
                while item > 10:
                    item -= 10
                table["a"] += item
        return f"{table['a']}|{sum(table['b'])}|{text!r}"
'''


def _run(source: str) -> str:
    scope: dict = {}
    exec(compile(source, "sample", "exec"), scope)
    return scope["Box"]([1, 2, 3, 25]).total()


def test_the_compact_module_is_tab_indented_and_does_what_the_source_does() -> None:
    compact = compact_source(SAMPLE)
    assert _run(compact) == _run(SAMPLE)
    assert "docstring" not in compact and "comment" not in compact and "list[int]" not in compact
    indented = [line for line in compact.splitlines() if line[:1].isspace()]
    assert len(indented) >= 10 and all(line.startswith("\t") and not line.lstrip("\t")[:1].isspace() for line in indented)
    assert "\t\t\t\t\titem -= 10" in compact.splitlines()


def test_leading_spaces_that_are_not_indentation_are_kept() -> None:
    """A string spread over lines (ast.unparse never writes one, a person might): tabs would change it."""
    source = 'def f():\n    return """a\n    b"""\n'
    assert _tab_indented(source) == source
    assert _tab_indented("def f():\n    return 1\n") == "def f():\n\treturn 1\n"


@pytest.mark.parametrize("mode,letsencrypt", [("tcp", False), ("http", False), ("http", True)])
def test_every_module_of_the_server_wheel_is_compact_and_compiles(mode: str, letsencrypt: bool) -> None:
    wheel = zipfile.ZipFile(io.BytesIO(build_runtime_wheel(mode, letsencrypt).data))
    modules = [name for name in wheel.namelist() if name.endswith(".py")]
    assert len(modules) > 30
    for name in modules:
        source = wheel.read(name).decode()
        ast.parse(source, name)
        assert not any(line.startswith(" ") for line in source.splitlines()), name


def test_the_wheel_is_built_once_per_set_of_sources(tmp_path, monkeypatch) -> None:
    """create, the tests and the Terraform generator ask for it often; an edited module makes another."""
    sources = tmp_path / "runtime"
    shutil.copytree(wheel_module._package_dir(), sources, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(wheel_module, "_package_dir", lambda: sources)
    first = build_runtime_wheel("tcp")
    assert build_runtime_wheel("tcp") is first
    assert build_runtime_wheel("http") is not first
    with open(sources / "core" / "mux.py", "a") as module:
        module.write("EDITED = 1\n")
    edited = build_runtime_wheel("tcp")
    assert edited is not first and b"EDITED = 1" in zipfile.ZipFile(io.BytesIO(edited.data)).read(
        "inlets_py/runtime/core/mux.py")
    before = _sources_fingerprint(sources)
    (sources / "core" / "unused.py").write_text("")  # a module added, even one nothing imports yet
    assert len(_sources_fingerprint(sources)) == len(before) + 1


def test_the_compacted_modules_are_kept_on_disk_for_the_next_inletsctl(tmp_path, monkeypatch) -> None:
    """Each ``create`` is a new process, which spent most of a second of CPU compacting the same modules again."""
    sources = tmp_path / "runtime"
    shutil.copytree(wheel_module._package_dir(), sources, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(wheel_module, "_package_dir", lambda: sources)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kept = tmp_path / "cache" / "inlets-py" / "server-wheel-tcp.json"
    made, third_party = wheel_module._compacted_modules("tcp", False)
    assert json.loads(kept.read_text())["modules"] == made and "websockets" in third_party
    wheel_module._build_runtime_wheel.cache_clear()
    cold = build_runtime_wheel("tcp")
    wheel_module._build_runtime_wheel.cache_clear()
    kept.unlink()
    assert build_runtime_wheel("tcp").data == cold.data  # from the cache, then made afresh: the same bytes

    entry = json.loads(kept.read_text())
    entry["modules"]["core/mux"] += "MARK = 1\n"
    kept.write_text(json.dumps(entry))
    assert wheel_module._compacted_modules("tcp", False)[0]["core/mux"].endswith("MARK = 1\n")  # read, not made
    with open(sources / "core" / "mux.py", "a") as module:
        module.write("EDITED = 1\n")
    again = wheel_module._compacted_modules("tcp", False)[0]["core/mux"]
    assert "EDITED = 1" in again and "MARK" not in again  # an edited module is made again, never the old entry

    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    assert wheel_module._compacted_modules("tcp", False)[0]["core/mux"] == again  # no cache: made all the same
    kept.write_text("{not json")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert wheel_module._compacted_modules("tcp", False)[0]["core/mux"] == again
    assert json.loads(kept.read_text())["modules"]["core/mux"] == again  # and the broken entry replaced



def test_a_cache_others_may_write_is_never_shipped_and_a_new_one_is_private(tmp_path, monkeypatch) -> None:
    """Under umask 002 the cache was 0775/0664: a group member edited its modules (keeping the key, a hash of the
    sources only), and the next create shipped their code in the wheel, run as root on the exit server."""
    sources = tmp_path / "runtime"
    shutil.copytree(wheel_module._package_dir(), sources, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(wheel_module, "_package_dir", lambda: sources)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "inlets-py"
    kept = folder / "server-wheel-tcp.json"
    old = os.umask(0o002)
    try:
        made = wheel_module._compacted_modules("tcp", False)[0]
    finally:
        os.umask(old)
    modes = [path.stat().st_mode & 0o777 for path in (tmp_path / "cache", folder, kept)]
    assert modes == [0o700, 0o700, 0o600]

    def tamper(mode: int, owner: int | None = None) -> None:
        entry = json.loads(kept.read_text())
        entry["modules"]["cli/main"] += "INJECTED = 1\n"
        kept.unlink()
        kept.write_text(json.dumps(entry))
        kept.chmod(mode)
        if owner is not None:
            os.chown(kept, owner, owner)

    def shipped() -> bytes:
        wheel_module._build_runtime_wheel.cache_clear()
        return zipfile.ZipFile(io.BytesIO(build_runtime_wheel("tcp").data)).read("inlets_py/runtime/cli/main.py")

    cases = [(0o664, None), (0o646, None)] + ([(0o644, 65534)] if os.geteuid() == 0 else [])
    for mode, owner in cases:
        tamper(mode, owner)
        assert b"INJECTED" not in shipped() and shipped().decode() == made["cli/main"], (mode, owner)
        assert (kept.stat().st_mode & 0o777, kept.stat().st_uid) == (0o600, os.geteuid())  # made afresh, private
        assert "INJECTED" not in kept.read_text()
    folder.chmod(0o775)  # as an earlier inletsctl made it: made private again, then its file is used
    tamper(0o600)
    assert b"INJECTED" in shipped() and folder.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:  # a folder another user owns: nothing in it is read, nor written there
        os.chown(folder, 65534, 65534)
        assert b"INJECTED" not in shipped() and "INJECTED" in kept.read_text()


def test_without_a_home_nothing_is_kept_and_the_modules_are_made() -> None:
    """A service's environment may have no $HOME and its user no passwd entry: then nothing is kept (never a folder
    named ``~`` in the working directory), and a relative $XDG_CACHE_HOME is ignored, as the XDG spec says."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run as a user without a home")
    with tempfile.TemporaryDirectory() as cwd:
        os.chmod(cwd, 0o777)
        script = ("from inlets_py.provisioner import wheel as w; print(w._cache_path('tcp', False)); "
                  "print('core/mux' in w._compacted_modules('tcp', False)[0])")
        run = subprocess.run([setpriv, "--reuid", "54321", "--regid", "54321", "--clear-groups", sys.executable, "-c",
                              script], env={"PATH": os.defpath, "XDG_CACHE_HOME": "relative/cache"}, cwd=cwd,
                             capture_output=True, text=True, timeout=60)
        assert (run.returncode, run.stdout.split()) == (0, ["None", "True"]), run.stderr
        assert os.listdir(cwd) == []
