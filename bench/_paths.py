"""The paths under test: each one ends at the same target service and yields its ports.

A path is a context manager yielding ``Path``: the local ports to connect to for the
sink, the echo and the source, and the process ids whose memory counts as its server and client
side. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FsPath

from _util import LOOPBACK, BenchError, Proc, Procs, descendants, free_ports, port_accepts, spawn, wait_until

HERE = FsPath(__file__).resolve().parent
SSHD_CANDIDATES = ("/usr/sbin", "/usr/local/sbin")


@dataclass
class Path:
    name: str
    sink_port: int
    echo_port: int
    source_port: int | None = None
    server_pids: Callable[[], list[int]] = lambda: []
    client_pids: Callable[[], list[int]] = lambda: []
    note: str = ""
    procs: list[Proc] = field(default_factory=list)

    def logs(self) -> str:
        """Exit status and log tail of each process, for reporting a failure precisely."""
        out = []
        for proc in self.procs:
            code = proc.popen.poll()
            state = "running" if code is None else f"exited with {code}"
            out.append(f"{proc.name} ({state}), last log lines:\n{proc.tail()}")
        return "\n".join(out)


@dataclass
class Target:
    sink_port: int
    echo_port: int
    source_port: int
    proc: Proc


@contextlib.contextmanager
def target(tmp: FsPath) -> Iterator[Target]:
    """The sink/echo/source service in its own process (see _target.py)."""
    procs = Procs()
    try:
        proc = procs.add(spawn("target", [sys.executable, "-u", str(HERE / "_target.py")], tmp))
        ports: list[int] = []

        def ready() -> bool:
            for line in proc.log.read_text().splitlines():
                if line.startswith("READY "):
                    ports.extend(int(p) for p in line.split()[1:4])
                    return True
            return False

        wait_until(ready, 15, "the target service", proc=proc)
        yield Target(ports[0], ports[1], ports[2], proc)
    finally:
        procs.stop_all()


@contextlib.contextmanager
def direct(t: Target) -> Iterator[Path]:
    yield Path("direct", t.sink_port, t.echo_port, t.source_port, note="client -> target on loopback")


#: How tunnel processes are started, when not this venv's ``inlets`` (``bench_interpreter``: another Python).
INLETS_COMMAND: list[str] | None = None


def inlets_command() -> list[str]:
    if INLETS_COMMAND is not None:
        return list(INLETS_COMMAND)
    exe = FsPath(sys.executable).parent / "inlets"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "inlets_py.runtime"]


@contextlib.contextmanager
def tunnel(t: Target, tmp: FsPath, setup_timeout: float = 30) -> Iterator[Path]:
    """``inlets tcp server`` (auto TLS, token file) plus ``inlets tcp client`` with remapped ports."""
    procs = Procs()
    d = FsPath(tempfile.mkdtemp(prefix="tunnel-", dir=tmp))
    token = d / "token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    os.chmod(token, 0o600)
    tls = d / "tls"
    control, sink_pub, echo_pub, source_pub = free_ports(4)
    has_source = bool(getattr(t, "source_port", None))  # the HTTP bench forwards one port only
    inlets = inlets_command()
    try:
        server = procs.add(spawn("inlets-server", inlets + [
            "tcp", "server", "--control-addr", LOOPBACK, "--control-port", str(control),
            "--data-addr", LOOPBACK, "--auto-tls", "--auto-tls-path", str(tls),
            "--auto-tls-san", LOOPBACK, "--token-file", str(token)], d))
        wait_until(lambda: port_accepts(control) and (tls / "ca.crt").exists(), setup_timeout,
                   f"inlets tcp server control port {control}", proc=server)
        client = procs.add(spawn("inlets-client", inlets + [
            "tcp", "client", "--url", f"wss://{LOOPBACK}:{control}", "--token-file", str(token),
            "--tls-ca", str(tls / "ca.crt"),
            "--upstream", f"{sink_pub}=127.0.0.1:{t.sink_port}",
            "--upstream", f"{echo_pub}=127.0.0.1:{t.echo_port}"] + ([
            "--upstream", f"{source_pub}=127.0.0.1:{t.source_port}"] if has_source else []), d))
        for port in (sink_pub, echo_pub) + ((source_pub,) if has_source else ()):
            wait_until(lambda: port_accepts(port), setup_timeout, f"tunnel data port {port} to accept", proc=client)
        yield Path("tunnel", sink_pub, echo_pub, source_pub if has_source else None,
                   server_pids=lambda: descendants(server.popen.pid),
                   client_pids=lambda: descendants(client.popen.pid),
                   note="inlets tcp server/client, wss:// with auto TLS", procs=[server, client])
        for proc in (server, client):
            if proc.popen.poll() is not None:
                raise BenchError(f"{proc.name} exited with {proc.popen.returncode} during the run:\n{proc.tail()}")
    finally:
        procs.stop_all()


@contextlib.contextmanager
def py_relay(t: Target, tmp: FsPath, setup_timeout: float = 15) -> Iterator[Path]:
    """Two plain Python relays in a row (``_relay.py``), as a tunnel's server and client: the reference for
    what two Python processes spend passing the same bytes on, with no tunnel work at all."""
    targets = [t.sink_port, t.echo_port] + ([t.source_port] if getattr(t, "source_port", None) else [])
    ports = free_ports(2 * len(targets))
    public, inner = ports[: len(targets)], ports[len(targets):]
    procs = Procs()
    d = FsPath(tempfile.mkdtemp(prefix="relay-", dir=tmp))
    relay = [sys.executable, "-u", str(HERE / "_relay.py")]
    try:
        near = procs.add(spawn("relay-client-side", relay + [f"{i}={p}" for i, p in zip(inner, targets)], d))
        far = procs.add(spawn("relay-server-side", relay + [f"{p}={i}" for p, i in zip(public, inner)], d))
        for proc in (near, far):
            wait_until(lambda: "READY" in proc.log.read_text(), setup_timeout, f"{proc.name} to accept", proc=proc)
        yield Path("py relay", public[0], public[1], public[2] if len(public) > 2 else None,
                   server_pids=lambda: [far.popen.pid], client_pids=lambda: [near.popen.pid],
                   note="two plain TCP relays on uvloop, no TLS (_relay.py)", procs=[far, near])
    finally:
        procs.stop_all()


def ensure_sshd(install: bool = True) -> str:
    """Path of sshd, installing Debian's openssh-server when missing (issue 2 asks for it)."""
    from _util import which

    sshd = which("sshd", *SSHD_CANDIDATES)
    if sshd is None and install and os.geteuid() == 0 and which("apt-get"):
        print("sshd not found: installing openssh-server with apt-get ...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"]):
            subprocess.run(argv, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=600)
        sshd = which("sshd", *SSHD_CANDIDATES)
    if sshd is None or which("ssh") is None or which("ssh-keygen") is None:
        raise BenchError("OpenSSH (sshd, ssh, ssh-keygen) is not available: apt-get install openssh-server")
    return sshd


