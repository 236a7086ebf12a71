"""A non-editable install ships the templates: ``inletsctl`` renders user-data from the wheel alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_templates_and_renders_from_them(tmp_path: Path) -> None:
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed in this venv: cannot build the wheel offline")
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (77, 0):
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot build this project (SPDX license): "
                    "pip install -e '.[test]' brings a newer one")
    source = tmp_path / "src"
    source.mkdir()
    for item in ("pyproject.toml", "README.md"):
        if (ROOT / item).exists():
            shutil.copy(ROOT / item, source / item)
    for package in ("runtime", "provisioner", "templates"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=110,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel_path,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel_path).namelist()
    for template in ("user-data.yaml.j2", "inlets.service.j2", "client-command.j2", "inlets-expire.timer.j2"):
        assert f"inlets_py/templates/{template}" in names, template
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel_path)],
                             capture_output=True, text=True, timeout=110)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import inlets_py.provisioner.render as r, inlets_py.provisioner.spec as s, inlets_py.provisioner.material as m\n"
        "from inlets_py.runtime.generate.templating import template_dir; print(template_dir())\n"
        "text = r.user_data(s.build_spec('tcp', '80', []), m.generate('x'), r.UserDataOptions('x', 'inlets-py==0.1.0'))\n"
        "assert text.startswith('#cloud-config')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip().startswith(str(target)), ran.stdout
