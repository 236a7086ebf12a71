"""The shell scripts ``--provider ssh`` runs on the host as root (``sh -s``, the script on stdin), and the plain
supervisor it installs there. Each is a ``str.format`` template: values go in already quoted (``shlex.quote``),
so literal braces are doubled.

An install leaves a mark, /opt/inlets/.NAME.installing, with its shell's pid and start time until it ends:
``DELETE`` stops an install still running (its inletsctl interrupted) before it removes anything, which the
install would otherwise make again.
"""

from __future__ import annotations

#: ``started PID``: the process's start time (field 22 of /proc/PID/stat), which a pid reused later does not share;
#: ``group PID``: its process group (field 5), the install's shell with its children (pip, say);
#: ``installing``: true while the install that made ``$mark`` runs (its pid and start time in ``$ipid`` and
#: ``$istart``); a mark left by one that died without its traps (the host rebooted, say) is stale
_PROC = r"""
started() {{ sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }}
group() {{ sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f3; }}
installing() {{
  ipid= istart=
  if [ -f "$mark" ]; then read -r ipid istart < "$mark" || true; fi
  [ -n "$ipid" ] && [ -n "$istart" ] && [ "$(started "$ipid")" = "$istart" ]
}}
"""

INSTALL = _PROC + r"""
set -eu
name={name}; stage={stage}; py={py}; wheel={wheel}; sup={sup}
conf=/etc/inlets/$name; opt=/opt/inlets/$name; venv=$opt/venv; mark=/opt/inlets/.$name.installing
fail() {{ echo "$*" >&2; exit 3; }}
trap 'rm -rf "$stage"' EXIT
if [ "$sup" = auto ]; then if [ -d /run/systemd/system ]; then sup=systemd; else sup=plain; fi; fi
if [ "$sup" = systemd ] && [ ! -d /run/systemd/system ]; then fail "systemd is not running on this host: use --supervisor plain"; fi
# the mark names this install (pid and start time): a delete stops it before removing anything, and a second
# create of the same name is refused (set -C: the mark is made only if it is not there); the folders are made
# each time, as a delete of the host's last exit server removes them
mark_taken() {{ install -d -m 0755 /etc/inlets /opt/inlets && ( set -C; echo "$$ $(started $$)" > "$mark" ) 2>/dev/null; }}
if ! mark_taken; then
  if installing; then
    fail "an exit server named $name is being installed on this host right now (pid $ipid): let that create finish, or stop it with inletsctl delete $name"
  fi
  rm -f "$mark"; mark_taken || fail "an exit server named $name is being installed on this host right now"
fi
trap 'rm -rf "$stage" "$mark"; rmdir /opt/inlets /etc/inlets 2>/dev/null || true' EXIT
trap 'exit 143' TERM HUP INT  # so the EXIT trap cleans up after a delete stops the install
trap '' PIPE  # a write to the channel of an inletsctl that is gone (Ctrl-C) fails, not kills: the install ends as it would
if [ -e "$conf" ] || [ -e "$opt" ]; then fail "an exit server named $name is already installed on this host ($opt): choose another name, or first delete that one with inletsctl delete $name where it was created"; fi
command -v "$py" >/dev/null 2>&1 || fail "no $py on the host: install python3 (3.10 or newer) or pass --remote-python"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
  version=$("$py" --version 2>&1 | head -n 1)
  case "$version" in
    "Python "*) fail "$py on the host is $version: the exit server needs Python 3.10 or newer; install it, or pass --remote-python" ;;
    *) fail "$py on the host is not a Python interpreter: give python3 (3.10 or newer) with --remote-python" ;;
  esac
fi
# the ports the server will listen on, bound as it will (SO_REUSEADDR), so one in use is refused before anything
# is installed, not found out when the server exits (the control port) or a client connects (the data ports)
"$py" - {ports} <<'PY' || exit 3
import errno, socket, sys
for arg in sys.argv[1:]:
    addr, port, flag = arg.rsplit(":", 2)
    for family, host in ((socket.AF_INET6, addr),) if ":" in addr else ((socket.AF_INET, addr or "0.0.0.0"),):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and addr:
                    sys.exit(f"the host has no address {{addr}} (--data-addr): give one of its own addresses")
                where = (f"[{{addr}}]:{{port}}" if ":" in addr else f"{{addr}}:{{port}}") if addr else f"port {{port}}"
                sys.exit(f"{{where}} ({{flag}}) is in use on this host ({{exc.strerror}}): stop what uses it, or choose another {{flag}}")
PY
# from here on a failure leaves nothing of this exit server behind
trap 'rm -rf "$stage" "$conf" "$opt" "$mark"; rm -f "/etc/systemd/system/inlets-$name.service"; rmdir /opt/inlets /etc/inlets 2>/dev/null || true' EXIT
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
if ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1; then  # not pip --version: that loads its whole CLI
  "$venv/bin/python" -m ensurepip --default-pip >/dev/null 2>&1 || fail "$py has no pip and no ensurepip: install python3-venv"
fi
install -m 0644 "$stage/constraints.txt" "$opt/constraints.txt"
# one pip run installs the wheel and checks its dependencies against the inherited packages (each run costs the
# host most of a second of CPU); the index is asked only when one is missing
if ! $pip install --no-index "$opt/$wheel" >/dev/null 2>&1; then
  $pip install --constraint "$opt/constraints.txt" "$opt/$wheel" >&2 || fail "pip could not install the runtime's dependencies from the host's package index"
fi
# pip leaves the host Python's own inlets_py of the same version where it is (not an editable one): the venv then
# has no runtime of its own, which the unit runs
if [ ! -x "$venv/bin/inlets" ]; then
  $pip install --no-index --no-deps --ignore-installed "$opt/$wheel" >&2 || fail "pip could not install $wheel"
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
rm -rf "$stage" "$mark"  # before the one line to the channel, which may be gone
trap - EXIT
echo "$sup"
"""

