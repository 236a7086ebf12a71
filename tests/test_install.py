"""Installing as the README says: `pip install .` (not editable) gives working `inlets` and `inletsctl`
commands; the quick start's set-up says what it does; the embedded server wheel stands on its own."""

from __future__ import annotations

import io
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from helpers.readme_commands import Shell, block
from helpers.tunnel import TlsFiles, free_port

ROOT = Path(__file__).resolve().parent.parent


def venv_with(wheel: Path, venv: Path) -> Path:
    """A fresh venv with ``wheel`` installed; its dependencies come from the test environment (no
    network needed, and no editable finder runs), the project itself only from the wheel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if "site-packages" in p]
    (purelib / "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, timeout=300, capture_output=True)
    return venv


def test_readme_pip_install_gives_working_commands_outside_the_checkout(tmp_path: Path) -> None:
    """The README's `pip install .`, as printed, in a fresh virtualenv of the user's, offline: the
    dependencies are this environment's (through a .pth), the build uses this environment's setuptools."""
    try:
        import setuptools  # noqa: F401  # the build backend, used without build isolation
    except ImportError:
        pytest.skip("setuptools is not installed in the test environment, so the project cannot be built offline")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)  # with pip, as users make one
    # Python < 3.12 puts an old setuptools in every venv; online, pip's isolated build would fetch a new one
    subprocess.run([venv / "bin" / "python", "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True,
                   timeout=120)
    purelib = Path(subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if "site-packages" in p]
    (purelib / "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    shell = Shell(tmp_path / "user", path_with_inlets=False, env={"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"})
    code, out = shell.run(f"source {venv}/bin/activate\n{block('pip-install')}", timeout=300, cwd=_checkout(tmp_path))
    assert code == 0 and "Successfully installed inlets-py" in out, out[-3000:]
    assert "warning" not in out.lower(), out[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for command in ("inlets", "inletsctl"):
        result = subprocess.run(
            [venv / "bin" / command, "--help"], cwd=outside, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
    # a command that loads each mode's run modules (--help alone loads none: cli.run was left out of the wheel)
    (outside / "token").write_text("t" * 32 + "\n")
    for mode in ("tcp", "http"):
        ports = ["--allow-ports", "2222"] if mode == "tcp" else []  # what its Service publishes
        unit = subprocess.run([venv / "bin" / "inlets", mode, "server", "--plaintext", "--token-file", "token", *ports,
                               "--generate", "k8s_yaml"], cwd=outside, capture_output=True, text=True, timeout=60)
        assert unit.returncode == 0 and 'kind: "Deployment"' in unit.stdout, unit.stderr  # every string quoted
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import importlib.util; from inlets_py import runtime, provisioner; print(runtime.__file__, provisioner.__file__); "
         "print('top-level:', [n for n in ('runtime', 'provisioner', 'templates') if importlib.util.find_spec(n)])"],
        cwd=outside, capture_output=True, text=True, check=True,
    ).stdout
    assert str(ROOT) not in where and str(venv) in where, where
    assert "top-level: []" in where, where  # one import name, inlets_py: nothing to collide with
    templates = subprocess.run(
        [venv / "bin" / "python", "-c",
         "from importlib import resources; print(sorted(p.name for p in resources.files('inlets_py.templates').iterdir()))"],
        cwd=outside, capture_output=True, text=True, check=True,
    ).stdout
    assert "user-data.yaml.j2" in templates, "the cloud-init templates must ship inside the wheel"


def _checkout(tmp_path: Path) -> Path:
    """The files a clean clone builds from: a ``build/`` folder of an earlier build in the working tree would
    otherwise lend the wheel modules that pyproject's list leaves out."""
    copy = tmp_path / "checkout"
    copy.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, copy / item)
    for folder in ("runtime", "provisioner", "templates", "scripts"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_every_package_of_the_checkout_is_in_the_wheel() -> None:
    """pyproject lists the packages by hand (one import name over three folders): a new folder must be added."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"inlets_py.templates"} | {
        "inlets_py." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in ("runtime", "provisioner") for init in (ROOT / folder).rglob("__init__.py")
    }
    assert listed == found


def test_the_build_warns_about_nothing(tmp_path: Path) -> None:
    """pip shows the build's warnings on an editable install (the quick start's first run): none must come,
    such as setuptools' 'project.license as a TOML table is deprecated'."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(_checkout(tmp_path))],
        timeout=300, capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "warning" not in (built.stdout + built.stderr).lower(), built.stderr[-2000:]


