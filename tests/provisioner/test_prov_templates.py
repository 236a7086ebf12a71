"""Rendered cloud-init user-data: valid for cloud-init, hardened, failing loudly, and the same server flags everywhere."""

from __future__ import annotations

import datetime
import json
import shlex
from importlib import metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from inlets_py.provisioner.errors import ProvisionError
from inlets_py.provisioner.material import generate
from inlets_py.provisioner.render import (
    SYSCTL_FILE, UserDataOptions, client_command, fitting_user_data, systemd_unit, udp_sysctl, user_data, wheel_xz_base64,
)
from inlets_py.runtime.core.datagram import BURST_RECEIVE_BUFFER
from inlets_py.provisioner.spec import VM_FILES, build_spec, server_argv
from inlets_py.provisioner.wheel import build_runtime_wheel, constraints

EXPIRY = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
VARIANTS = {
    "tcp-defaults": (build_spec("tcp", None, []), {}),
    "tcp-low-and-high-ports": (build_spec("tcp", "22,80,443,5432", []), {}),
    "tcp-ttl": (build_spec("tcp", "80", []), {"expires_at": EXPIRY}),
    "http-domains": (build_spec("http", None, ["example.com", "api.example.com"]), {}),
    "http-catch-all-ttl": (build_spec("http", None, []), {"expires_at": EXPIRY}),
    "tcp-runtime-spec": (build_spec("tcp", "443", []), {"package": "inlets-py @ https://example.com/inlets_py-0.1.0-py3-none-any.whl"}),
    "tcp-pushed-wheel-ttl": (build_spec("tcp", "80,443", []), {"push": True, "expires_at": EXPIRY}),
    "http-domains-pushed-wheel": (build_spec("http", None, ["example.com"], http_port=8080), {"push": True}),
}
MATERIAL = generate("render-test")
#: Rendered for GCE's 256 KiB: no wheel embedded fits 64 KiB any more (inletsctl sends it there)
EMBEDDED_LIMIT = 256 * 1024


