"""The one interface every provider implements, in the style of inletsctl's Provisioner.

A provider only talks to its cloud (or process table): create a host from a plan,
report its status, delete it, list the ones inletsctl made. Secrets, templates,
waiting and output live outside the providers, shared by all of them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..credentials import token_and_source
from ..firewall import FIREWALL_NAME_MAX
from ..names import NameRule
from ..spec import TunnelSpec

TAG = "inlets"
ACTIVE = "active"
FAILED = "failed"  # will never become active: stop waiting
GONE_TIMEOUT = 300.0  # seconds ``delete`` waits for what it deleted to be gone, unless told otherwise
API_TIMEOUT = 30.0  # seconds one cloud API call may take, unless --timeout is shorter


@dataclass(frozen=True)
class Credentials:
    """What the command line gave for reaching a provider (each provider reads what it needs)."""

    token_file: Path | None = None
    token: str | None = None
    api_url: str | None = None
    secret_file: Path | None = None  # ec2: the secret access key (the key id is the access token)
    secret: str | None = None
    region: str | None = None  # ec2: the region list/delete/status look in
    ssh: Any = None  # ssh: ssh.SshOptions from the create flags
    api_timeout: float = API_TIMEOUT  # seconds one API call may take (a shorter --timeout bounds it too)


def with_recorded_api_url(creds: Credentials, meta: dict[str, Any]) -> Credentials:
    """``creds`` for the exit server ``meta`` describes: without --api-url, the API create used (kept in its state),
    not the cloud's own endpoint nor what $..._API_URL says now, where its delete sent the token and found nothing."""
    recorded = meta.get("api_url")
    return replace(creds, api_url=recorded) if creds.api_url is None and isinstance(recorded, str) else creds


@dataclass(frozen=True)
class ProviderInfo:
    """What a provider declares once, as ``PROVIDER`` in its module: the provider, the
    registry and ``inletsctl --help`` all read it from there."""

    name: str  # what --provider takes
    title: str  # the cloud's own name, in error messages
    user_data_limit: int  # bytes the rendered user-data must fit in (0: no user-data is sent)
    note: str = ""  # beside the name in --provider's help
    credentials: str = ""  # where the credentials come from, for --access-token-file's help
    token_env: tuple[str, ...] = ()  # tried after --access-token-file and --access-token
    api_url_env: tuple[str, ...] = ()  # tried after --api-url
    region: str = ""  # default --region
    region_env: tuple[str, ...] = ()  # tried before the default region
    region_config: str = ""  # where the region is read after region_env, before the default (ec2: the profile's)
    region_note: str = ""  # what a region is here: "a zone", "a metro"
    size: str = ""  # default --plan
    image: str = ""  # the Ubuntu 24.04 LTS image the VM boots
    ssh_key: str = ""  # what --ssh-key names here, for its help
    login_user: str = "root"  # who logs in with --ssh-key on the image
    #: what the exit server runs on, as ``status`` labels the provider's view of it (its ``--json`` key stays "vm")
    runs_on: str = "vm"
    #: what stands in front of the exit server, for the create summary; may name
    #: {firewall}, {control_port} and {data_ports} (the ports the tunnel really needs)
    firewall_note: str | None = None
    #: what stands in front of ``--replicas`` exit servers ("a DigitalOcean load balancer");
    #: empty: this provider refuses --replicas
    balancer: str = ""
    #: what this cloud takes as a VM's name beyond names.NAME_RE (create checks it before any API call)
    names: NameRule = NameRule()
    #: the longest name this cloud takes for the firewall / security group (Azure: resource group) made for a VM;
    #: firewall.firewall_name shortens ``inlets-NAME`` to it, with a hash, when longer
    firewall_name_max: int = FIREWALL_NAME_MAX
    #: what the API's 401 calls the token ("access token"); ``token_from`` adds where it came from
    token_noun: str = "credentials"

    def token_from(self, creds: Credentials) -> tuple[str, str]:
        """--access-token-file, --access-token, then this provider's variables (else a one-line error), and the words
        for it when the API rejects it: ``token_noun`` and where it came from, never the token."""
        token, source = token_and_source(self.title, creds.token_file, creds.token, self.token_env)
        return token, f"{self.token_noun} ({source})"

    def api_url(self, creds: Credentials) -> str | None:
        """--api-url, then this provider's variables; None: the cloud's own endpoint."""
        return creds.api_url or next((os.environ[e] for e in self.api_url_env if os.environ.get(e)), None)


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
    group: str | None = None  # the exit server this host is a replica of (``create --replicas``)


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
    group: str | None = None  # the exit server it is a replica of (``create --replicas``)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Balancer:
    """A cloud load balancer in front of the data ports of an exit server's replicas."""

    id: str
    name: str
    status: str  # ACTIVE once it forwards, FAILED when it never will
    ip: str | None = None
    host_ids: tuple[str, ...] = ()
    detail: str = ""  # what was seen, for error messages


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

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Delete; raises errors.NotFound when it does not exist. A provider that must remove
        more once the host is gone (its firewall) waits for that, within ``timeout``, with
        wait.wait_until_gone."""
        ...

    def list(self) -> list[Host]:
        """Every exit server this provider made (found by tag)."""
        ...


@runtime_checkable
class LeavesBehind(Protocol):
    """What a provider also implements when its host ids are bare numbers: once the host is gone (deleted in the
    console, a delete or create cut short), nothing in the cloud leads from the id to the firewall made for it, so
    ``delete`` passes the name that local state keeps. (The ssh provider too: a create cut short before its install
    leaves the files it uploaded.)"""

    def delete_leftovers(self, name: str) -> list[str]:
        """Delete what ``create`` made for the host ``name``, which is gone, and nothing else (a firewall of the
        user's stays, even one named alike); what was deleted, in words ("firewall inlets-NAME"), and as ``Kept``
        what looks alike but was left. What create recorded for it is read under the state root ``build`` was given."""
        ...


def delete_leftovers(provider: Provisioner, name: str) -> list[str]:
    """What ``create`` made for the gone host ``name``, deleted where the provider needs to be told its name."""
    return provider.delete_leftovers(name) if isinstance(provider, LeavesBehind) else []


class Kept(str):
    """An item of ``delete_leftovers``' answer that was found but left alone, as nothing shows inletsctl made it (a
    Vultr group described inlets-NAME with no marker on record): the words the user reads, naming it by its id."""


def leftover_words(items: list[str]) -> str:
    """``delete_leftovers``' answer in words: "deleted its firewall inlets-NAME; left firewall group ID (...)"."""
    deleted = [item for item in items if not isinstance(item, Kept)]
    return "; ".join(([f"deleted its {', '.join(deleted)}"] if deleted else []) + [i for i in items if isinstance(i, Kept)])