#: restarts the server like the unit's Restart=always / RestartSec=2, and gives up after 5 starts
#: within 60 s like the unit's StartLimitBurst/StartLimitIntervalSec (with 2 s between starts, 5 never
#: fit in 10 s, so a server that cannot start would be restarted forever); SIGHUP is passed on (token reload)
SUPERVISE = r"""#!/bin/sh
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
#: is still found. The script comes on stdin (``sh -s``): its own shell's command line names neither. One grep picks
#: the few candidates (a ``tr`` per process took 0.4 s with 237 processes, and delete scans again while it waits for
#: them to go); each is then read as before, an argument at a time (grep's own line, read after it exited, is gone).
_OURS = r"""
ours() {{
  for f in $(grep -lsF -e "$opt/supervise" -e "$opt/venv/bin/" /proc/[0-9]*/cmdline); do
    case " $(tr '\0' ' ' 2>/dev/null < "$f")" in
      *" $opt/supervise "*|*" $opt/venv/bin/"*) d=${{f%/cmdline}}; echo "${{d#/proc/}}";;
    esac
  done
}}
"""

STATUS = _OURS + _PROC + r"""
opt=/opt/inlets/{name}; mark=/opt/inlets/.{name}.installing
if [ ! -d "$opt" ] && [ ! -d /etc/inlets/{name} ] && ! installing; then echo absent; exit 0; fi
sup=$(cat "$opt/supervisor" 2>/dev/null || true)
if [ -z "$sup" ]; then  # not recorded yet, or never: an install that died without its traps (the host restarted, say)
  if installing; then sup=installing
  else echo "none failed: its install stopped before the end (killed, or the host restarted)"; exit 0; fi
fi
case "$sup" in
  systemd) echo "systemd $(systemctl is-active inlets-{name}.service 2>/dev/null || true)";;
  plain) pid=$(cat "$opt/supervisor.pid" 2>/dev/null || true)
         if [ -n "$pid" ] && grep -q "$opt/supervise" "/proc/$pid/cmdline" 2>/dev/null; then echo "plain active"
         elif [ -n "$(ours)" ]; then
           echo "plain active: the server runs but its supervisor is gone, so nothing restarts it: delete it and create it again"
         else last=$(grep -v '^supervise:' "$opt/server.log" 2>/dev/null | tail -n 1)
           # the supervisor's last word is its giving up, with the server's own error before it; else nothing ended
           # it (the host restarted, or both were killed), and the server's last line is only its "started"
           if tail -n 1 "$opt/server.log" 2>/dev/null | grep -q '^supervise: .*giving up'; then echo "plain stopped: $last"
           else echo "plain stopped: nothing runs it since the host restarted or it was killed, and the plain supervisor starts it only at create (the log's last line: $last)"; fi
         fi;;
  *) echo "$sup";;
esac
"""

#: ``delete_stages``: removes the folders create uploaded the secrets to (the install removes its own, so these are
#: a create's cut short before its install ran), printing each
_STAGES = r"""
delete_stages() {{ for s in "/tmp/inletsctl.$name".*; do if [ -d "$s" ]; then rm -rf "$s" && echo "$s"; fi; done; }}
"""

#: the uploads of a create cut short, for delete when nothing is installed (``DELETE`` removes them too)
DELETE_STAGES = _STAGES + r"""
name={name}
delete_stages
"""

DELETE = _OURS + _PROC + _STAGES + r"""
set -u
name={name}; opt=/opt/inlets/$name; conf=/etc/inlets/$name; mark=/opt/inlets/.$name.installing
unit=/etc/systemd/system/inlets-$name.service
if [ ! -d "$opt" ] && [ ! -d "$conf" ] && [ ! -e "$mark" ]; then echo absent; exit 0; fi
# an install still running (its inletsctl was interrupted) would make the folders again: stop it first
if installing; then
  pg=$(group "$ipid"); [ -n "$pg" ] && [ "$pg" != "$(group $$)" ] || pg=$ipid
  kill -TERM "-$pg" 2>/dev/null || kill -TERM "$ipid" 2>/dev/null || true
  i=0; while [ "$(started "$ipid")" = "$istart" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ "$(started "$ipid")" != "$istart" ] || kill -KILL "-$pg" 2>/dev/null || kill -KILL "$ipid" 2>/dev/null || true
fi
rm -f "$mark"
delete_stages >/dev/null
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
rmdir /opt/inlets /etc/inlets 2>/dev/null || true  # the host's last exit server: nothing of inletsctl's is left
echo deleted
"""
