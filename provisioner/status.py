"""``inletsctl status``: the provider's view of an exit server and its own answer over pinned TLS; and the failures
``status`` and ``list --provider`` share, each given its state word (errors.STATE_*) once."""

from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import Any, Iterable

from inlets_py.runtime.core.hosts import authority
from inlets_py.runtime.core.probe import ProbeError
from inlets_py.runtime.core.tls import TlsConfigError

from . import replicas
from .errors import (
    STATE_API_ERROR, STATE_DAMAGED, STATE_GONE, STATE_INVALID, STATE_NO_CREDENTIALS, STATE_NO_IP, STATE_NOT_FOUND,
    STATE_STOPPED, STATE_UNREACHABLE, NotFound, ProvisionError, StatusFailed,
)
from .names import check_name
from .output import command_word
from .providers import Credentials, make, registry
from .providers.base import FAILED, Host, Provisioner, with_recorded_api_url
from .state import Damaged, ServerState, delete_command, inletsctl_command, not_here
from .wait import status_json


def status(root: Path, creds: Credentials, name: str) -> dict[str, Any]:
    """The provider's view and the exit server's own answer over pinned TLS; ``error`` (and ``state``
    STATE_UNREACHABLE) instead of ``server`` when it did not answer; StatusFailed, with what was learned before, for
    every other failure (``status --json`` prints one object every time)."""
    result: dict[str, Any] = {"name": name}
    try:
        return _status(root, creds, name, result)
    except ProvisionError as exc:
        failed = as_failed(exc, result)
        failed.result |= {"error": str(failed), "state": failed.state}
        raise failed from None


def connect(name: str, root: Path, creds: Credentials) -> Provisioner:
    """The provider, for ``status`` and ``list``: an unknown name and missing credentials raised as StatusFailed."""
    try:
        registry.check(name)
    except ProvisionError as exc:
        raise StatusFailed(str(exc), STATE_INVALID, exit_code=exc.exit_code) from None
    try:
        return make(name, root, creds)
    except ProvisionError as exc:
        raise StatusFailed(str(exc), STATE_NO_CREDENTIALS, exit_code=exc.exit_code) from None


def as_failed(exc: ProvisionError, result: dict[str, Any]) -> StatusFailed:
    """``exc`` as ``status`` and ``list --provider`` fail with, ``result`` (what was learned before) added: a
    StatusFailed keeps the state word given where it was raised; any other error, which only the provider's API
    raises past those, is STATE_API_ERROR."""
    if not isinstance(exc, StatusFailed):
        return StatusFailed(str(exc), STATE_API_ERROR, result, exc.exit_code)
    exc.result = result | exc.result
    return exc


def check_gone(provider: Provisioner, host_id: str, label: str, then: str) -> None:
    """A cloud's "not found" for a VM, checked against its list before it is believed: an endpoint that answers 404
    to everything (an --api-url or its variable with a wrong path) had delete remove the local state (token, CA) and
    status call the VM gone, the droplet still running. A failing list (that same 404) raises its own error."""
    if provider.user_data_limit and any(host.id == host_id for host in provider.list()):
        raise ProvisionError(f"{provider.name} answered that {label} ({host_id}) is not found, yet lists it: {then}")


