"""``inletsctl delete`` and ``list``: the cloud joined with local state (``status`` is in status.py)."""

from __future__ import annotations

import datetime
import ipaddress
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import replicas
from .errors import NotFound, ProvisionError, UsageError
from .providers import Credentials, make, registry
from .providers.base import (GONE_TIMEOUT, TAG, Host, Kept, Provisioner, delete_leftovers, leftover_words,
                             with_recorded_api_url)
from .spec import check_timeout
from .names import check_name
from .state import Damaged, ServerState, all_states, damage, delete_command, not_here, scan
from .status import (as_failed, check_gone, check_serves, connect, ended, named, running_id, serves_another,
                     state_gone)
from .wait import Progress, wait_until_gone


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
        raise UsageError("give exactly one of NAME, --id ID or --ip IP")
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
        if damaged is not None and damaged.unchecked and provider_name in (None, damaged.provider):
            return _remove_damaged(damaged)  # only that damaged file led to its exit server (ssh): none can look
        if damaged is not None and provider_name is None:
            if damaged.provider not in (None, "local") or not _runs_locally(root, creds, name):
                return _remove_damaged(damaged)
            provider_name = "local"  # found below by name, stopped, then its damaged state removed
        if meta is None and damaged is None and provider_name is None and _runs_locally(root, creds, name):
            provider_name = "local"  # its folder went (rm -rf) while it ran: list shows it, and so delete stops it
        if meta is None and provider_name is None:
            raise not_here(name, root, "to delete one made elsewhere add --provider")
    if provider_name is None:
        if meta is None:
            raise UsageError("--id and --ip need --provider")
        provider_name = str(meta["provider"])
    if meta is not None and meta.get("provider") == provider_name:
        creds = with_recorded_api_url(creds, meta)
    provider = _provider_for(provider_name, root, creds)
    if replicas.is_group(meta) and meta is not None and meta.get("provider") == provider_name:
        return _delete_group(root, provider, meta, timeout, progress)
    if meta is not None and meta.get("provider") == provider_name and meta.get("id"):
        host_id = running_id(provider, meta) or str(meta["id"])
    elif host_id is None:
        try:
            found = _find(provider, root, name=name, ip=ip)
            host_id, name = found.id, name or found.name or None  # --ip: said by its name, not its id twice
        except NotFound:
            group = replicas.cloud_group(provider, name) if name is not None and meta is None else None
            if group is not None:  # made with --replicas on another machine: its droplets carry the group's tag
                done = _delete_group(root, provider, group, timeout, progress)
                return done if damaged is None else _said(done, damaged.state.remove())
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
            kept = ServerState(root, name).remove()  # create never got as far as an id, or the state is damaged
            return _said(f"{provider_name} has no exit server named {name}; {removed}removed its local state "
                         f"({root / name})", kept)
    if meta is None:
        meta = next((m for m in states if m.get("provider") == provider_name and str(m.get("id")) == host_id), None)
    known = next((h for h in provider.list() if h.id == host_id), None) if by_id and meta is None else None
    if by_id and meta is None and known is None:
        # a mistyped --id must never delete a VM inletsctl did not make (a database, a web server)
        where, look = _made_where(provider, root)
        raise NotFound(f"{provider_name}: no exit server with id {host_id} among those inletsctl made {where}; "
                       f"inletsctl deletes nothing else: {look}")
    label = (meta or {}).get("name") or name or (known.name if known is not None else None) or host_id
    try:
        started = time.monotonic()
        if meta is not None and not by_id:
            check_serves(provider, host_id, meta["name"])
        progress(f"deleting {label} ({provider_name} {host_id})")  # before: a local server drains for up to 10 s
        provider.delete(host_id, timeout)
        wait_until_gone(provider, host_id, timeout, progress, interval=1.0, started=started, label=str(label))
        done = f"deleted {label} ({provider_name} {host_id})"
    except NotFound:
        if meta is None:
            raise NotFound(f"{provider_name}: no exit server with id {host_id}") from None
        check_gone(provider, host_id, str(label), "its local state is kept; run the same delete again in a minute")
        gone = f"{label} was already gone on {provider_name}"
        done = f"{gone}; {_leftovers(root, provider, str(meta['name']), gone)}removed its local state"
    if meta is not None:
        done = _said(done, ServerState(root, str(meta["name"])).remove())
    elif damaged is not None:
        done = _said(f"{done}; removed its damaged local state ({damaged.state.dir})", damaged.state.remove())
    return done


def _said(done: str, kept: str) -> str:
    """What delete did, and ``ServerState.remove``'s word on a folder it kept (it held files not inletsctl's)."""
    return f"{done}; {kept}" if kept else done


