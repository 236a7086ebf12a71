"""``inletsctl create --replicas N``: N exit servers sharing one token and CA behind the cloud's load balancer.

The FAQ's high availability: a balancer in front of the replicas' data ports, health-checked
there (a replica opens a data port only while a client serves it), and one client connected to
every replica (``inlets tcp client --url A --url B``), so losing a replica loses no service.
The control ports are not balanced: each client dials each replica itself. Locally the group
is one exit server (one state folder, one row in ``list``); in the cloud its droplets carry
the tag ``inlets-group:NAME`` and the balancer is called NAME.
"""

from __future__ import annotations

import time
from typing import Any, cast

from .errors import NotFound, ProvisionError, UsageError
from .names import NAME_RE
from .providers import registry
from .providers.base import ACTIVE, Balancer, Balancing, Host, Provisioner
from .wait import Progress, wait_until_gone

MAX_REPLICAS = registry.MAX_REPLICAS


def check(provider_name: str, replicas: int) -> None:
    """A one-line error unless ``provider_name`` can put ``replicas`` exit servers behind a balancer."""
    if replicas == 1:
        return
    if not 2 <= replicas <= MAX_REPLICAS:
        raise UsageError(f"--replicas {replicas}: give 1 (one exit server) to {MAX_REPLICAS}")
    if not registry.info(provider_name).balancer:
        offered = ", ".join(registry.with_balancer())
        raise UsageError(f"--replicas is not offered on --provider {provider_name}: inletsctl creates a load "
                             f"balancer only on {offered}; create one exit server, or several and a balancer yourself")


def balancing(provider: Provisioner) -> Balancing:
    """The provider as the balancer API its declaration promises."""
    if not hasattr(provider, "create_balancer"):
        raise ProvisionError(f"--provider {provider.name} declares a balancer but cannot create one")
    return cast(Balancing, provider)


def replica_names(name: str, replicas: int) -> list[str]:
    """``NAME-1`` .. ``NAME-N``: each a VM's hostname, so each must follow the name rule (at most 63 long) too,
    or the cloud is sent a hostname it cannot take; refused before anything is made."""
    names = [f"{name}-{i}" for i in range(1, replicas + 1)]
    if not NAME_RE.fullmatch(names[-1]):
        longest = 63 - len(names[-1]) + len(name)
        raise UsageError(f"the name {name!r} is too long for --replicas {replicas}: its VMs are named "
                             f"{name}-1 to {names[-1]}, and a name is at most 63 characters; use at most {longest}")
    return names


def is_group(meta: dict[str, Any] | None) -> bool:
    return bool(meta and meta.get("replicas"))


class BalancerHosts:
    """A provider's balancers seen as hosts, so the one wait-until-gone waits for them too."""

    def __init__(self, provider: Balancing) -> None:
        self.name, self.poll_interval, self._provider = provider.name, provider.poll_interval, provider

    def status(self, balancer_id: str) -> Host:
        found = self._provider.balancer_status(balancer_id)
        return Host(id=found.id, name=found.name, provider=self.name, status=found.status, ip=found.ip,
                    detail=found.detail)


