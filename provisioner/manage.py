"""``inletsctl delete``, ``list`` and ``status``: the cloud joined with local state."""

from __future__ import annotations

import datetime
import ipaddress
import shlex
import time
from pathlib import Path
from typing import Any, Iterable

from inlets_py.runtime.core.probe import ProbeError
from inlets_py.runtime.core.tls import TlsConfigError

from . import replicas
from .errors import (
    STATE_API_ERROR, STATE_DAMAGED, STATE_GONE, STATE_INVALID, STATE_NO_CREDENTIALS, STATE_NO_IP, STATE_NOT_FOUND,
    STATE_STOPPED, STATE_UNREACHABLE, NotFound, ProvisionError, StatusFailed,
)
from .providers import Credentials, make, registry
from .providers.base import FAILED, GONE_TIMEOUT, TAG, Host, Kept, Provisioner, delete_leftovers, leftover_words
from .spec import check_timeout
from .names import check_name
from .state import Damaged, ServerState, all_states, damage, delete_command, scan
from .wait import Progress, status_json, wait_until_gone

def _provider_for(name: str, root: Path, creds: Credentials) -> Provisioner:
    return make(registry.check(name), root, creds)


def delete(
    root: Path,
    creds: Credentials,
    progress: Progress,
    name: str | None = None,
    host_id: str | None = None,
    ip: str | None = None,
    provider_name: str | None = None,
    timeout: float = GONE_TIMEOUT,
) -> str:
    """Delete by name (local state), or by --id / --ip on --provider; returns what was done."""
    if sum(x is not None for x in (name, host_id, ip)) != 1:
        raise ProvisionError("give exactly one of NAME, --id ID or --ip IP")
    by_id = host_id is not None
    check_timeout(timeout)
    if ip is not None:
        _check_ip(ip)
    states = all_states(root)
    meta: dict[str, Any] | None = None
    damaged: Damaged | None = None
    if name is not None:
        check_name(name)  # a folder under root: never "..", "" or a path
        meta = next((m for m in states if m.get("name") == name), None)
        damaged = damage(root, name) if meta is None else None
        if damaged is not None and provider_name is None:
            if damaged.provider not in (None, "local") or not _runs_locally(root, creds, name):
                return _remove_damaged(damaged)
            provider_name = "local"  # found below by name, stopped, then its damaged state removed
        if meta is None and provider_name is None:
            raise NotFound(f"no exit server named {name!r} in {root} (to delete one made elsewhere add --provider)")
    if provider_name is None:
        if meta is None:
            raise ProvisionError("--id and --ip need --provider")
        provider_name = str(meta["provider"])
    provider = _provider_for(provider_name, root, creds)
    if replicas.is_group(meta) and meta is not None and meta.get("provider") == provider_name:
        return _delete_group(root, provider, meta, timeout, progress)
    if meta is not None and meta.get("provider") == provider_name and meta.get("id"):
        host_id = str(meta["id"])
    elif host_id is None:
        try:
            found = _find(provider, name=name, ip=ip)
            host_id, name = found.id, name or found.name or None  # --ip: said by its name, not its id twice
        except NotFound:
            group = replicas.cloud_group(provider, name) if name is not None and meta is None else None
            if group is not None:  # made with --replicas on another machine: its droplets carry the group's tag
                done = _delete_group(root, provider, group, timeout, progress)
                if damaged is not None:
                    damaged.state.remove()
                return done
            if name is None:
                raise
            if meta is None and damaged is None:  # no state here: only what a create cut short left, by its name
                items = _leftover_items(root, provider, name, f"{provider_name} has no exit server named {name}", False,
                                        creds.region)
                if not items:
                    raise
                said = f"{provider_name} has no exit server named {name}; {leftover_words(items)}"
                if all(isinstance(item, Kept) for item in items):  # nothing deleted: still no exit server of that name
                    raise NotFound(said) from None
                return said
            made_with = meta.get("provider") if meta is not None else damaged.provider  # type: ignore[union-attr]
            if made_with not in (None, provider_name):  # the other provider may well have it: keep its state
                raise NotFound(f"{provider_name} has no exit server named {name}, and {name} was made with "
                               f"--provider {made_with}: its state is kept (delete it with --provider {made_with})") from None
            removed = _leftovers(root, provider, name, f"{provider_name} has no exit server named {name}")
            ServerState(root, name).remove()  # create never got as far as an id, or the state is damaged
            return f"{provider_name} has no exit server named {name}; {removed}removed its local state ({root / name})"
    if meta is None:
        meta = next((m for m in states if m.get("provider") == provider_name and str(m.get("id")) == host_id), None)
    known = next((h for h in provider.list() if h.id == host_id), None) if by_id and meta is None else None
    if by_id and meta is None and known is None:
        # a mistyped --id must never delete a VM inletsctl did not make (a database, a web server)
        raise NotFound(f"{provider_name}: no exit server with id {host_id} among those inletsctl made (tagged {TAG}); "
                       "inletsctl deletes nothing else: see them with inletsctl list --provider " + provider_name)
    label = (meta or {}).get("name") or name or (known.name if known is not None else None) or host_id
    try:
        started = time.monotonic()
        if meta is not None and not by_id:
            _check_serves(provider, host_id, meta["name"])
        provider.delete(host_id, timeout)
        progress(f"deleting {label} ({provider_name} {host_id})")
        wait_until_gone(provider, host_id, timeout, progress, interval=1.0, started=started, label=str(label))
        done = f"deleted {label} ({provider_name} {host_id})"
    except NotFound:
        if meta is None:
            raise NotFound(f"{provider_name}: no exit server with id {host_id}") from None
        gone = f"{label} was already gone on {provider_name}"
        done = f"{gone}; {_leftovers(root, provider, str(meta['name']), gone)}removed its local state"
    if meta is not None:
        ServerState(root, str(meta["name"])).remove()
    elif damaged is not None:
        damaged.state.remove()
        done += f"; removed its damaged local state ({damaged.state.dir})"
    return done


