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
"""

from __future__ import annotations

import shlex
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NotFound, ProvisionError
from ..spec import ServerFiles, server_argv
from .base import ACTIVE, FAILED, GONE_TIMEOUT, Credentials, Host, Plan, ProviderInfo

if TYPE_CHECKING:  # paramiko (ssh_connect) is imported where it is used: inletsctl --help reads only PROVIDER
    import paramiko

    from ..ssh_connect import SshOptions

PROVIDER = ProviderInfo(
    name="ssh", title="SSH", user_data_limit=0,  # nothing to render: the host is set up over SSH
    note="a host you already have", ssh_key="private key file to log in with",
    firewall_note="none managed by inletsctl: the host's own firewall must let in tcp {control_port} and {data_ports}",
)
RECORD = "ssh.json"
PINNED = "known_hosts"
STAGE_TEMPLATE = "/tmp/inletsctl.XXXXXXXX"

#: ``started PID``: the process's start time (field 22 of /proc/PID/stat), which a pid reused later does not share;
#: ``group PID``: its process group (field 5), the install's shell with its children (pip, say)
_PROC = r"""
started() {{ sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }}
group() {{ sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f3; }}
"""

_INSTALL = _PROC + r"""
set -eu
name={name}; stage={stage}; py={py}; wheel={wheel}; sup={sup}
conf=/etc/inlets/$name; opt=/opt/inlets/$name; venv=$opt/venv; mark=/opt/inlets/.$name.installing
fail() {{ echo "$*" >&2; exit 3; }}
trap 'rm -rf "$stage"' EXIT
if [ "$sup" = auto ]; then if [ -d /run/systemd/system ]; then sup=systemd; else sup=plain; fi; fi
if [ "$sup" = systemd ] && [ ! -d /run/systemd/system ]; then fail "systemd is not running on this host: use --supervisor plain"; fi
install -d -m 0755 /etc/inlets /opt/inlets
# the mark names this install (pid and start time): a delete stops it before removing anything, and a second
# create of the same name is refused (set -C: the mark is made only if it is not there)
( set -C; echo "$$ $(started $$)" > "$mark" ) 2>/dev/null || fail "an exit server named $name is being installed on this host right now"
trap 'rm -rf "$stage" "$mark"' EXIT
trap 'exit 143' TERM HUP INT  # so the EXIT trap cleans up after a delete stops the install
if [ -e "$conf" ] || [ -e "$opt" ]; then fail "an exit server named $name is already installed on this host ($opt)"; fi
command -v "$py" >/dev/null 2>&1 || fail "no $py on the host: install python3 (3.10 or newer) or pass --remote-python"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 \
  || fail "$py on the host is $("$py" --version 2>&1 | head -n 1): the exit server needs Python 3.10 or newer; install it, or pass --remote-python"
# from here on a failure leaves nothing of this exit server behind
trap 'rm -rf "$stage" "$conf" "$opt" "$mark"; rm -f "/etc/systemd/system/inlets-$name.service"' EXIT
owner=root
if [ "$sup" = systemd ]; then
  id -u inlets >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin inlets
  owner=inlets
fi
install -d -m 0750 -o root -g "$owner" "$conf"
install -d -m 0755 "$opt"
for f in token server.crt server.key; do install -m 0600 -o "$owner" -g "$owner" "$stage/$f" "$conf/$f"; done
install -m 0644 "$stage/$wheel" "$opt/$wheel"
"$py" -m venv --without-pip "$venv" || fail "$py cannot create a venv: install python3-venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$py" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site/_inlets_inherit.pth"
pip="$venv/bin/python -m pip --disable-pip-version-check --no-input --quiet"
if ! $pip --version >/dev/null 2>&1; then
  "$venv/bin/python" -m ensurepip --default-pip >/dev/null 2>&1 || fail "$py has no pip and no ensurepip: install python3-venv"
fi
$pip install --no-index --no-deps --ignore-installed "$opt/$wheel" >&2 || fail "pip could not install $wheel"
install -m 0644 "$stage/constraints.txt" "$opt/constraints.txt"
if ! $pip install --no-index "$opt/$wheel" >/dev/null 2>&1; then
  $pip install --constraint "$opt/constraints.txt" "$opt/$wheel" >&2 || fail "pip could not install the runtime's dependencies from the host's package index"
fi
"$venv/bin/inlets" --help >/dev/null 2>&1 || fail "the installed runtime does not start: $venv/bin/inlets --help failed"
install -m 0644 "$stage/unit" "$opt/inlets-$name.service"  # kept under plain too: the unit to switch to later
if [ "$sup" = systemd ]; then
  install -m 0644 "$opt/inlets-$name.service" "/etc/systemd/system/inlets-$name.service"
  echo systemd > "$opt/supervisor"
  systemctl daemon-reload
  systemctl enable --now "inlets-$name.service" >&2
