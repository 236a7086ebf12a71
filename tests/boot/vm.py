"""A cloud VM on this machine: an Ubuntu container booted by systemd-nspawn from a NoCloud seed.

The container boots the cached root file system (rootfs.py) read-only with a throw-away
overlay, so cloud-init runs the user-data under test as on a droplet's first boot. PID 1
here is not systemd, so nspawn runs with ``--register=no --keep-unit``, each container in a
cgroup of its own (``own_cgroups``), and commands reach the container through ``nsenter``
into its systemd's namespaces.

Networks are namespaces the test makes: the VM's own (egress to Ubuntu's archive and PyPI
through slirp4netns, so nothing listens on this machine's network) and the user's side,
where inletsctl, the printed client and the services behind it run, joined to the VM by a
veth pair. The VM's "public IP" is its end of that pair.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from rootfs import RootfsUnavailable, rootfs

T = TypeVar("T")
USER_ADDR, VM_ADDR = "10.77.0.1", "10.77.0.2"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # this machine's bundle: pip in the VM needs it here
TOOLS = ("systemd-nspawn", "slirp4netns", "nsenter", "ip")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class BootUnavailable(Exception):
    """Containers cannot boot here; the message says why (the tests skip with it)."""


def run(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


_checked: list[str] = []


def check_available() -> Path:
    """The root file system, once this machine is known to boot containers from it; else BootUnavailable."""
    if os.geteuid() != 0:
        raise BootUnavailable("booting containers needs root (systemd-nspawn, network namespaces)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise BootUnavailable(f"{', '.join(missing)} not installed (scripts/install-test-tools.sh installs them)")
    try:
        root = rootfs()
    except RootfsUnavailable as exc:
        raise BootUnavailable(str(exc)) from None
    if not _checked:
        reap_leftovers()
        probe = run("systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--volatile=overlay", "-D", str(root),
                    "/bin/true", timeout=120, check=False)
        if probe.returncode != 0:
            raise BootUnavailable(f"systemd-nspawn cannot run a container here: {probe.stderr.strip()[-300:]}")
        _checked.append("ok")
    return root


def reap_leftovers() -> None:
    """Containers and namespaces of earlier runs that were killed before their clean-up: their
    names carry the pid of the test run that made them, and that process is gone."""
    owners = {}
    for ns in run("ip", "netns", "list", check=False).stdout.split():
        match = re.fullmatch(r"inlets-[a-z]+-(\d+)-(user|vm)", ns)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            owners[ns] = match.group(1)
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if argv and argv[0].endswith((b"systemd-nspawn", b"slirp4netns")) and any(
                f"/run/netns/{ns}".encode() in arg for ns in owners for arg in argv):
            os.kill(int(proc.name), signal.SIGTERM)  # nspawn then powers its container off
    for ns in owners:
        run("ip", "netns", "del", ns, check=False)
    gone = [group for root in _cgroup_roots() if root.is_dir() for group in root.iterdir()
            if (match := re.fullmatch(r"[a-z]+-(\d+)", group.name)) and not Path(f"/proc/{match.group(1)}").exists()]
    remove_cgroups(gone)  # named as the containers, after the pid of the run that made them


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run by a thread that entered network namespace ``netns``: sockets it makes live there."""
    outcome: dict[str, object] = {}

    def enter_and_call() -> None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
            outcome["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter_and_call)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def own_cgroups(name: str) -> list[Path]:
    """A cgroup of its own for one container, in each hierarchy its systemd manages (``name=systemd`` and the
    unified one), under this process's. nspawn puts its container in ``payload`` under its caller's cgroup, so
    containers started from one test run shared ``/payload/system.slice/<unit>``: one container's systemd removed
    ``cloud-init-local.service``'s cgroup as another's attached to it ("Failed to attach to cgroup ... No such
    file or directory"), that VM's local stage never ran, and cloud-init came up with no datasource and none of
    the user-data (a CI run's Let's Encrypt VM: no inlets units, 8123 refused for 420 s)."""
    groups = [root / name for root in _cgroup_roots()]
    for group in groups:
        group.mkdir(parents=True, exist_ok=True)
    return groups


def _cgroup_roots() -> list[Path]:
    """Where this run's containers' cgroups go: ``inlets-tests`` under this process's cgroup in each hierarchy."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, fs = line.split(" - ", 1)
        fstype, _source, options = fs.split()[:3]
        if fstype == "cgroup2":
            mounts[""] = Path(fields.split()[4])
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            mounts["name=systemd"] = Path(fields.split()[4])
    roots = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controllers in mounts:
            roots.append(mounts[controllers] / path.lstrip("/") / "inlets-tests")
    return roots


def remove_cgroups(groups: list[Path]) -> None:
    """The container's cgroups, once it has exited (what its systemd left, deepest first)."""
    for group in groups:
        for folder, _dirs, _files in sorted(os.walk(group), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(folder)
            except OSError:
                pass  # still has a process (the container is going down): a later reap_leftovers removes it


class Network:
    """The user's namespace and the VM's, a veth pair between them, and the VM's egress (slirp4netns)."""

    def __init__(self, tag: str) -> None:
        self.user = f"inlets-{tag}-user"
        self.vm = f"inlets-{tag}-vm"
        self._slirp: subprocess.Popen[bytes] | None = None

    def up(self) -> "Network":
        for ns in (self.user, self.vm):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", "uplink", "netns", self.user, "type", "veth", "peer", "name", "eth1", "netns", self.vm)
        run("ip", "-n", self.user, "addr", "add", f"{USER_ADDR}/24", "dev", "uplink")
        run("ip", "-n", self.vm, "addr", "add", f"{VM_ADDR}/24", "dev", "eth1")
        run("ip", "-n", self.user, "link", "set", "uplink", "up")
        run("ip", "-n", self.vm, "link", "set", "eth1", "up")
        self._slirp = subprocess.Popen(
            ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", "--netns-type=path",
             f"/run/netns/{self.vm}", "tap0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while "10.0.2.100" not in run("ip", "-n", self.vm, "-4", "addr", "show", "tap0", check=False).stdout:
            if time.monotonic() > deadline or self._slirp.poll() is not None:
                raise RuntimeError("slirp4netns did not configure the VM's egress (tap0)")
            time.sleep(0.1)
        return self

    def down(self) -> None:
        if self._slirp is not None and self._slirp.poll() is None:
            self._slirp.terminate()
            self._slirp.wait(timeout=10)
        for ns in (self.user, self.vm):
            run("ip", "netns", "del", ns, check=False)

    def user_argv(self, *argv: str) -> list[str]:
        """``argv`` run on the user's side of the network."""
        return ["nsenter", f"--net=/run/netns/{self.user}", "--", *argv]

    def on_user_side(self, fn: Callable[[], T]) -> T:
        return in_netns(self.user, fn)


class Container:
    """One boot of the root file system with ``user_data`` as its NoCloud seed."""

    def __init__(self, root: Path, net: Network, name: str, user_data: str, workdir: Path,
                 public_keys: tuple[str, ...] = ()) -> None:
        self.root, self.net, self.name, self.workdir = root, net, name, workdir
        self.console = workdir / "console.log"
        seed = workdir / "seed"
        seed.mkdir(parents=True)
        (seed / "user-data").write_text(user_data)
        meta = f"instance-id: {name}\nlocal-hostname: {name}\n"
        if public_keys:
            meta += "public-keys:\n" + "".join(f"  - {key}\n" for key in public_keys)
        (seed / "meta-data").write_text(meta)
        (workdir / "resolv.conf").write_text("nameserver 10.0.2.3\n")  # slirp4netns's resolver
        (workdir / "pip.conf").write_text("[global]\ncert = /etc/inlets-tests-ca.crt\n")
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self.started = 0.0
        self.powered_off_at: float | None = None  # time.time() when nspawn exited, seen by _watch as it happened
        self._watcher: threading.Thread | None = None
        self.cgroups: list[Path] = []

    def start(self) -> "Container":
        binds = [f"--bind-ro={self.workdir / 'seed'}:/var/lib/cloud/seed/nocloud",
                 f"--bind-ro={self.workdir / 'resolv.conf'}:/etc/resolv.conf"]
        if HOST_CA.exists():  # pip in the VM reaches PyPI through this machine's TLS setup
            binds += [f"--bind-ro={HOST_CA}:/etc/inlets-tests-ca.crt", f"--bind-ro={self.workdir / 'pip.conf'}:/etc/pip.conf"]
        self.cgroups = own_cgroups(self.name)
        # the shell joins the container's own cgroups, then becomes nspawn (the same pid, so signals reach it)
        join = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 1; shift; done; shift; exec "$@"'
        with open(self.console, "wb") as out:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", join, "sh", *map(str, self.cgroups), "--",
                 "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--volatile=overlay", "--resolv-conf=off",
                 "--console=read-only", f"--network-namespace-path=/run/netns/{self.net.vm}", "-M", self.name,
                 "-D", str(self.root), *binds],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.started = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, args=(self._proc,), daemon=True)
        self._watcher.start()
        self.pid()  # its systemd is up, and /dev has the modes a VM's has (_device_modes), before anything logs in
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pid(self, timeout: float = 60) -> int:
        """The PID (here) of the container's systemd."""
        deadline = time.monotonic() + timeout
        while self._pid is None:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AssertionError(f"the container {self.name} exited ({self._proc.returncode}): {self.tail()}")
            self._pid = _descendant_named(self._proc.pid, "systemd")
            if self._pid is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no systemd in container {self.name}: {self.tail()}")
                time.sleep(0.1)
            else:
                self._own_cgroup()
                self._device_modes()
        return self._pid

    def _own_cgroup(self) -> None:
        """Its systemd manages a cgroup no other container shares (own_cgroups says what sharing one did)."""
        assert self._pid is not None
        lines = Path(f"/proc/{self._pid}/cgroup").read_text().splitlines()
        systemd_group = next(line.split(":", 2)[2] for line in lines if line.split(":")[1] in ("name=systemd", ""))
        if f"/inlets-tests/{self.name}/" not in systemd_group + "/":
            raise AssertionError(f"the container {self.name} runs in the cgroup {systemd_group}, not its own")

    def _device_modes(self) -> None:
        """The character devices every user may use, as a VM's devtmpfs has them (0666). nspawn copies them from
        this machine with this machine's modes, and one sandbox here had /dev/null 0644: sftp-server, run as any
        user but root, stopped at once ("Couldn't open /dev/null: Permission denied"), and --provider ssh's
        create failed on what a cloud VM would never do."""
        self.sh("chmod 0666 /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty")

    def sh(self, script: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A shell command as root inside the container, with a clean environment."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid()), "-a", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
             "/bin/sh", "-c", script],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"in {self.name}: {script!r} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done

    def wait_cloud_init(self, timeout: float = 300) -> str:
        """``cloud-init status --long`` once cloud-init has finished (done or error)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise AssertionError(f"{self.name} stopped during cloud-init: {self.tail()}")
            status = self.sh("cloud-init status --long", check=False).stdout
            if "status: done" in status or "status: error" in status:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"cloud-init in {self.name} still running after {timeout:.0f}s:\n{status}{self.tail()}")
            time.sleep(1)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Notes when the container powers off, so a test that looks later (its worker busy with others' checks)
        still learns when it happened, not when it looked."""
        proc.wait()
        self.powered_off_at = time.time()
        remove_cgroups(self.cgroups)

    def wait_powered_off(self, timeout: float) -> tuple[int, float]:
        """The container's exit status and the time.time() it powered off."""
        assert self._proc is not None and self._watcher is not None
        self._watcher.join(timeout)
        if self.powered_off_at is None:
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s: {self.tail()}")
        return self._proc.returncode, self.powered_off_at

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        os.kill(self._proc.pid, signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        return "\n--- console:\n" + "\n".join(text.splitlines()[-lines:])


def _descendant_named(root: int, comm: str) -> int | None:
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid, rest = int(entry.name), stat[stat.rindex(")") + 2:].split()
        names[pid] = stat[stat.index("(") + 1: stat.rindex(")")]
        children.setdefault(int(rest[1]), []).append(pid)
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        if names.get(pid) == comm:
            return pid
        todo += children.get(pid, [])
    return None