def _check_ip(ip: str) -> None:
    """--ip before any cloud is asked: a typo read "no exit server with IP notanip", as if one had been looked for."""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ProvisionError(f"--ip {ip!r} is not an IP address: give the exit server's public IPv4 or IPv6 "
                             "address, as inletsctl list --provider P shows it") from None


def _leftovers(root: Path, provider: Provisioner, name: str, gone: str) -> str:
    """Delete what create made for the gone host ``name`` (a Hetzner or Linode firewall, which its bare-number id
    cannot lead to); "deleted its firewall inlets-NAME; " or "". A failure keeps the local state, which holds the name."""
    said = leftover_words(_leftover_items(root, provider, name, gone))
    return f"{said}; " if said else ""


def _leftover_items(root: Path, provider: Provisioner, name: str, gone: str, state: bool = True,
                    region: str | None = None) -> list[str]:
    """``delete_leftovers``' answer; a failure is one line naming the command to run again."""
    try:
        removed = delete_leftovers(provider, name)
    except NotFound:
        removed = []
    except ProvisionError as exc:
        kept = "its local state is kept, as only it names that firewall: run" if state else "run"
        # without state only the command line says where: its --region too (EC2's groups are regional)
        where = f" --provider {provider.name}" + (f" --region {shlex.quote(region)}" if region else "")
        command = delete_command(name, root) + ("" if state else where)
        raise ProvisionError(f"{gone}, but its firewall could not be deleted ({exc}); {kept} {command} again") from None
    return removed


def _runs_locally(root: Path, creds: Credentials, name: str) -> bool:
    """A local exit server of that name runs from ``root``: looked for when its state is damaged, as it costs
    nothing, so that ``delete NAME`` stops it rather than leaving it serving with its state gone."""
    return any(host.name == name for host in _provider_for("local", root, creds).list())


def _remove_damaged(damaged: Damaged) -> str:
    """Remove a state folder that cannot be read, saying what inletsctl could not check."""
    name, where = damaged.state.name, damaged.provider
    damaged.state.remove()
    look = (f"`inletsctl list --provider {where}`, then `inletsctl delete {name} --provider {where}`" if where else
            f"`inletsctl list --provider P` for each provider you use, then `inletsctl delete {name} --provider P`")
    return (f"removed the damaged local state of {name} ({damaged.state.dir}: {damaged.why}); inletsctl could not "
            f"check whether its exit server or VM still runs: look with {look}")


def _delete_group(root: Path, provider: Provisioner, meta: dict[str, Any], timeout: float, progress: Progress) -> str:
    """The balancer and every replica of a ``create --replicas`` exit server, then its local state."""
    name = str(meta["name"])
    try:
        done = f"deleted {name} ({provider.name}: " + ", ".join(replicas.delete_group(provider, meta, timeout, progress)) + ")"
    except NotFound:
        done = f"{name} was already gone on {provider.name}; removed its local state"
    ServerState(root, name).remove()
    return done