def _check_ip(ip: str) -> None:
    """--ip before any cloud is asked: a typo read "no exit server with IP notanip", as if one had been looked for."""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"--ip {ip!r} is not an IP address: give the exit server's public IPv4 or IPv6 "
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
    kept = damaged.state.remove()
    look = (f"`inletsctl list --provider {where}`, then `inletsctl delete {name} --provider {where}`" if where else
            f"`inletsctl list --provider P` for each provider you use, then `inletsctl delete {name} --provider P`")
    unchecked = damaged.unchecked or f"inletsctl could not check whether its exit server or VM still runs: look with {look}"
    done = _said(f"removed the damaged local state of {name} ({damaged.state.dir}: {damaged.why})", kept)
    return f"{done}; {unchecked}"


def _delete_group(root: Path, provider: Provisioner, meta: dict[str, Any], timeout: float, progress: Progress) -> str:
    """The balancer and every replica of a ``create --replicas`` exit server, then its local state."""
    name = str(meta["name"])
    try:
        done = f"deleted {name} ({provider.name}: " + ", ".join(replicas.delete_group(provider, meta, timeout, progress)) + ")"
    except NotFound:
        done = f"{name} was already gone on {provider.name}; removed its local state"
    return _said(done, ServerState(root, name).remove())


def _made_where(provider: Provisioner, root: Path) -> tuple[str, str]:
    """Where ``provider`` looked for the exit servers inletsctl made, and how to see them, for a not-found line: a
    cloud by its tag; local and ssh (no cloud to tag in) only by the state folders under ``root``, so a name made
    with another --state-dir is not found, which "tagged inlets" never said."""
    look = f"see them with inletsctl list --provider {provider.name}"
    if provider.user_data_limit:
        return f"(tagged {TAG})", look
    return (f"in {root} (--provider {provider.name} knows only those whose local state is there)",
            f"{look}, or add the --state-dir it was made with")


def _find(provider: Provisioner, root: Path, name: str | None = None, ip: str | None = None) -> Host:
    """The one exit server of that name or IP: several (every local one has 127.0.0.1) are refused, never guessed."""
    found = [h for h in provider.list() if (name is not None and h.name == name) or (ip is not None and h.ip == ip)]
    what = f"named {name!r}" if name is not None else f"with IP {ip}"
    if len(found) > 1:
        choices = ", ".join(f"{h.name} (--id {h.id})" if h.name else f"--id {h.id}" for h in found)
        which = "--id" if name is not None else "its NAME or --id"  # several of one name: the name cannot tell them
        raise ProvisionError(f"{provider.name}: {len(found)} exit servers {what}: {choices}; say which with {which}")
    if not found:
        where, look = _made_where(provider, root)
        raise NotFound(f"{provider.name}: no exit server {what} {where}: {look}")
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
            provider = connect(pname, root, creds)
            hosts = provider.list()
        except ProvisionError as exc:
            rows += [_row(m, None, "local state (cloud not checked)") | {"status": "unknown"} for m in local_rows]
            if provider_name:  # the one cloud asked for: a failure, with the rows known (``list --json`` prints them)
                raise as_failed(exc, {"servers": rows}) from None
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
            host_id = str(running_id(provider, meta, hosts) or meta.get("id") or named(by_id.values(), meta.get("name")))
            host = None if serves_another(by_id.get(host_id), meta["name"]) else by_id.pop(host_id, None)
            rows.append(_row(meta, host, "both" if host else "local state only"))
        cloud_rows, alone = replicas.cloud_groups(list(by_id.values()), balancers)
        if pname == "local":  # a folder of its name that took no row of it is another exit server's: not its times
            alone = [replace(h, created_at=None, expires_at=None) if (root / str(h.name)).exists() else h
                     for h in alone]
        rows += cloud_rows + [_row(None, host, f"{pname} only") for host in alone]
        if pname == "local":  # a local server's folder gone while it ran (rm -rf): say so, as status does
            shown = {d.state.name for d in damaged}  # a damaged folder has a note of its own
            notes += [state_gone(host, root) for host in alone if host.name and host.name not in shown]
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
        "id": str((host.id if host else None) or meta.get("id") or ""),
        "ip": (host.ip if host and host.ip else None) or meta.get("ip"),
        "mode": meta.get("mode") or (host.mode if host else None),
        "status": host.status if host else "absent",
        "created": meta.get("created_at") or (host.created_at if host else None),
        "expires": meta.get("expires_at") or (host.expires_at if host else None),
        "where": where,
    } | ({"detail": host.detail} if host and host.status == "unreachable" and host.detail else {})


def expired(row: dict[str, Any], now: datetime.datetime | None = None) -> bool:
    return ended(row.get("expires"), now)


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
