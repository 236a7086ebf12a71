"""The embedded default: the exit server runs on this machine as a background process.

No cloud account. The process gets the same token, TLS material and server flags a
VM would. Its control plane listens on 127.0.0.1 and its data plane on another
loopback address (127.0.0.2 by default), so a client whose upstream is
127.0.0.1:PORT and the server's public PORT never collide and the printed client
command works exactly as printed. The pid is kept in the state folder; the
command line names the state folder, which is this provider's "tag".
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from inlets_py.runtime.core.child_env import child_environment

from ..errors import NotFound, ProvisionError, os_words
from ..spec import ServerFiles, server_argv
from ..state import delete_command
from .base import ACTIVE, FAILED, GONE_TIMEOUT, Credentials, Host, Plan, ProviderInfo

CONTROL_ADDR = "127.0.0.1"
DATA_ADDR = "127.0.0.2"
PROVIDER = ProviderInfo(name="local", title="local", user_data_limit=0, note="this machine", runs_on="local")
PID_FILE = "server.pid"
STOP_TIMEOUT = 10.0


def inlets_command() -> list[str]:
    """The ``inlets`` of this installation (beside this Python), else the module itself."""
    script = Path(sys.executable).with_name("inlets")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from inlets_py.runtime.cli.main import main; sys.exit(main())"]


def free_port(host: str = CONTROL_ADDR) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _processes() -> list[tuple[int, list[str]]]:
    """(pid, command line) of every process this user can see."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (argv := _cmdline(int(entry.name))):
            found.append((int(entry.name), argv))
    return found


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _served_ports(argv: list[str]) -> set[int]:
    """The data ports an ``inlets tcp|http server`` command line serves (tcp: --allow-ports; http: --port)."""
    value = _flag(argv, "--allow-ports") if "tcp" in argv else _flag(argv, "--port")
    return {int(p) for p in (value or "").split(",") if p.strip().isascii() and p.strip().isdigit()}


def _last_error(log: Path) -> str:
    """The log's last line when it is an error (why the server stopped); '' when it is not (killed, stopped)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    last = lines[-1] if lines else ""
    return last[:300] if "error:" in last or "level=ERROR" in last or "level=CRITICAL" in last else ""


def _made_here(folder: Path) -> bool:
    """``folder`` is the state of an exit server ``--provider local`` made (its server.json says so, or is not
    written yet: a create still starting)."""
    try:
        meta = json.loads((folder / "server.json").read_bytes())
    except FileNotFoundError:
        return (folder / "ca.crt").is_file()  # create writes the CA with the token, server.json once it started
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("provider") == PROVIDER.name


def _check_bindable(addr: str, port: int, choose: str) -> None:
    """Bind ``addr:port`` as the server will (SO_REUSEADDR), so a port something else holds is refused
    before the server starts, not found out when it exits."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((addr, port))
        except OSError as exc:
            raise ProvisionError(f"{addr}:{port} cannot be used on this machine "
                                 f"({os_words(exc)}): {choose}") from None


class LocalProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 0.2
    keeps_server_key = True
    failed_is_gone = True  # a server process that exited is gone: nothing is left to wait for

    def __init__(self, root: Path, data_addr: str = DATA_ADDR) -> None:
        self._root = root
        self._real_root = os.path.realpath(root)  # one folder, however --state-dir spells it (a symlink, a/../b)
        self._data_addr = data_addr
        self._children: list[subprocess.Popen[bytes]] = []  # reaped on status checks

    def create(self, plan: Plan) -> Host:
        held = self._hold_ports(plan.spec.data_ports, "--ports" if plan.spec.mode == "tcp" else "--http-port")
        try:
            return self._start(plan)
        finally:
            for sock in held:
                sock.close()

    def _start(self, plan: Plan) -> Host:
        _check_bindable(CONTROL_ADDR, plan.spec.control_port, "choose another --control-port, or leave it out for a free one")
        files = ServerFiles(
            str(plan.state_dir / "token"), str(plan.state_dir / "server.crt"), str(plan.state_dir / "server.key")
        )
        argv = server_argv(
            plan.spec, files, inlets_command(), control_addr=CONTROL_ADDR, data_addr=self._data_addr
        )
        if plan.expires_at is not None:
            # rounded up: ``timeout`` counts whole seconds, and the server must not end before the expiry status reads
            seconds = max(1, math.ceil((plan.expires_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()))
            timeout = shutil.which("timeout")
            if timeout is None:
                raise ProvisionError("--ttl with --provider local needs coreutils' timeout command")
            argv = [timeout, "--signal=TERM", "--kill-after=10", str(seconds), *argv]
        log_path = plan.state_dir / "server.log"
        log = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        try:
            proc = subprocess.Popen(  # in /: the folder create ran in stayed busy (no unmount) while the server ran
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                env=child_environment(), cwd="/",  # the server's own settings, none of inletsctl's secrets
            )
        except OSError as exc:
            raise ProvisionError(f"cannot start the local exit server: {exc.strerror}") from None
        finally:
            log.close()
        (plan.state_dir / PID_FILE).write_text(f"{proc.pid}\n")
        self._children.append(proc)
        return Host(
            id=str(proc.pid), name=plan.name, provider=self.name, status="starting", ip=CONTROL_ADDR,
            data_addr=self._data_addr, control_port=plan.spec.control_port, mode=plan.spec.mode,
        )

    def _hold_ports(self, ports: tuple[int, ...], flag: str) -> list[socket.socket]:
        """Listen on the data ports (as the server will: SO_REUSEADDR) until the server's process is started, so
        a create running at the same time finds them taken: checking alone let both pass, and two servers took
        the same port (the later one failing when a client came). Refuses ports something else holds, and those
        another local exit server serves."""
        held: list[socket.socket] = []
        try:
            for port in ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self._data_addr, port))
                    sock.listen(1)
                except OSError as exc:
                    self._check_ports_free(ports, flag)  # a local exit server's: say which
                    raise ProvisionError(f"{self._data_addr}:{port} cannot be used on this machine "
                                         f"({os_words(exc)}): choose other {flag}") from None
            self._check_ports_free(ports, flag)
        except BaseException:
            for sock in held:
                sock.close()
            raise
        return held

    def _check_ports_free(self, ports: tuple[int, ...], flag: str) -> None:
        """Refuse ports another local exit server serves (it opens them only once a client
        connects, so they may look free now)."""
        for pid, argv in _processes():
            if "server" not in argv or _flag(argv, "--data-addr") != self._data_addr:
                continue
            taken = sorted(set(ports) & _served_ports(argv))
            token = next((Path(a) for a in argv if Path(a).name == "token"), None)
            if taken and token is not None:
                name, root = token.parent.name, token.parent.parent
                ports_ = ",".join(map(str, taken))
                if not _made_here(token.parent):  # an ssh exit server on this host, or one run by hand: a delete
                    raise ProvisionError(  # of its folder as local state would take its token and key, not stop it
                        f"port {ports_} is already served by another inlets server on this machine (pid {pid}, token "
                        f"file {token}) on {self._data_addr}: choose other {flag}, or stop that server first")
                raise ProvisionError(
                    f"port {ports_} is already served by the local exit server {name!r} "
                    f"({self._data_addr}): choose other {flag}, or first: {delete_command(name, root)}"
                )

    def _reap(self) -> None:
        for proc in self._children:
            proc.poll()

    def _state_of(self, pid: int) -> Path | None:
        """The state folder a server process names, when it lies under this root: compared as real paths,
        since create and delete may spell the same --state-dir differently."""
        for arg in _cmdline(pid):
            path = Path(arg)
            if path.name == "token" and os.path.realpath(path.parent.parent) == self._real_root:
                return path.parent
        return None

    def _servers(self) -> dict[int, tuple[int, Path]]:
        """Every exit server process under this root, by session: {recorded pid: (a process, its state folder)}.

        Create records the session leader (the server, or the ``timeout`` wrapping it for --ttl). The session
        outlives its leader, so a server whose wrapper was killed (``kill -9`` of the id create printed) is still
        listed and deleted rather than left serving with no way to stop it."""
        found: dict[int, tuple[int, Path]] = {}
        for pid, argv in _processes():
            state_dir = self._state_of(pid) if "server" in argv else None
            sid = _session_of(pid) if state_dir is not None else None
            if state_dir is not None and sid is not None and (sid not in found or pid == sid):
                found[sid] = (pid, state_dir)
        return found

    def status(self, host_id: str) -> Host:
        self._reap()
        if not host_id.isdigit():
            raise NotFound(f"local: no exit server process {host_id!r}")
        pid = int(host_id)
        state_dir = self._state_of(pid)
        child = next((p for p in self._children if p.pid == pid), None)
        if state_dir is None and child is not None and child.returncode is None:
            return Host(host_id, "", self.name, "starting", detail=f"process {pid} starting")
        if state_dir is None and (orphan := self._servers().get(pid)) is not None:  # its wrapper was killed
            return self._host(orphan[0], orphan[1], pid)
        if state_dir is None:
            log = self._find_log(pid)
            if log is not None:
                why = _last_error(log)
                return Host(host_id, log.parent.name, self.name, FAILED,
                            detail=f"server process exited: {why}" if why else f"its process {pid} has exited")
            raise NotFound(f"local: no exit server process with pid {pid}")
        return self._host(pid, state_dir)

    def _find_log(self, pid: int) -> Path | None:
        if not self._root.is_dir():
            return None
        for child in self._root.iterdir():
            try:
                if (child / PID_FILE).read_text().strip() == str(pid):
                    return child / "server.log"
            except OSError:
                continue
        return None

    def _host(self, pid: int, state_dir: Path, host_id: int | None = None) -> Host:
        meta: dict[str, object] = {}
        try:
            loaded = json.loads((state_dir / "server.json").read_text())
        except (OSError, ValueError):  # list shows damaged state on its own row; the process is still listed
            loaded = None
        if isinstance(loaded, dict):
            meta = loaded
        argv = _cmdline(pid)
        port = _flag(argv, "--control-port")
        data = _flag(argv, "--data-addr")
        mode = next((m for m in ("tcp", "http") if m in argv), None)
        return Host(
            id=str(host_id or pid), name=state_dir.name, provider=self.name, status=ACTIVE, ip=CONTROL_ADDR,
            data_addr=data, control_port=int(port) if port else None, mode=mode, created_at=meta.get("created_at"),  # type: ignore[arg-type]
            expires_at=meta.get("expires_at"), detail=f"process {pid} running",  # type: ignore[arg-type]
        )

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        self._reap()
        if not host_id.isdigit() or int(host_id) not in self._servers():
            raise NotFound(f"local: no exit server process with pid {host_id}")
        pid = int(host_id)
        try:
            os.killpg(pid, signal.SIGTERM)  # its own session: the server and any wrapper
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and pid in self._servers():
            self._reap()
            time.sleep(0.05)
        if pid in self._servers():
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def list(self) -> list[Host]:
        return [self._host(pid, state_dir, sid) for sid, (pid, state_dir) in self._servers().items()]


def build(creds: Credentials, state_root: Path) -> LocalProvider:
    return LocalProvider(state_root)
