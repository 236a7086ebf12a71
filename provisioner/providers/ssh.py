"""``--provider ssh``: an exit server on a host you already have, installed over SSH.

The same things cloud-init does on a VM, done with paramiko: upload the runtime (the
wheel of this inletsctl) and the secrets over SFTP (0600 from the first byte), create
a venv, install the same systemd unit (``render.systemd_unit``), start it. Where
systemd is not PID 1 (containers, CI) the server runs under a plain supervisor
instead: a shell restart loop started with setsid/nohup, its pid in a file
(``--supervisor plain``, chosen automatically by ``auto``).

The venv reuses the packages of ``--remote-python`` (a ``.pth`` file lists its
site-packages) and installs only the uploaded wheel with ``--no-index``: nothing is
downloaded when that Python already has the runtime's dependencies, and the host's
package index is asked only for the missing ones.

Several exit servers can share one host: each has /etc/inlets/NAME, /opt/inlets/NAME
and the unit inlets-NAME.service. The state folder keeps ``ssh.json`` (how to
connect) and ``known_hosts`` (the host key seen at create, the only one accepted later).
The scripts run on the host are in ``ssh_scripts``.
"""

from __future__ import annotations

import shlex
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, ProvisionError
from ..spec import ServerFiles, server_argv
from .api_errors import causes
from .base import ACTIVE, FAILED, GONE_TIMEOUT, Credentials, Host, Plan, ProviderInfo
from .ssh_scripts import DELETE, DELETE_STAGES, INSTALL, STATUS, SUPERVISE

if TYPE_CHECKING:  # paramiko (ssh_connect) is imported where it is used: inletsctl --help reads only PROVIDER
    import paramiko

    from ..ssh_options import SshOptions
    from ..state import Damaged, ServerState

PROVIDER = ProviderInfo(
    name="ssh", title="SSH", user_data_limit=0,  # nothing to render: the host is set up over SSH
    note="a host you already have", ssh_key="private key file to log in with",
    firewall_note="none managed by inletsctl: the host's own firewall must let in tcp {control_port} and {data_ports}",
    runs_on="host",
)
RECORD = "ssh.json"
PINNED = "known_hosts"
STAGE_TEMPLATE = "/tmp/inletsctl.{name}.XXXXXXXX"  # named, so delete finds one a Ctrl-C left before the install ran


def host_id(opts: SshOptions, name: str) -> str:
    return f"{opts.user}@{opts.host}:{opts.port}/{name}"


def state_damage(state: ServerState, meta: dict[str, Any]) -> Damaged | None:
    """ssh.json missing or unreadable once create has connected (pinned the host key) or finished: damaged state,
    never an exit server gone, which only the host can say and nothing else leads to (state.load calls this)."""
    from ..ssh_options import SshOptions
    from ..state import Damaged

    record = state.dir / RECORD
    if not meta.get("id") and not record.exists() and not (state.dir / PINNED).exists():
        return None  # create has not reached the host (yet): nothing there to find
    opts, why = SshOptions.read(record)
    if opts is not None:
        return None
    where, name = str(meta.get("id") or "").rpartition("/")[0] or meta.get("ip") or "its host", state.name
    unchecked = (f"inletsctl could not check whether its exit server still runs on {where}: if it does, stop it "
                 f"there (systemctl disable --now inlets-{name}, or kill -- -PID with the pid in "
                 f"/opt/inlets/{name}/supervisor.pid) and remove /opt/inlets/{name} and /etc/inlets/{name}")
    return Damaged(state, why, "ssh", f"put back a copy of it (it says how to reach {where}), or remove the state with",
                   RECORD, unchecked)


class SshProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 1.0
    keeps_server_key = True  # create() uploads the key, then drops the local copy

    def __init__(self, root: Path, opts: SshOptions | None = None) -> None:
        self._root = root
        self._opts = opts
        self._clients: dict[str, paramiko.SSHClient] = {}
        weakref.finalize(self, _close_all, self._clients)

    # -- connections -------------------------------------------------------------------
    def _record(self, host_id_: str) -> tuple[str, Path, SshOptions]:
        """The exit server's state folder and ssh.json; one without ssh.json is no gone exit server (state_damage)."""
        from ..ssh_options import SshOptions

        name = host_id_.rsplit("/", 1)[-1]
        state_dir = self._root / name
        if not name or "/" not in host_id_ or not state_dir.is_dir():
            raise NotFound(f"ssh: no exit server {host_id_!r} in {self._root} (ssh exit servers are kept in local state)")
        return name, state_dir, SshOptions.load(state_dir / RECORD)

    def _client(self, name: str, state_dir: Path, opts: SshOptions) -> paramiko.SSHClient:
        from ..ssh_connect import connect

        client = self._clients.get(name)
        transport = client.get_transport() if client else None
        if client is None or transport is None or not transport.is_active():
            client = connect(opts, pinned_file=state_dir / PINNED)
            self._clients[name] = client
        return client

    def _root_run(self, client: paramiko.SSHClient, opts: SshOptions, script: str) -> tuple[int, str, str]:
        """Run a shell script as root: directly when logged in as root, else through ``sudo -n``."""
        from ..ssh_connect import run

        prefix = "" if opts.user == "root" else "sudo -n "
        code, out, err = run(client, f"{prefix}sh -s", stdin=script.encode())
        if code != 0 and prefix and "sudo" in err and "password" in err:
            raise ProvisionError(f"ssh: {opts.user} on {opts.host} needs passwordless sudo (or log in as root)")
        if code == 127 and prefix and "sudo" in err and "not found" in err:  # the shell's words: "sh: 1: sudo: not found"
            raise ProvisionError(f"ssh: {opts.user} on {opts.host} is not root and the host has no sudo: "
                                 f"log in as root (--host root@{opts.host}) or install sudo there")
        return code, out, err

    # -- the interface -----------------------------------------------------------------
    def create(self, plan: Plan) -> Host:
        import paramiko

        from ..render import systemd_unit
        from ..ssh_connect import connect, describe, pin, run, upload
        from ..wheel import build_runtime_wheel, constraints

        opts = self._opts
        if opts is None:
            raise ProvisionError("--provider ssh needs --host USER@HOST")
        if plan.expires_at is not None:
            raise ProvisionError("--ttl does not apply to --provider ssh (the host is yours): use inletsctl delete")
        client = connect(opts)
        self._clients[plan.name] = client
        fp = pin(client, opts, plan.state_dir / PINNED)
        opts.save(plan.state_dir / RECORD)
        opt = f"/opt/inlets/{plan.name}"
        files = ServerFiles(*(f"/etc/inlets/{plan.name}/{f}" for f in ("token", "server.crt", "server.key")))
        argv = server_argv(plan.spec, files, [f"{opt}/venv/bin/inlets"], data_addr=opts.data_addr)
        wheel = build_runtime_wheel(plan.spec.mode)
        code, stage, err = run(client, f"mktemp -d {shlex.quote(STAGE_TEMPLATE.format(name=plan.name))}")
        stage = stage.strip()
        if code != 0 and "mktemp" not in err:  # the first command: the login shell itself refused (nologin, false)
            said = "; ".join(filter(None, (_last(err), _last(stage)))) or f"exit status {code}"
            raise ProvisionError(f"ssh: {opts.user} on {opts.host} cannot run commands ({said}): is its shell nologin? "
                                 "log in as root, or as a user with a login shell and passwordless sudo")
        if code != 0 or not stage.startswith(f"/tmp/inletsctl.{plan.name}."):
            raise ProvisionError(f"ssh: cannot make a temporary folder on {opts.host}: {_last(err)}")
        try:
            sftp = client.open_sftp()
        except (paramiko.SSHException, OSError) as exc:
            _drop_stage(client, stage)
            raise ProvisionError(f"ssh: {opts.host} offers no SFTP ({describe(exc)}): enable it in the host's sshd_config "
                                 "(Subsystem sftp internal-sftp), restart sshd, then run create again") from None
        try:
            for local in ("token", "server.crt", "server.key"):
                upload(sftp, f"{stage}/{local}", (plan.state_dir / local).read_bytes())
            upload(sftp, f"{stage}/{wheel.filename}", wheel.data, 0o644)
            upload(sftp, f"{stage}/constraints.txt", "".join(f"{pin}\n" for pin in constraints(wheel.requires)).encode(), 0o644)
            upload(sftp, f"{stage}/unit", systemd_unit(argv, plan.spec.mode).encode(), 0o644)
            supervise = SUPERVISE.format(name=plan.name, opt=opt, exec_start=shlex.join(argv))
            upload(sftp, f"{stage}/supervise", supervise.encode(), 0o755)
        except (OSError, paramiko.SSHException) as exc:
            # a Ctrl-C cut a packet short, and closing the file then failed on the broken session: the Ctrl-C is
            # what happened (paramiko's 'Server connection dropped' is raised from an EOFError raised during it)
            interrupt = next((c for c in causes(exc) if isinstance(c, KeyboardInterrupt)), None)
            if interrupt is not None:
                raise interrupt from None
            _drop_stage(client, stage)
            raise ProvisionError(f"ssh: uploading to {stage} on {opts.host} failed: {describe(exc)}") from None
        finally:
            sftp.close()
        # the key lives on the host only: nothing uses this copy now, and a Ctrl-C from here on would leave it
        (plan.state_dir / "server.key").unlink(missing_ok=True)
        script = INSTALL.format(
            name=shlex.quote(plan.name), stage=shlex.quote(stage), py=shlex.quote(opts.remote_python),
            wheel=shlex.quote(wheel.filename), sup=shlex.quote(opts.supervisor), ports=_probes(plan, opts),
        )
        try:
            code, out, err = self._root_run(client, opts, script)
        except ProvisionError:  # it never ran (no sudo, say): its trap did not remove the uploaded secrets
            run(client, f"rm -rf {shlex.quote(stage)}")
            raise
        detail = f"installed under {out.strip().splitlines()[-1] if out.strip() else opts.supervisor}; host key {fp}"
        if code == -1:  # no exit status: the install was killed, or the connection lost; the host says what it left
            try:
                detail = self.status(host_id(opts, plan.name)).detail
            except NotFound:  # its traps removed it all
                raise ProvisionError(f"ssh: installing on {opts.host} failed: it ended without an exit status "
                                     f"(killed on the host, or the connection was lost){': ' + _last(err) if err else ''}") from None
            except ProvisionError as exc:  # not known: the state stays, for the delete command create names
                detail = f"the install ended without an exit status and the host cannot be asked ({exc})"
        elif code != 0:
            run(client, f"rm -rf {shlex.quote(stage)}")
            raise ProvisionError(f"ssh: installing on {opts.host} failed: {_last(err) or f'exit status {code}'}")
        return Host(
            id=host_id(opts, plan.name), name=plan.name, provider=self.name, status="starting", ip=opts.host,
            data_addr=opts.data_addr, control_port=plan.spec.control_port, mode=plan.spec.mode, detail=detail,
        )

    def status(self, host_id_: str) -> Host:
        name, state_dir, opts = self._record(host_id_)
        client = self._client(name, state_dir, opts)
        code, out, err = self._root_run(client, opts, STATUS.format(name=shlex.quote(name)))
        seen = out.strip() or _last(err) or f"exit status {code}"
        if seen == "absent":
            raise NotFound(f"ssh: exit server {name} is not installed on {opts.host}")
        sup, _, state = seen.partition(" ")
        word = state.split(":", 1)[0]
        status = ACTIVE if word == "active" else FAILED if word in ("stopped", "failed") else word or seen
        said = f"{sup} supervisor: {state or seen}" if sup in ("plain", "systemd") else state.partition(": ")[2] or seen
        return Host(
            id=host_id_, name=name, provider=self.name, status=status, ip=opts.host, data_addr=opts.data_addr,
            detail=f"{said} on {opts.target}", extra={"supervisor": sup},
        )

    def delete(self, host_id_: str, timeout: float = GONE_TIMEOUT) -> None:
        name, state_dir, opts = self._record(host_id_)
        client = self._client(name, state_dir, opts)
        code, out, err = self._root_run(client, opts, DELETE.format(name=shlex.quote(name)))
        if code != 0:
            raise ProvisionError(f"ssh: removing {name} from {opts.host} failed: {_last(err) or f'exit status {code}'}")
        if out.strip() == "absent":
            raise NotFound(f"ssh: exit server {name} is not installed on {opts.host}")

    def delete_leftovers(self, name: str) -> list[str]:
        """The files a create cut short before its install uploaded to the host (the token and the server's key
        among them), which no install will remove; called by delete once the host says nothing is installed."""
        from ..ssh_options import SshOptions

        record = self._root / name / RECORD
        if not record.exists() and not (record.parent / PINNED).exists():
            return []  # create never got as far as connecting
        opts = SshOptions.load(record)
        client = self._client(name, record.parent, opts)
        code, out, err = self._root_run(client, opts, DELETE_STAGES.format(name=shlex.quote(name)))
        if code != 0:
            raise ProvisionError(f"ssh: removing the uploads of {name} from {opts.host} failed: {_last(err) or f'exit status {code}'}")
        return [f"uploaded files {path}" for path in out.split()]

    def list(self) -> list[Host]:
        """The ssh exit servers in local state, each asked over SSH (unreachable ones say so); one whose ssh.json
        cannot be read is left out, as the state shows it damaged (state_damage)."""
        from ..ssh_options import SshOptions

        hosts: list[Host] = []
        if not self._root.is_dir():
            return hosts
        for record in sorted(self._root.glob(f"*/{RECORD}")):
            opts, _ = SshOptions.read(record)
            if opts is None:
                continue
            ident = host_id(opts, record.parent.name)
            try:
                hosts.append(self.status(ident))
            except NotFound:
                continue
            except ProvisionError as exc:
                hosts.append(Host(ident, record.parent.name, self.name, "unreachable", ip=opts.host, detail=str(exc)))
        return hosts


def _close_all(clients: dict[str, paramiko.SSHClient]) -> None:
    for client in clients.values():
        client.close()


def _drop_stage(client: paramiko.SSHClient, stage: str) -> None:
    """Remove the uploads folder of a create that failed before its install (whose trap removes it otherwise)."""
    from ..ssh_connect import run

    try:
        run(client, f"rm -rf {shlex.quote(stage)}")
    except ProvisionError:
        pass  # the connection is gone: delete removes the folder (delete_leftovers)


def _probes(plan: Plan, opts: SshOptions) -> str:
    """``ADDR:PORT:FLAG`` for each port the server will listen on (ADDR empty: all interfaces), shell-quoted."""
    data_flag = "--ports" if plan.spec.mode == "tcp" else "--http-port"
    probes = [f":{plan.spec.control_port}:--control-port"]
    probes += [f"{opts.data_addr or ''}:{port}:{data_flag}" for port in plan.spec.data_ports]
    return shlex.join(probes)


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def build(creds: Credentials, state_root: Path) -> SshProvider:
    return SshProvider(state_root, creds.ssh)