def _render(variant: str) -> tuple[str, object]:
    """The wheel embedded (inletsctl's default), pushed, or a runtime spec instead."""
    spec, extra = VARIANTS[variant]
    package = str(extra.get("package", ""))
    options = UserDataOptions(
        name=variant, package=package, wheel=None if package else build_runtime_wheel(spec.mode),  # type: ignore[attr-defined]
        expires_at=extra.get("expires_at"), push=bool(extra.get("push")),  # type: ignore[arg-type]
        limit=int(extra.get("limit", EMBEDDED_LIMIT)),  # type: ignore[call-overload]
    )
    return user_data(spec, MATERIAL, options), spec


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_passes_cloud_init_schema(variant: str, tmp_path: Path) -> None:
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip("cloud-init is not installed (scripts/install-test-tools.sh installs Debian's cloud-init)")
    text, _ = _render(variant)
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_document(tmp_path: Path) -> None:
    """A control: the same check refuses user-data with a wrongly typed key."""
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip("cloud-init is not installed (scripts/install-test-tools.sh installs Debian's cloud-init)")
    text, _ = _render("tcp-defaults")
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace("defer: true", "defer: 'sometimes'", 1))
    result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_secrets_owner_only_and_service_hardened(variant: str) -> None:
    text, spec = _render(variant)
    doc = yaml.safe_load(text)
    assert text.startswith("#cloud-config\n")
    assert any(isinstance(u, dict) and u["name"] == "inlets" and u["system"] for u in doc["users"])
    files = {f["path"]: f for f in doc["write_files"]}
    for secret in (VM_FILES.token, VM_FILES.cert, VM_FILES.key):
        assert files[secret]["permissions"] == "0600" and files[secret]["owner"] == "inlets:inlets"
        assert files[secret]["defer"] is True  # written after the user exists
    assert files[VM_FILES.token]["content"].strip() == MATERIAL.token
    unit = files["/etc/systemd/system/inlets.service"]["content"]
    for line in ("User=inlets", "Restart=always", "NoNewPrivileges=true", "ProtectSystem=strict",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"):
        assert line in unit.splitlines(), line
    exec_start = next(l for l in unit.splitlines() if l.startswith("ExecStart="))
    assert shlex.split(exec_start.removeprefix("ExecStart=")) == server_argv(spec, VM_FILES)  # type: ignore[arg-type]
    commands = [c if isinstance(c, list) else [c] for c in doc["runcmd"]]
    assert (["systemctl", "enable", "--now", "inlets-expire.timer"] in commands) == ("ttl" in variant)
    if "ttl" in variant:
        timer = files["/etc/systemd/system/inlets-expire.timer"]["content"]
        assert "OnCalendar=2030-01-02 03:04:05 UTC" in timer and "Persistent=true" in timer
    assert len(text.encode()) <= VARIANTS[variant][1].get("limit", EMBEDDED_LIMIT)  # type: ignore[operator]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_secrets_folder_is_private_before_write_files_puts_them_in_it(variant: str, tmp_path: Path) -> None:
    """cloud-init's write_files made /etc/inlets 0755 and each file 0644 until its chmod: a user of the VM could
    open the token or the key meanwhile and read it later. bootcmd, which runs before write_files (deferred or not),
    makes the folder 0700 first; once per instance (bootcmd runs at every boot, and runcmd opens the folder to the
    service once: 0750 root:inlets). Its command, run on a stand-in folder 0755 under umask 022, leaves it 0700."""
    text, _ = _render(variant)
    doc = yaml.safe_load(text)
    folders = {str(Path(path).parent) for path in (VM_FILES.token, VM_FILES.cert, VM_FILES.key)}
    assert folders == {"/etc/inlets"}
    (command,) = doc["bootcmd"]
    assert command[:3] == ["cloud-init-per", "instance", "inlets-config-dir"] and command[-1] == "/etc/inlets"
    runcmd = [c for c in doc["runcmd"] if isinstance(c, list)]
    assert ["chown", "root:inlets", "/etc/inlets"] in runcmd and ["chmod", "0750", "/etc/inlets"] in runcmd
    stand_in = tmp_path / "etc-inlets"
    stand_in.mkdir(mode=0o755)
    made = subprocess.run(["sh", "-c", 'umask 022; exec "$@"', "sh", *command[3:-1], str(stand_in)],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0 and stand_in.stat().st_mode & 0o777 == 0o700, made.stderr
    order = Path("/etc/cloud/cloud.cfg")  # this host's cloud-init, where installed: the stage's module order
    if order.exists():
        entries = yaml.safe_load(order.read_text())["cloud_init_modules"]  # a name, or [name, frequency]
        modules = [(m if isinstance(m, str) else m[0]).replace("-", "_") for m in entries]
        assert modules.index("bootcmd") < modules.index("write_files"), modules


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_boot_script_stops_at_the_first_failure_and_starts_the_server_anyway(variant: str) -> None:
    """cloud-init runs runcmd as one /bin/sh script: ``set -eu`` first makes a failed step end it
    (cloud-init then reports an error), the expiry timer is armed before anything can fail, and
    the EXIT trap starts the server even after a failure, so its unit ends failed, not absent."""
    text, spec = _render(variant)
    commands = yaml.safe_load(text)["runcmd"]
    assert commands[0] == "set -eu"
    trap = commands.index("trap 'systemctl enable --now inlets.service' EXIT")
    pip = next(i for i, c in enumerate(commands) if isinstance(c, list) and c[0].endswith("/pip"))
    assert trap < pip and commands.index(["systemctl", "daemon-reload"]) < trap
    if "ttl" in variant:
        assert commands.index(["systemctl", "enable", "--now", "inlets-expire.timer"]) < trap
    assert not any("inlets.service" in str(c) for i, c in enumerate(commands) if i != trap)
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    unit = files["/etc/systemd/system/inlets.service"]["content"].splitlines()
    assert "StartLimitIntervalSec=60" in unit and "StartLimitBurst=5" in unit and "RestartSec=2" in unit
    if "runtime-spec" in variant:
        assert commands[pip][-1] == VARIANTS[variant][1]["package"] and "--constraint" not in commands[pip]
        return
    # the server-only wheel, its dependencies pinned to the versions installed here
    wheel = build_runtime_wheel(spec.mode)  # type: ignore[attr-defined]
    assert commands[pip][-3:] == ["--constraint", "/opt/inlets/constraints.txt", f"/opt/inlets/{wheel.filename}"]
    pins = files["/opt/inlets/constraints.txt"]["content"].split()
    assert pins == list(constraints(wheel.requires)) and "websockets==" + metadata.version("websockets") in pins


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_tcp_exit_server_raises_rmem_max_to_the_buffer_its_udp_ports_ask(variant: str) -> None:
    """The unit's user is not root, so the kernel capped each UDP port's 4 MiB at the image's rmem_max (212,992:
    a burst of 500 requests lost 243). TCP mode (UDP rides it) raises the cap to what the runtime asks, no higher,
    in a file systemd-sysctl applies at every boot and at once by runcmd; HTTP mode opens no UDP port."""
    text, spec = _render(variant)
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    commands = yaml.safe_load(text)["runcmd"]
    if spec.mode == "http":  # type: ignore[attr-defined]
        assert SYSCTL_FILE not in files and not any("rmem_max" in str(c) for c in commands)
        return
    sysctl = files[SYSCTL_FILE]
    settings = [line for line in sysctl["content"].splitlines() if line and not line.startswith("#")]
    assert sysctl["permissions"] == "0644" and settings == [f"net.core.rmem_max = {BURST_RECEIVE_BUFFER}"]
    apply = commands.index(udp_sysctl()["apply"])
    assert commands.index("trap 'systemctl enable --now inlets.service' EXIT") < apply < len(commands) - 1


@pytest.mark.skipif(not shutil.which("unshare") or not Path("/proc/sys/net/core/rmem_max").exists(),
                    reason="unshare (util-linux) and Linux's net.core.rmem_max")
def test_a_kernel_that_refuses_the_raise_is_said_and_the_install_goes_on(tmp_path: Path) -> None:
    """In a network namespace of its own (a container) the kernel refuses rmem_max, and procps' sysctl -p exits 0
    anyway: the line says so on stderr (cloud-init's log) and ``set -eu`` carries on to install the server. Asked here
    for twice this machine's value, which no child namespace may set."""
    host = int(Path("/proc/sys/net/core/rmem_max").read_text())
    conf = tmp_path / "rmem.conf"
    conf.write_text(f"net.core.rmem_max = {2 * host}\n")
    line = udp_sysctl()["apply"].replace(str(BURST_RECEIVE_BUFFER), str(2 * host)).replace(SYSCTL_FILE, str(conf))
    done = subprocess.run(["unshare", "--net", "/bin/sh", "-c", f"set -eu\n{line}\necho next step"],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make a network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0 and done.stdout.strip() == "next step", done
    assert f"inlets: net.core.rmem_max stays under {2 * host}" in done.stderr
    assert Path("/proc/sys/net/core/rmem_max").read_text() == f"{host}\n"


def test_a_failing_step_ends_the_boot_script_with_an_error_and_still_starts_the_server(tmp_path: Path) -> None:
    """The runcmd list as cloud-init writes it (cloudinit.util.shellify), run by /bin/sh with a
    failing pip: the script exits non-zero at that step, nothing after it runs, and the trap
    still tries to start the unit."""
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip("cloud-init is not installed (scripts/install-test-tools.sh installs Debian's cloud-init)")
    python = Path(tool).read_text(errors="replace").splitlines()[0].removeprefix("#!").split()[0]  # cloud-init's own Python
    text, _ = _render("tcp-ttl")
    commands = yaml.safe_load(text)["runcmd"]
    log = tmp_path / "calls"
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for tool in ("systemctl", "chown", "chmod", "python3", "sysctl"):  # sysctl: never this machine's rmem_max
        (fakes / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\n")
    pip_step = next(c for c in commands if isinstance(c, list) and c[0].endswith("/pip"))
    commands = [[str(fakes / "pip-fails"), *c[1:]] if c is pip_step else c for c in commands]
    (fakes / "pip-fails").write_text(f"#!/bin/sh\necho pip \"$@\" >> {log}\nexit 1\n")
    commands.append(["touch", str(tmp_path / "after-pip")])
    for fake in fakes.iterdir():
        fake.chmod(0o755)
    script = tmp_path / "runcmd"
    shellify = "import json, sys; from cloudinit.util import shellify; sys.stdout.write(shellify(json.load(sys.stdin)))"
    script.write_text(subprocess.run([python, "-c", shellify], input=json.dumps(commands), capture_output=True,
                                     text=True, check=True, timeout=60).stdout)
    result = subprocess.run(["/bin/sh", str(script)], env={"PATH": f"{fakes}:/usr/bin:/bin"}, capture_output=True,
                            text=True, timeout=30)
    calls = log.read_text().splitlines()
    assert result.returncode != 0
    assert calls[0] == "systemctl daemon-reload" and calls[1] == "systemctl enable --now inlets-expire.timer"
    assert calls[-2].startswith("pip install") and calls[-1] == "systemctl enable --now inlets.service"
    assert not (tmp_path / "after-pip").exists()


def test_embedded_wheel_installs_and_runs(tmp_path: Path) -> None:
    text, _ = _render("tcp-ttl")
    doc = yaml.safe_load(text)
    (packed,) = [f for f in doc["write_files"] if f["path"].endswith(".whl.xz")]
    (unpack,) = [c for c in doc["runcmd"] if isinstance(c, list) and c[:2] == ["python3", "-c"]]
    pip = [c for c in doc["runcmd"] if isinstance(c, list) and c[0].endswith("/pip")][0]
    assert unpack[3:] == [packed["path"], pip[-1]]  # installs the embedded wheel, not a published package
    import base64
    (tmp_path / "packed.xz").write_bytes(base64.b64decode(packed["content"]))
    path = tmp_path / Path(pip[-1]).name
    # the user-data's own unpacking step, as cloud-init runs it
    subprocess.run([sys.executable, "-c", unpack[2], str(tmp_path / "packed.xz"), str(path)], check=True, timeout=60)
    assert zipfile.ZipFile(path).testzip() is None
    assert not (tmp_path / "packed.xz").exists()  # of no use once unpacked: it stayed on the VM, ~47 KB
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--target", str(target), str(path)], capture_output=True, text=True, timeout=90)
    assert install.returncode == 0, install.stderr
    assert (target / "bin" / "inlets").exists()
    import os
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", "import inlets_py.runtime.cli.main, inlets_py.runtime.server.tcp; print(inlets_py.runtime.__file__)"],
                         capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert run.returncode == 0 and str(target) in run.stdout, run.stderr


def test_user_data_over_the_provider_limit_is_a_clear_error() -> None:
    spec, _ = VARIANTS["tcp-defaults"]
    with pytest.raises(ProvisionError, match=r"^rendered user-data is \d+ bytes, over the provider's limit of 4096$"):
        user_data(spec, MATERIAL, UserDataOptions("big", "", build_runtime_wheel(), None, limit=4096, push=True))


def test_a_wheel_that_does_not_fit_is_pushed_instead() -> None:
    spec, _ = VARIANTS["tcp-defaults"]
    wheel = build_runtime_wheel()
    embedded, push = fitting_user_data(spec, MATERIAL, UserDataOptions("fits", "", wheel, limit=256 * 1024))  # GCE's
    assert not push and wheel_xz_base64(wheel) in embedded
    pushed, push = fitting_user_data(spec, MATERIAL, UserDataOptions("small", "", wheel, limit=16 * 1024))
    assert push and wheel_xz_base64(wheel) not in pushed
    commands = yaml.safe_load(pushed)["runcmd"]
    receive = next(c for c in commands if isinstance(c, list) and c[:2] == ["python3", "/opt/inlets/receive-wheel.py"])
    assert receive[receive.index("--sha256") + 1] == wheel.sha256 and receive[-1] == f"/opt/inlets/{wheel.filename}"
    assert receive[receive.index("--port") + 1] == "8123"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    inlets = Path(sys.executable).with_name("inlets")
    spec = build_spec("tcp", "80,443", [])
    unit = tmp_path / "inlets.service"
    unit.write_text(systemd_unit(server_argv(spec, VM_FILES, [str(inlets)]), "tcp"))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [l for l in (result.stdout + result.stderr).splitlines() if "inlets.service" in l]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_expiry_timer_verifies_and_fires_at_the_expiry(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    text, _ = _render("tcp-ttl")
    files = {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}
    paths = []
    for name in ("inlets-expire.timer", "inlets-expire.service"):
        paths.append(tmp_path / name)
        paths[-1].write_text(files[f"/etc/systemd/system/{name}"])
    verify = subprocess.run([tool, "verify", *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "inlets-expire" not in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    on_calendar = next(l for l in files["/etc/systemd/system/inlets-expire.timer"].splitlines() if l.startswith("OnCalendar="))
    calendar = subprocess.run([tool, "calendar", on_calendar.removeprefix("OnCalendar=")], capture_output=True, text=True, timeout=60)
    assert calendar.returncode == 0 and "Next elapse: Wed 2030-01-02 03:04:05 UTC" in calendar.stdout, calendar.stdout


def test_client_command_forms() -> None:
    tcp = build_spec("tcp", "80,443", [])
    http = build_spec("http", None, ["example.com"])
    assert client_command(tcp, "203.0.113.10", "/s/tok en", "/s/ca.crt") == (
        "inlets tcp client --url wss://203.0.113.10:8123 --token-file '/s/tok en' --tls-ca /s/ca.crt "
        "--tls-server-name inlets-exit-server --upstream 127.0.0.1 --ports 80,443"
    )
    assert "--upstream example.com=http://127.0.0.1:8080" in client_command(http, "2001:db8::1", "/t", "/c")
    assert "wss://[2001:db8::1]:8123" in client_command(http, "2001:db8::1", "/t", "/c")