else
  install -m 0755 "$stage/supervise" "$opt/supervise"
  echo plain > "$opt/supervisor"
  setsid nohup "$opt/supervise" >>"$opt/server.log" 2>&1 </dev/null &
  i=0; while [ ! -s "$opt/supervisor.pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi
rm -f "$mark"
trap 'rm -rf "$stage"' EXIT
echo "$sup"
"""

#: restarts the server like the unit's Restart=always / RestartSec=2, and gives up after 5 starts
#: within 60 s like the unit's StartLimitBurst/StartLimitIntervalSec (with 2 s between starts, 5 never
#: fit in 10 s, so a server that cannot start would be restarted forever); SIGHUP is passed on (token reload)
_SUPERVISE = r"""#!/bin/sh
# inlets exit server {name}: plain supervisor (hosts without systemd as PID 1), written by inletsctl.
echo $$ > {opt}/supervisor.pid
child=
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 0' TERM INT
trap '[ -n "$child" ] && kill -HUP "$child" 2>/dev/null' HUP
starts=
while :; do
  now=$(date +%s); recent=0; kept=
  for t in $starts; do
    if [ $((now - t)) -lt 60 ]; then kept="$kept $t"; recent=$((recent + 1)); fi
  done
  if [ "$recent" -ge 5 ]; then echo "supervise: 5 starts within 60s; giving up" >&2; exit 1; fi
  starts="$kept $now"
  {exec_start} &
  child=$!
  wait "$child" || true
  while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
  echo "supervise: the server exited; restarting in 2s" >&2
  sleep 2 & wait $!
done
"""

#: The pids of an exit server's own processes under plain: its supervisor and the servers it started, found by
#: their command lines (``$opt/supervise``, ``$opt/venv/bin/...``), so a server whose supervisor died (killed, say)
#: is still found. The script comes on stdin (``sh -s``): its own shell's command line names neither.
_OURS = r"""
ours() {{
  for d in /proc/[0-9]*; do
    case " $(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
      *" $opt/supervise "*|*" $opt/venv/bin/"*) echo "${{d#/proc/}}";;
    esac
  done
}}
"""

_STATUS = _OURS + r"""
opt=/opt/inlets/{name}
if [ ! -d "$opt" ] && [ ! -d /etc/inlets/{name} ] && [ ! -e /opt/inlets/.{name}.installing ]; then echo absent; exit 0; fi
sup=$(cat "$opt/supervisor" 2>/dev/null || echo installing)
case "$sup" in
  systemd) echo "systemd $(systemctl is-active inlets-{name}.service 2>/dev/null || true)";;
  plain) pid=$(cat "$opt/supervisor.pid" 2>/dev/null || true)
         if [ -n "$pid" ] && grep -q "$opt/supervise" "/proc/$pid/cmdline" 2>/dev/null; then echo "plain active"
         elif [ -n "$(ours)" ]; then
           echo "plain active: the server runs but its supervisor is gone, so nothing restarts it: delete it and create it again"
         else echo "plain stopped: $(grep -v '^supervise:' "$opt/server.log" 2>/dev/null | tail -n 1)"; fi;;
  *) echo "$sup";;
esac
"""

_DELETE = _OURS + _PROC + r"""
set -u
name={name}; opt=/opt/inlets/$name; conf=/etc/inlets/$name; mark=/opt/inlets/.$name.installing
unit=/etc/systemd/system/inlets-$name.service
if [ ! -d "$opt" ] && [ ! -d "$conf" ] && [ ! -e "$mark" ]; then echo absent; exit 0; fi
# an install still running (its inletsctl was interrupted) would make the folders again: stop it first
pid= start=
if [ -f "$mark" ]; then read -r pid start < "$mark" || true; fi
if [ -n "$pid" ] && [ -n "$start" ] && [ "$(started "$pid")" = "$start" ]; then
  pg=$(group "$pid"); [ -n "$pg" ] && [ "$pg" != "$(group $$)" ] || pg=$pid
  kill -TERM "-$pg" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  i=0; while [ "$(started "$pid")" = "$start" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ "$(started "$pid")" != "$start" ] || kill -KILL "-$pg" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
fi
rm -f "$mark"
sup=$(cat "$opt/supervisor" 2>/dev/null || echo plain)
if [ "$sup" = systemd ] || [ -e "$unit" ]; then
  systemctl disable --now "inlets-$name.service" >/dev/null 2>&1 || true
  rm -f "$unit"
  systemctl daemon-reload || true