@dataclass
class Sshd:
    port: int
    key: FsPath
    proc: Proc
    user: str


@contextlib.contextmanager
def sshd(tmp: FsPath, name: str = "ssh") -> Iterator[Sshd]:
    """A private sshd on a high loopback port: own config, host key and authorized key.

    One per ssh path, so each path's server-side memory is its own sshd's process tree.
    """
    sshd_bin = ensure_sshd()
    d = FsPath(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))  # unique: a retry must not reuse keys
    for name in ("host_ed25519", "client_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True, timeout=30)
    (d / "authorized_keys").write_bytes((d / "client_ed25519.pub").read_bytes())
    os.chmod(d / "authorized_keys", 0o600)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    port, = free_ports(1)
    user = os.environ.get("USER") or "root"
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress {LOOPBACK}
HostKey {d / 'host_ed25519'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
MaxStartups 100
LogLevel ERROR
""")
    procs = Procs()
    try:
        proc = procs.add(spawn("sshd", [sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], d))
        wait_until(lambda: port_accepts(port), 15, f"sshd on port {port}", proc=proc)
        yield Sshd(port, d / "client_ed25519", proc, user)
    finally:
        procs.stop_all()


def _ssh_argv(s: Sshd, forwards: list[str], cipher: str | None) -> list[str]:
    argv = ["ssh", "-F", "/dev/null", "-N", "-T", "-p", str(s.port), "-i", str(s.key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
            "-o", "LogLevel=ERROR", "-o", "ControlMaster=no"]
    if cipher:
        argv += ["-c", cipher]
    return argv + forwards + [f"{s.user}@{LOOPBACK}"]


@contextlib.contextmanager
def ssh_forward(kind: str, t: Target, s: Sshd, cipher: str | None = None, setup_timeout: float = 20) -> Iterator[Path]:
    """``ssh -N -R`` (sshd listens, ssh dials the target) or ``ssh -N -L`` (the reverse)."""
    assert kind in ("-R", "-L")
    sink_pub, echo_pub, source_pub = free_ports(3)
    forwards = [kind, f"{LOOPBACK}:{sink_pub}:127.0.0.1:{t.sink_port}",
                kind, f"{LOOPBACK}:{echo_pub}:127.0.0.1:{t.echo_port}"]
    if getattr(t, "source_port", None):  # the HTTP bench forwards one port only
        forwards += [kind, f"{LOOPBACK}:{source_pub}:127.0.0.1:{t.source_port}"]
    else:
        source_pub = None
    procs = Procs()
    listener = s.proc.popen.pid
    try:
        client = procs.add(spawn(f"ssh{kind}", _ssh_argv(s, forwards, cipher), s.key.parent))
        for port in (sink_pub, echo_pub, source_pub):
            if port is not None:
                wait_until(lambda: port_accepts(port), setup_timeout, f"ssh {kind} port {port} to accept", proc=client)
        yield Path(f"ssh {kind}", sink_pub, echo_pub, source_pub,
                   server_pids=lambda: descendants(listener),
                   client_pids=lambda: descendants(client.popen.pid),
                   note=f"OpenSSH ssh -N {kind} via sshd, cipher {cipher or 'default'}", procs=[s.proc, client])
    finally:
        procs.stop_all()


@contextlib.contextmanager
def ssh_path(kind: str, t: Target, tmp: FsPath, cipher: str | None = None) -> Iterator[Path]:
    """A dedicated sshd plus one ``ssh -N`` forward, so the path's memory is only its own."""
    with sshd(tmp, f"sshd{kind}") as s, ssh_forward(kind, t, s, cipher) as path:
        yield path