class Balancing(Protocol):
    """What a provider whose PROVIDER declares ``balancer`` also implements, for ``create --replicas``."""

    name: str
    poll_interval: float

    def create_balancer(self, name: str, spec: TunnelSpec, host_ids: list[str], region: str | None) -> Balancer:
        """A balancer forwarding ``spec``'s data ports (TCP, PROXY protocol v1) to the hosts, health-checked there."""
        ...

    def balancer_status(self, balancer_id: str) -> Balancer:
        """Current state; raises errors.NotFound when it does not exist."""
        ...

    def delete_balancer(self, balancer_id: str) -> None:
        """Delete; raises errors.NotFound when it does not exist."""
        ...

    def balancers(self) -> list[Balancer]:
        """Every balancer in front of exit servers this provider made."""
        ...


def expiry_tag(when: datetime.datetime) -> str:
    return f"inlets-expires:{int(when.timestamp())}"


def parse_expiry_tag(tags: list[str]) -> str | None:
    found = (expiry_time(t.split(":", 1)[1]) for t in tags if t.startswith("inlets-expires:"))
    return next((when for when in found if when is not None), None)


def expiry_time(value: str) -> str | None:
    """An ``inlets-expires`` tag's Unix time as list shows it; None (no expiry) for one that is no valid time: a tag
    such as ``inlets-expires:99999999999999999999`` (set by hand on one VM) was an OverflowError that stopped list,
    create and ``list --prune`` for the whole account, and ``--prune`` must never delete a VM for a bad tag."""
    if not (value.isascii() and value.isdigit()):
        return None
    try:
        when = datetime.datetime.fromtimestamp(int(value), datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):  # past year 9999, or beyond the platform's time_t
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_list(plan: Plan) -> list[str]:
    """Tags for clouds with free-form string tags: ``inlets``, ``inlets-mode:tcp``, expiry, replica group."""
    tags = [TAG, f"inlets-mode:{plan.spec.mode}"]
    if plan.expires_at is not None:
        tags.append(expiry_tag(plan.expires_at))
    if plan.group is not None:
        tags.append(group_tag(plan.group))
    return tags


def group_tag(group: str) -> str:
    return f"inlets-group:{group}"


def group_from_tags(tags: list[str]) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith("inlets-group:")), None)


def label_map(plan: Plan) -> dict[str, str]:
    """Labels for clouds with key=value labels (lowercase keys, no colons)."""
    labels = {TAG: "true", "inlets-mode": plan.spec.mode}
    if plan.expires_at is not None:
        labels["inlets-expires"] = str(int(plan.expires_at.timestamp()))
    return labels


def labels_expiry(labels: dict[str, str]) -> str | None:
    return expiry_time(str(labels.get("inlets-expires", "")))


def mode_from_tags(tags: list[str]) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith("inlets-mode:")), None)
