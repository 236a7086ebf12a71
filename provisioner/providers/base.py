"""The one interface every provider implements, in the style of inletsctl's Provisioner.

A provider only talks to its cloud (or process table): create a host from a plan,
report its status, delete it, list the ones inletsctl made. Secrets, templates,
waiting and output live outside the providers, shared by all of them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..spec import TunnelSpec

TAG = "inlets"
ACTIVE = "active"
FAILED = "failed"  # will never become active: stop waiting


@dataclass(frozen=True)
class Plan:
    """Everything a provider needs to create one exit server."""

    name: str
    spec: TunnelSpec
    user_data: str  # rendered cloud-init (cloud providers)
    state_dir: Path  # the server's local folder (token, certs, logs)
    region: str | None = None
    size: str | None = None
    ssh_key: str | None = None
    expires_at: datetime.datetime | None = None


@dataclass
class Host:
    """What a provider knows about one exit server."""

    id: str
    name: str
    provider: str
    status: str  # provider words; ACTIVE when booted, FAILED when it never will be
    ip: str | None = None
    data_addr: str | None = None  # where data ports listen, when not ``ip``
    control_port: int | None = None
    mode: str | None = None
    created_at: str | None = None
    expires_at: str | None = None
    detail: str = ""  # what was seen, for error messages
    extra: dict[str, str] = field(default_factory=dict)


class Provisioner(Protocol):
    name: str
    #: the rendered user-data must fit in this many bytes (0: no user-data is sent)
    user_data_limit: int
    #: seconds between status polls while waiting (cloud APIs have rate limits)
    poll_interval: float
    #: the server reads its certificate and key from the local state folder (no VM)
    keeps_server_key: bool

    def create(self, plan: Plan) -> Host: ...

    def status(self, host_id: str) -> Host:
        """Current state; raises errors.NotFound when it does not exist."""
        ...

    def delete(self, host_id: str) -> None:
        """Start deleting; raises errors.NotFound when it does not exist."""
        ...

    def list(self) -> list[Host]:
        """Every exit server this provider made (found by tag)."""
        ...


def expiry_tag(when: datetime.datetime) -> str:
    return f"inlets-expires:{int(when.timestamp())}"


def parse_expiry_tag(tags: list[str]) -> str | None:
    for tag in tags:
        if tag.startswith("inlets-expires:") and tag.split(":", 1)[1].isdigit():
            when = datetime.datetime.fromtimestamp(int(tag.split(":", 1)[1]), datetime.timezone.utc)
            return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


def tag_list(plan: Plan) -> list[str]:
    """Tags for clouds with free-form string tags: ``inlets``, ``inlets-mode:tcp``, expiry."""
    tags = [TAG, f"inlets-mode:{plan.spec.mode}"]
    if plan.expires_at is not None:
        tags.append(expiry_tag(plan.expires_at))
    return tags


def label_map(plan: Plan) -> dict[str, str]:
    """Labels for clouds with key=value labels (lowercase keys, no colons)."""
    labels = {TAG: "true", "inlets-mode": plan.spec.mode}
    if plan.expires_at is not None:
        labels["inlets-expires"] = str(int(plan.expires_at.timestamp()))
    return labels


def labels_expiry(labels: dict[str, str]) -> str | None:
    value = labels.get("inlets-expires", "")
    if not value.isdigit():
        return None
    when = datetime.datetime.fromtimestamp(int(value), datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def mode_from_tags(tags: list[str]) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith("inlets-mode:")), None)