def _find(provider: Provisioner, name: str | None = None, ip: str | None = None) -> Host:
    """The one exit server of that name or IP: several (every local one has 127.0.0.1) are refused, never guessed."""
    found = [h for h in provider.list() if (name is not None and h.name == name) or (ip is not None and h.ip == ip)]
    what = f"named {name!r}" if name is not None else f"with IP {ip}"
    if len(found) > 1:
        choices = ", ".join(f"{h.name} (--id {h.id})" if h.name else f"--id {h.id}" for h in found)
        which = "--id" if name is not None else "its NAME or --id"  # several of one name: the name cannot tell them
        raise ProvisionError(f"{provider.name}: {len(found)} exit servers {what}: {choices}; say which with {which}")
    if not found:
        raise NotFound(f"{provider.name}: no exit server {what} (tagged inlets)")
    return found[0]


def list_servers(
    root: Path, creds: Credentials, provider_name: str | None, notes: list[str]
) -> list[dict[str, Any]]:
    """Rows of cloud hosts joined with local state; ``where`` says which side holds each."""
    states, damaged = scan(root)
    damaged = [d for d in damaged if not provider_name or d.provider in (None, provider_name)]
    known = {d.provider for d in damaged if d.provider in registry.PROVIDERS}  # their clouds are worth a look
    others = ({str(m["provider"]) for m in states} | known) - {"local"}
    names = [provider_name] if provider_name else ["local", *sorted(others)]
    rows: list[dict[str, Any]] = [_damaged_row(d, notes) for d in damaged]
    for pname in names:
        local_rows = [m for m in states if m.get("provider") == pname]
        try:
            provider = _connect(pname, root, creds)
            hosts = provider.list()
        except ProvisionError as exc:
            rows += [_row(m, None, "local state (cloud not checked)") | {"status": "unknown"} for m in local_rows]
            if provider_name:  # the one cloud asked for: a failure, with the rows known (``list --json`` prints them)
                raise _failed(exc, {"servers": rows}) from None
            notes.append(f"{pname}: not checked ({exc})")
            continue
        by_id = {h.id: h for h in hosts}
        groups = [m for m in local_rows if replicas.is_group(m)] or [h for h in hosts if h.group]
        balancers = replicas.balancing(provider).balancers() if groups else []
        for meta in local_rows:
            if replicas.is_group(meta):
                members = [by_id.pop(str(r.get("id")), None) for r in meta["replicas"]]
                ids = [str(r.get("id")) for r in meta["replicas"]]
                balancer = replicas.find_balancer(balancers, str(meta["name"]), ids, meta.get("balancer_id"))
                seen = balancer is not None or any(members)
                rows.append(replicas.group_row(meta, members, balancer, "both" if seen else "local state only"))
                continue
            host_id = str(meta.get("id") or _named(by_id.values(), meta.get("name")))
            host = None if _serves_another(by_id.get(host_id), meta["name"]) else by_id.pop(host_id, None)
            rows.append(_row(meta, host, "both" if host else "local state only"))
        cloud_rows, alone = replicas.cloud_groups(list(by_id.values()), balancers)
        rows += cloud_rows + [_row(None, host, f"{pname} only") for host in alone]
    return rows


def _damaged_row(damaged: Damaged, notes: list[str]) -> dict[str, Any]:
    """A state folder ``list`` cannot read: shown, with a note on how to remove it, rather than hidden."""
    name = damaged.state.name
    notes.append(f"{name}: damaged local state ({damaged.why}); {damaged.advice}")
    return {"name": name, "provider": damaged.provider, "id": "", "ip": None, "mode": None, "status": "damaged",
            "created": None, "expires": None, "where": "local state (damaged)"}


def _row(meta: dict[str, Any] | None, host: Host | None, where: str) -> dict[str, Any]:
    meta = meta or {}
    return {
        "name": meta.get("name") or (host.name if host else None),
        "provider": meta.get("provider") or (host.provider if host else None),
        "id": str(meta.get("id") or (host.id if host else "")),
        "ip": (host.ip if host and host.ip else None) or meta.get("ip"),
        "mode": meta.get("mode") or (host.mode if host else None),
        "status": host.status if host else "absent",
        "created": meta.get("created_at") or (host.created_at if host else None),
        "expires": meta.get("expires_at") or (host.expires_at if host else None),
        "where": where,
    }