else
  pid=$(cat "$opt/supervisor.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -q "$opt/supervise" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "-$pid" 2>/dev/null || true
  fi
  left=$(ours)  # a server whose supervisor was gone, or one it left
  if [ -n "$left" ]; then
    kill -TERM $left 2>/dev/null || true
    i=0; while [ -n "$(ours)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    left=$(ours); [ -z "$left" ] || kill -KILL $left 2>/dev/null || true
  fi
fi
rm -rf "$opt" "$conf"
echo deleted
"""


def host_id(opts: SshOptions, name: str) -> str:
    return f"{opts.user}@{opts.host}:{opts.port}/{name}"


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
        from ..ssh_connect import SshOptions

        name = host_id_.rsplit("/", 1)[-1]
        state_dir = self._root / name
        if not name or "/" not in host_id_ or not (state_dir / RECORD).is_file():
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
        code, stage, err = run(client, f"mktemp -d {STAGE_TEMPLATE}")
        stage = stage.strip()
        if code != 0 or not stage.startswith("/tmp/inletsctl."):
            raise ProvisionError(f"ssh: cannot make a temporary folder on {opts.host}: {_last(err)}")
        try:
            sftp = client.open_sftp()
        except (paramiko.SSHException, OSError) as exc:
            raise ProvisionError(f"ssh: {opts.host} offers no SFTP ({describe(exc)})") from None
        try:
            for local in ("token", "server.crt", "server.key"):
                upload(sftp, f"{stage}/{local}", (plan.state_dir / local).read_bytes())
            upload(sftp, f"{stage}/{wheel.filename}", wheel.data, 0o644)
            upload(sftp, f"{stage}/constraints.txt", "".join(f"{pin}\n" for pin in constraints(wheel.requires)).encode(), 0o644)
            upload(sftp, f"{stage}/unit", systemd_unit(argv, plan.spec.mode).encode(), 0o644)
            supervise = _SUPERVISE.format(name=plan.name, opt=opt, exec_start=shlex.join(argv))
            upload(sftp, f"{stage}/supervise", supervise.encode(), 0o755)
        except (OSError, paramiko.SSHException) as exc:
            run(client, f"rm -rf {shlex.quote(stage)}")
            raise ProvisionError(f"ssh: uploading to {opts.host}:{stage} failed: {describe(exc)}") from None
        finally:
            sftp.close()
        script = _INSTALL.format(
            name=shlex.quote(plan.name), stage=shlex.quote(stage), py=shlex.quote(opts.remote_python),
            wheel=shlex.quote(wheel.filename), sup=shlex.quote(opts.supervisor),
        )
        code, out, err = self._root_run(client, opts, script)
        if code != 0:
            run(client, f"rm -rf {shlex.quote(stage)}")
            raise ProvisionError(f"ssh: installing on {opts.host} failed: {_last(err) or f'exit status {code}'}")
        (plan.state_dir / "server.key").unlink(missing_ok=True)  # the key lives on the host only
        supervisor = out.strip().splitlines()[-1] if out.strip() else opts.supervisor
        return Host(
            id=host_id(opts, plan.name), name=plan.name, provider=self.name, status="starting", ip=opts.host,
            data_addr=opts.data_addr, control_port=plan.spec.control_port, mode=plan.spec.mode,
            detail=f"installed under {supervisor}; host key {fp}",
        )

    def status(self, host_id_: str) -> Host:
        name, state_dir, opts = self._record(host_id_)
        client = self._client(name, state_dir, opts)
        code, out, err = self._root_run(client, opts, _STATUS.format(name=shlex.quote(name)))
        seen = out.strip() or _last(err) or f"exit status {code}"
        if seen == "absent":
            raise NotFound(f"ssh: exit server {name} is not installed on {opts.host}")
        sup, _, state = seen.partition(" ")
        word = state.split(":", 1)[0]
        status = ACTIVE if word == "active" else FAILED if word in ("stopped", "failed") else word or seen
        return Host(
            id=host_id_, name=name, provider=self.name, status=status, ip=opts.host, data_addr=opts.data_addr,
            detail=f"{sup} supervisor: {state or seen} on {opts.target}", extra={"supervisor": sup},
        )

    def delete(self, host_id_: str, timeout: float = GONE_TIMEOUT) -> None:
        name, state_dir, opts = self._record(host_id_)
        client = self._client(name, state_dir, opts)
        code, out, err = self._root_run(client, opts, _DELETE.format(name=shlex.quote(name)))
        if code != 0:
            raise ProvisionError(f"ssh: removing {name} from {opts.host} failed: {_last(err) or f'exit status {code}'}")
        if out.strip() == "absent":
            raise NotFound(f"ssh: exit server {name} is not installed on {opts.host}")

    def list(self) -> list[Host]:
        """The ssh exit servers in local state, each asked over SSH (unreachable ones say so)."""
        from ..ssh_connect import SshOptions

        hosts: list[Host] = []
        if not self._root.is_dir():
            return hosts
        for record in sorted(self._root.glob(f"*/{RECORD}")):
            opts = SshOptions.load(record)
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


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def build(creds: Credentials, state_root: Path) -> SshProvider:
    return SshProvider(state_root, creds.ssh)