def _status(root: Path, creds: Credentials, name: str, result: dict[str, Any]) -> dict[str, Any]:
    try:
        state = ServerState(root, check_name(name))
        meta = state.load()
    except NotFound:  # status has no --provider, as delete has: list --provider sees one made elsewhere
        host = next((h for h in connect("local", root, creds).list() if h.name == name), None)
        if host is not None:  # its folder went while it ran (rm -rf): list shows it, and so does status
            raise StatusFailed(state_gone(host, root), STATE_DAMAGED, {"provider": host.provider, "id": host.id,
                                                                       "ip": host.ip, "vm": host.detail}) from None
        see = f"to see one made elsewhere run {shlex.quote(command_word('inletsctl'))} list --provider PROVIDER"
        raise StatusFailed(str(not_here(name, root, see)), STATE_NOT_FOUND) from None
    except Damaged as exc:
        raise StatusFailed(str(exc), STATE_DAMAGED, {"provider": exc.provider} if exc.provider else None) from None
    except ProvisionError as exc:  # a name that cannot be one, a state folder that cannot be read
        raise StatusFailed(state=STATE_INVALID, message=str(exc), exit_code=exc.exit_code) from None
    port = meta.get("control_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:  # status needs it, list and delete not
        damaged = Damaged(state, "has no control port", meta["provider"])
        raise StatusFailed(str(damaged), STATE_DAMAGED, {"provider": meta["provider"]})
    result |= {"name": name, "provider": meta["provider"], "id": meta.get("id"), "ip": meta.get("ip")}
    if meta.get("client_command"):  # create's, for one who lost it (its output cut short by a Ctrl-C, say)
        result["client_command"] = meta["client_command"]
    provider = connect(str(meta["provider"]), root, with_recorded_api_url(creds, meta))  # the API create used
    on = registry.info(provider.name).runs_on  # "vm: plain supervisor: active" named an ssh host a VM
    if replicas.is_group(meta):
        return result | _group_status(provider, meta, state)
    if not meta.get("id"):  # create was cut short before it learned the id; what it made may exist all the same
        host_id = named(provider.list(), name)
        if host_id:  # as delete finds it: by name
            meta = meta | {"id": host_id}
            result["id"] = host_id
    try:
        host = provider.status(str(meta.get("id")))
        check_serves(provider, str(meta.get("id")), name, host)
        result["vm"] = host.detail or host.status
        if not meta.get("ip") and host.ip:
            meta = meta | {"ip": host.ip}
            result["ip"] = host.ip
    except NotFound:  # asking its old address could only fail, or reach whatever has that address now
        if meta.get("id"):
            check_gone(provider, str(meta["id"]), name, "ask again in a minute")
            if ended(meta.get("expires_at")):
                raise StatusFailed(state=STATE_GONE, message=_ended_words(name, meta, root)) from None
            raise StatusFailed(state=STATE_GONE, message=(
                f"exit server {name} is gone from {meta['provider']} (id {meta['id']}; deleted or expired outside "
                f"inletsctl): remove its local state with: {delete_command(name, root)}")) from None
        result["vm"] = "gone"
    else:
        if host.status == FAILED and ended(meta.get("expires_at")):  # not a crash: the end its --ttl set
            raise StatusFailed(state=STATE_STOPPED, message=_ended_words(name, meta, root))
        if host.status == FAILED:  # asking its control port would only add "connection refused"
            raise StatusFailed(state=STATE_STOPPED, message=f"exit server {name} is not running ({result['vm']}): delete it "
                               f"and create it again: {delete_command(name, root)}")
    if not meta.get("ip"):
        raise StatusFailed(state=STATE_NO_IP, message=f"{name} has no IP yet (create did not finish); {on}: {result['vm']}; "
                           f"delete what it made with: {delete_command(name, root)}")
    try:
        result["server"] = _ask(state, str(meta["ip"]), meta["control_port"])
    except ProbeError as exc:  # a result all the same: ``status --json`` prints it, then fails
        where = authority(str(meta["ip"]), meta["control_port"])
        result["error"] = f"exit server {name} at {where} did not answer: {exc}; {on}: {result['vm']}"
        result["state"] = STATE_UNREACHABLE
    return result


def state_gone(host: Host, root: Path, by_id: bool = False) -> str:
    """A local exit server still running whose state folder was removed: what ``status`` says, and ``list`` notes.
    Stopped by its id (``by_id``, or once a folder of its name is back): ``delete NAME`` then stopped the new exit
    server of that name, which that folder holds, and left this one running."""
    folder = root / str(host.name)
    back = folder.exists()
    stop = (inletsctl_command("delete", f"--provider local --id {host.id}", root) if by_id or back
            else delete_command(str(host.name), root))
    again = " (the folder of that name now is another exit server's)" if back else ""
    return (f"exit server {host.name} runs on this machine ({host.detail or f'process {host.id}'}), but its local "
            f"state ({folder}) is gone{again}, and with it the token and CA that reach it: stop it with: {stop}")


def ended(expires: object, now: datetime.datetime | None = None) -> bool:
    """The --ttl expiry ``expires`` (as create writes it: 2030-01-02T03:04:05Z) has passed; False when there is none."""
    try:
        when = datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return when.replace(tzinfo=datetime.timezone.utc) <= (now or datetime.datetime.now(datetime.timezone.utc))


def _ended_words(name: str, meta: dict[str, Any], root: Path) -> str:
    return (f"exit server {name} ended at its --ttl expiry ({meta['expires_at']}), as asked: remove its local state "
            f"with: {delete_command(name, root)}, then create it again for a new one")


def serves_another(host: Host | None, name: object) -> bool:
    """``host``, found by the pid a local exit server's state recorded, is another local exit server's process: the
    pid was reused after this one died (a reboot, a kill -9), and must never be shown, asked or stopped as this one."""
    return host is not None and host.provider == "local" and bool(host.name) and host.name != name


def check_serves(provider: Provisioner, host_id: str, name: object, host: Host | None = None) -> None:
    """NotFound (gone) when the local process ``host_id`` serves another exit server than ``name``."""
    if provider.name != "local":
        return
    try:
        host = host or provider.status(host_id)
    except NotFound:
        return
    if serves_another(host, name):
        raise NotFound(f"local: process {host_id} now serves exit server {host.name}, not {name}")


def running_id(provider: Provisioner, meta: dict[str, Any], hosts: Iterable[Host] | None = None) -> str | None:
    """For a local exit server, the process that runs from ``meta``'s state folder, whatever id ``server.json`` records:
    the folder names it for sure. An edited or restored id hid it: delete said it was already gone and removed the
    token and key from under the server, which went on serving. None for a cloud (its recorded id is the truth)."""
    if provider.name != "local":
        return None
    return named(provider.list() if hosts is None else hosts, meta.get("name"))


def named(hosts: Iterable[Host], name: object) -> str | None:
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