def test_first_setup_says_what_it_installs_and_later_runs_are_silent(tmp_path: Path) -> None:
    """scripts/setup.sh (the quick start's first step) for real, offline: pip finds every dependency
    already installed (this environment's, through a .pth) and builds with this environment's setuptools."""
    copy = _checkout(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(copy / ".venv")], check=True, timeout=120)
    purelib = Path(subprocess.run(
        [copy / ".venv" / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # pip, setuptools and every dependency
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}  # offline: no index, no isolated build

    def setup() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=300)

    first = setup()
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 2 and first.stderr == "", first.stdout + first.stderr
    assert lines[0].startswith("setup: installing inlets-py") and "about a minute" in lines[0]
    assert re.fullmatch(r"setup: \.venv ready in \d+ s \(.*source \.venv/bin/activate\)", lines[1]), lines[1]
    assert (copy / ".venv" / "bin" / "inletsctl").exists()
    again = setup()
    assert again.returncode == 0 and again.stdout == again.stderr == "", again


#: the third-party packages each exit server imports, and so all its wheel declares
SERVER_DEPENDENCIES = {
    ("tcp", False): {"aiohappyeyeballs", "prometheus-client", "typer", "uvloop", "websockets"},  # races a --local name
    ("http", False): {"httptools", "prometheus-client", "typer", "uvloop", "websockets"},
    ("http", True): {"acme", "cryptography", "httptools", "josepy", "prometheus-client", "requests", "typer", "uvloop",
                     "websockets"},  # Let's Encrypt: its ACME client runs in a child process
}


@pytest.mark.parametrize("mode,letsencrypt", list(SERVER_DEPENDENCIES), ids=["tcp", "http", "http-letsencrypt"])
def test_the_server_wheel_declares_only_what_a_server_imports_and_serves_on_its_own(
    mode: str, letsencrypt: bool, tmp_path: Path, tls: TlsFiles, token: str
) -> None:
    """The wheel an exit server installs holds the server's modules and declares only the packages
    they import (not inletsctl's libcloud, paramiko, ...). Installed alone (not from this checkout,
    which an editable install would fall back to), it runs the server, which answers /healthz."""
    from importlib import metadata

    from inlets_py.provisioner.wheel import build_runtime_wheel
    from inlets_py.runtime.core.probe import Endpoint, get

    wheel = build_runtime_wheel(mode, letsencrypt=letsencrypt)
    metadata_text = zipfile.ZipFile(io.BytesIO(wheel.data)).read("inlets_py-0.1.0.dist-info/METADATA").decode()
    declared = {re.split(r"[^A-Za-z0-9._-]", line.removeprefix("Requires-Dist: "))[0].lower()
                for line in metadata_text.splitlines() if line.startswith("Requires-Dist: ")}
    installed = {name for name in SERVER_DEPENDENCIES[(mode, letsencrypt)] if _installed(metadata, name)}
    assert declared == installed, metadata_text
    path = tmp_path / wheel.filename
    path.write_bytes(wheel.data)
    venv = venv_with(path, tmp_path / "venv")
    modules = ["inlets_py.runtime.cli.main", "inlets_py.runtime.server.status", f"inlets_py.runtime.cli.{mode}_server"]
    modules += ["inlets_py.runtime.acme.https_front", "inlets_py.runtime.acme.letsencrypt", "inlets_py.runtime.acme.client"] if letsencrypt else []
    probe = "import importlib; from inlets_py import runtime; print(runtime.__file__); " + "; ".join(
        f"importlib.import_module({m!r})" for m in modules)
    result = subprocess.run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(venv) in result.stdout and str(ROOT) not in result.stdout
    version = subprocess.run([venv / "bin" / "inlets", "--version"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)  # the group callback's flag keeps its bool hint in the compacted source
    assert version.returncode == 0 and version.stdout.startswith("inlets "), version.stdout + version.stderr
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    ports = ["--allow-ports", "2222"] if mode == "tcp" else []
    for flags in (["--plaintext", "--generate", "systemd"], ["--auto-tls", "--auto-tls-path", str(tmp_path / "tls")]):
        # what the wheel leaves out (generate/, core/certs) is refused in one line that says what to do instead
        left_out = subprocess.run([venv / "bin" / "inlets", mode, "server", "--token-file", "token", *ports, *flags],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert left_out.returncode != 0 and left_out.stdout == "", left_out.stdout + left_out.stderr
        assert re.fullmatch(r"inlets: error: --\S+ is not in this server-only install of inlets [^\n]*\n",
                            left_out.stderr), left_out.stderr
    control, data = free_port(), free_port()
    data_flag = ["--allow-ports", str(data)] if mode == "tcp" else ["--port", str(data)]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [venv / "bin" / "inlets", mode, "server", "--control-addr", "127.0.0.1", "--control-port", str(control),
             "--data-addr", "127.0.0.1", "--token-file", str(tmp_path / "token"), "--tls-cert", str(tls.cert),
             "--tls-key", str(tls.key), *data_flag],
            cwd=tmp_path, stdout=out, stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = get(Endpoint("127.0.0.1", control, True, ""), "/healthz", ca_file=tls.ca, timeout=3)
                break
            except Exception:
                assert time.monotonic() < deadline and server.poll() is None, log.read_text()
                time.sleep(0.2)
        assert answer.status == 200, log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=15)


def _installed(metadata: object, name: str) -> bool:
    try:
        metadata.version(name)  # type: ignore[attr-defined]
        return True
    except Exception:
        return False
