"""`pip install .` (not editable) gives working `inlets` and `inletsctl` commands."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_into_a_fresh_venv_with_working_commands(tmp_path: Path) -> None:
    try:
        import setuptools  # noqa: F401  # the build backend, used without build isolation
    except ImportError:
        pytest.skip("setuptools is not installed in the test environment, so the wheel cannot be built offline")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True, timeout=300, capture_output=True,
    )
    (wheel,) = wheels.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # Dependencies come from the test environment (no network needed); the project itself only from the wheel.
    purelib = Path(subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if "site-packages" in p]
    (purelib / "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q", str(wheel)],
        check=True, timeout=300, capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for command in ("inlets", "inletsctl"):
        result = subprocess.run(
            [venv / "bin" / command, "--help"], cwd=outside, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import runtime, provisioner; print(runtime.__file__, provisioner.__file__)"],
        cwd=outside, capture_output=True, text=True, check=True,
    ).stdout
    assert str(ROOT) not in where and str(venv) in where, where
    templates = subprocess.run(
        [venv / "bin" / "python", "-c",
         "from importlib import resources; print(sorted(p.name for p in resources.files('provisioner.templates').iterdir()))"],
        cwd=outside, capture_output=True, text=True, check=True,
    ).stdout
    assert "user-data.yaml.j2" in templates, "the cloud-init templates must ship inside the wheel"


def test_the_embedded_server_wheel_runs_servers_on_its_own(tmp_path: Path) -> None:
    """inletsctl embeds a server-only wheel in user-data: every server module must import from it
    alone (not from this checkout, which an editable install would fall back to)."""
    from provisioner.wheel import build_runtime_wheel

    for letsencrypt in (False, True):
        wheel = build_runtime_wheel(letsencrypt=letsencrypt)
        path = tmp_path / f"le{int(letsencrypt)}" / wheel.filename
        path.parent.mkdir()
        path.write_bytes(wheel.data)
        venv = tmp_path / f"venv{int(letsencrypt)}"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        purelib = Path(subprocess.run(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip())
        deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if "site-packages" in p]
        (purelib / "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")  # dependencies only: no finder runs
        subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                        "-q", str(path)], check=True, timeout=300, capture_output=True)
        modules = ["runtime.cli", "runtime.http_server", "runtime.status"]  # a Let's Encrypt server is an HTTP one
        modules += ["runtime.https_front", "runtime.letsencrypt"] if letsencrypt else ["runtime.tcp_server", "runtime.udp"]
        probe = "import importlib, runtime; print(runtime.__file__); " + "; ".join(
            f"importlib.import_module({m!r})" for m in modules)
        result = subprocess.run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert str(venv) in result.stdout and str(ROOT) not in result.stdout
        for command in (["tcp", "server", "--help"], ["http", "server", "--help"]):
            assert subprocess.run([venv / "bin" / "inlets", *command], cwd=tmp_path, capture_output=True,
                                  timeout=60).returncode == 0