def expired(row: dict[str, Any], now: datetime.datetime | None = None) -> bool:
    if not row.get("expires"):
        return False
    now = now or datetime.datetime.now(datetime.timezone.utc)
    when = datetime.datetime.strptime(row["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return when <= now


def prune(root: Path, creds: Credentials, rows: list[dict[str, Any]], progress: Progress) -> tuple[list[str], int]:
    """Delete every expired exit server (the cloud bills a powered-off VM until it is deleted); what was done, and
    how many could not be deleted (the command then fails, so that cron says so)."""
    done, failed = [], 0
    for row in rows:
        if not expired(row):
            continue
        try:
            if row["where"] == "both" or row["where"].startswith("local state"):
                done.append(delete(root, creds, progress, name=row["name"]))
            elif row.get("replicas"):  # a group known only by its tags: by name, as its id is its balancer's
                done.append(delete(root, creds, progress, name=row["name"], provider_name=row["provider"]))
            else:
                done.append(delete(root, creds, progress, host_id=row["id"], provider_name=row["provider"]))
        except ProvisionError as exc:
            done.append(f"could not delete {row['name']}: {exc}")
            failed += 1
    return done, failed


def status(root: Path, creds: Credentials, name: str) -> dict[str, Any]:
    """The provider's view and the exit server's own answer over pinned TLS; ``error`` (and ``state``
    STATE_UNREACHABLE) instead of ``server`` when it did not answer; StatusFailed, with what was learned before, for
    every other failure (``status --json`` prints one object every time)."""
    result: dict[str, Any] = {"name": name}
    try:
        return _status(root, creds, name, result)
    except ProvisionError as exc:
        failed = _failed(exc, result)
        failed.result |= {"error": str(failed), "state": failed.state}
        raise failed from None


def _connect(name: str, root: Path, creds: Credentials) -> Provisioner:
    """The provider, for ``status`` and ``list``: an unknown name and missing credentials raised as StatusFailed."""
    try:
        registry.check(name)
    except ProvisionError as exc:
        raise StatusFailed(str(exc), STATE_INVALID, exit_code=exc.exit_code) from None
    try:
        return _provider_for(name, root, creds)
    except ProvisionError as exc:
        raise StatusFailed(str(exc), STATE_NO_CREDENTIALS, exit_code=exc.exit_code) from None


def _failed(exc: ProvisionError, result: dict[str, Any]) -> StatusFailed:
    """``exc`` as ``status`` and ``list --provider`` fail with, ``result`` (what was learned before) added: a
    StatusFailed keeps the state word given where it was raised; any other error, which only the provider's API
    raises past those, is STATE_API_ERROR."""
    if not isinstance(exc, StatusFailed):
        return StatusFailed(str(exc), STATE_API_ERROR, result, exc.exit_code)
    exc.result = result | exc.result
    return exc


def _status(root: Path, creds: Credentials, name: str, result: dict[str, Any]) -> dict[str, Any]:
    try:
        state = ServerState(root, check_name(name))
        meta = state.load()
    except NotFound as exc:
        raise StatusFailed(str(exc), STATE_NOT_FOUND) from None
    except Damaged as exc:
        raise StatusFailed(str(exc), STATE_DAMAGED, {"provider": exc.provider} if exc.provider else None) from None
    except ProvisionError as exc:  # a name that cannot be one, a state folder that cannot be read
        raise StatusFailed(state=STATE_INVALID, message=str(exc)) from None
    port = meta.get("control_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:  # status needs it, list and delete not
        damaged = Damaged(state, "has no control port", meta["provider"])
        raise StatusFailed(str(damaged), STATE_DAMAGED, {"provider": meta["provider"]})
    result |= {"name": name, "provider": meta["provider"], "id": meta.get("id"), "ip": meta.get("ip")}
    if meta.get("client_command"):  # create's, for one who lost it (its output cut short by a Ctrl-C, say)
        result["client_command"] = meta["client_command"]
    provider = _connect(str(meta["provider"]), root, creds)
    if replicas.is_group(meta):
        return result | _group_status(provider, meta, state)
    if not meta.get("id"):  # create was cut short before it learned the id; what it made may exist all the same
        host_id = _named(provider.list(), name)
        if host_id:  # as delete finds it: by name
            meta = meta | {"id": host_id}
            result["id"] = host_id
    try:
        host = provider.status(str(meta.get("id")))
        _check_serves(provider, str(meta.get("id")), name, host)
        result["vm"] = host.detail or host.status
        if not meta.get("ip") and host.ip:
            meta = meta | {"ip": host.ip}
            result["ip"] = host.ip
    except NotFound:  # asking its old address could only fail, or reach whatever has that address now
        if meta.get("id"):
            raise StatusFailed(state=STATE_GONE, message=(
                f"exit server {name} is gone from {meta['provider']} (id {meta['id']}; deleted or expired outside "
                f"inletsctl): remove its local state with: {delete_command(name, root)}")) from None
        result["vm"] = "gone"
    else:
        if host.status == FAILED:  # asking its control port would only add "connection refused"
            raise StatusFailed(state=STATE_STOPPED, message=f"exit server {name} is not running ({result['vm']}): delete it "
                               f"and create it again: {delete_command(name, root)}")
    if not meta.get("ip"):
        raise StatusFailed(state=STATE_NO_IP, message=f"{name} has no IP yet (create did not finish); vm: {result['vm']}")
    try:
        result["server"] = _ask(state, str(meta["ip"]), meta["control_port"])
    except ProbeError as exc:  # a result all the same: ``status --json`` prints it, then fails
        result["error"] = f"exit server {name} at {meta['ip']}:{meta['control_port']} did not answer: {exc}; vm: {result['vm']}"
        result["state"] = STATE_UNREACHABLE
    return result


def _serves_another(host: Host | None, name: object) -> bool:
    """``host``, found by the pid a local exit server's state recorded, is another local exit server's process: the
    pid was reused after this one died (a reboot, a kill -9), and must never be shown, asked or stopped as this one."""
    return host is not None and host.provider == "local" and bool(host.name) and host.name != name


def _check_serves(provider: Provisioner, host_id: str, name: object, host: Host | None = None) -> None:
    """NotFound (gone) when the local process ``host_id`` serves another exit server than ``name``."""
    if provider.name != "local":
        return
    try:
        host = host or provider.status(host_id)
    except NotFound:
        return
    if _serves_another(host, name):
        raise NotFound(f"local: process {host_id} now serves exit server {host.name}, not {name}")


def _named(hosts: Iterable[Host], name: object) -> str | None:
    """The id of the one host called ``name``, for a state whose create was cut short before it recorded one
    (Ctrl-C while the cloud made the VM, or while an ssh host was installed); none when several share the name."""
    found = [h.id for h in hosts if h.name == name]
    return found[0] if len(found) == 1 else None


def _ask(state: ServerState, ip: str, port: int) -> dict[str, Any]:
    """The exit server's /status over TLS pinned to the CA kept in ``state``; a CA file that is missing or damaged
    there is said in one line with what to do (only that file lets anything check this server)."""
    try:
        token = state.token()
    except ProvisionError as exc:  # the state's, not the server's: a script should not retry it
        raise StatusFailed(state=STATE_DAMAGED, message=str(exc)) from None
    try:
        return status_json(ip, port, state.ca_file, token)
    except TlsConfigError as exc:
        raise StatusFailed(state=STATE_DAMAGED, message=f"{exc}; put back a copy of it, or delete the exit server and "
                           f"create it again: {delete_command(state.name, state.root)}") from None


def _group_status(provider: Provisioner, meta: dict[str, Any], state: ServerState) -> dict[str, Any]:
    """The balancer's state, and each replica's VM and /status; ``server`` is the first replica that answered."""
    try:
        vm = replicas.balancing(provider).balancer_status(str(meta.get("balancer_id"))).detail
    except NotFound:
        vm = "load balancer gone"
    rows: list[dict[str, Any]] = []
    for replica in meta["replicas"]:
        row: dict[str, Any] = {"name": replica["name"], "id": replica.get("id"), "ip": replica.get("ip")}
        try:
            row["vm"] = provider.status(str(replica.get("id"))).detail
        except NotFound:
            row["vm"] = "gone"
        try:
            row["server"] = _ask(state, str(replica["ip"]), meta["control_port"])
        except (ProbeError, KeyError, TypeError) as exc:
            row["error"] = str(exc) if isinstance(exc, ProbeError) else "no IP yet (create did not finish)"
        rows.append(row)
    answered = next((r["server"] for r in rows if "server" in r), None)
    if answered is None:  # a result all the same, as one exit server's that did not answer
        why = "; ".join(f"{r['name']}: {r['error']}, vm: {r['vm']}" for r in rows)
        return {"vm": vm, "replicas": rows, "error": f"no replica of {meta['name']} answered ({why}); balancer: {vm}",
                "state": STATE_UNREACHABLE}
    return {"vm": vm, "server": answered, "replicas": rows}