def delete_group(provider: Provisioner, meta: dict[str, Any], timeout: float, progress: Progress,
                 started: float | None = None) -> list[str]:
    """Delete the balancer first (traffic stops at the front), then every replica; wait until all are gone.

    Returns what was deleted; raises NotFound when nothing of the group was left."""
    started = time.monotonic() if started is None else started
    done: list[str] = []
    balancer_id = meta.get("balancer_id")
    balancers = balancing(provider)
    if not balancer_id:  # its create failed or was interrupted: the cloud may have made it anyway
        ids = [str(r.get("id")) for r in meta["replicas"] if r.get("id")]
        found = find_balancer(balancers.balancers(), str(meta["name"]), ids) if ids else None
        balancer_id = found.id if found is not None else None
    if balancer_id:
        try:
            balancers.delete_balancer(str(balancer_id))
            progress(f"deleting load balancer {meta['name']} ({balancer_id})")
            wait_until_gone(BalancerHosts(balancers), str(balancer_id), timeout, progress, interval=1.0, started=started,
                            label=f"load balancer {meta['name']}")
            done.append(f"load balancer {balancer_id}")
        except NotFound:
            pass
    deleted: list[str] = []
    for replica in meta["replicas"]:
        if not replica.get("id"):
            continue
        try:
            provider.delete(str(replica["id"]), timeout)
            progress(f"deleting {replica['name']} ({provider.name} {replica['id']})")
            deleted.append(str(replica["id"]))
        except NotFound:
            continue
    names = {str(r["id"]): str(r["name"]) for r in meta["replicas"] if r.get("id")}
    for host_id in deleted:
        wait_until_gone(provider, host_id, timeout, progress, interval=1.0, started=started, label=names[host_id])
    done += [f"{r['name']} ({r['id']})" for r in meta["replicas"] if str(r.get("id")) in deleted]
    if not done:
        raise NotFound(f"{provider.name}: nothing of {meta['name']} is left")
    return done


def group_row(meta: dict[str, Any], members: list[Host | None], balancer: Balancer | None, where: str) -> dict[str, Any]:
    """One ``list`` row for the whole group: its balancer's address and how many replicas are up."""
    up = sum(1 for m in members if m is not None and m.status == ACTIVE)
    if balancer is None:
        status = f"balancer missing, {up}/{len(members)} replicas active"
    elif balancer.status != ACTIVE:
        status = f"balancer {balancer.status}, {up}/{len(members)} replicas active"
    else:
        status = ACTIVE if up == len(members) else f"{up}/{len(members)} replicas active"
    return {
        "name": meta.get("name"), "provider": meta.get("provider"),
        "id": balancer.id if balancer else meta.get("balancer_id"),
        "ip": (balancer.ip if balancer and balancer.ip else None) or meta.get("ip"),
        "mode": meta.get("mode"), "status": status,
        "created": meta.get("created_at"), "expires": meta.get("expires_at"), "where": where,
        "replicas": [
            {"name": r.get("name"), "id": str(r.get("id")), "ip": (m.ip if m else None) or r.get("ip"),
             "status": m.status if m else "absent"}
            for r, m in zip(meta["replicas"], members, strict=True)
        ],
    }


def cloud_groups(hosts: list[Host], balancers: list[Balancer]) -> tuple[list[dict[str, Any]], list[Host]]:
    """Rows for groups found only in the cloud (by their tag), and the hosts that belong to none."""
    groups: dict[str, list[Host]] = {}
    alone: list[Host] = []
    for host in hosts:
        (groups.setdefault(host.group, []) if host.group else alone).append(host)
    rows = []
    for name, members in groups.items():
        balancer = find_balancer(balancers, name, [m.id for m in members])
        meta = {"name": name, "provider": members[0].provider, "mode": members[0].mode,
                "created_at": members[0].created_at, "expires_at": members[0].expires_at,
                "replicas": [{"name": m.name, "id": m.id, "ip": m.ip} for m in members]}
        rows.append(group_row(meta, list(members), balancer, f"{members[0].provider} only"))
    return rows, alone


def cloud_group(provider: Provisioner, name: str) -> dict[str, Any] | None:
    """The group ``name`` as the cloud's tags show it (its metadata for ``delete_group``), for a machine without
    its local state (a cron job's ``list --prune``, ``delete NAME --provider P``); None when no host has its tag."""
    members = [h for h in provider.list() if h.group == name]
    if not members:
        return None
    return {"name": name, "provider": provider.name,
            "replicas": [{"name": m.name, "id": m.id, "ip": m.ip} for m in members]}


def find_balancer(balancers: list[Balancer], name: str, host_ids: list[str], balancer_id: str | None = None) -> Balancer | None:
    """The group's balancer: by id when known, else by name among those in front of its hosts."""
    for balancer in balancers:
        if balancer_id is not None and balancer.id == balancer_id:
            return balancer
    for balancer in balancers:
        if balancer_id is None and balancer.name == name and set(balancer.host_ids) & set(host_ids):
            return balancer
    return None
