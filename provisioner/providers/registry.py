"""Provider registry: the names ``--provider`` accepts, how each is built, and the help they give.

Each provider module declares itself once, as ``PROVIDER`` (a base.ProviderInfo: credentials,
environment variables, defaults, user-data limit, firewall note) beside ``build(creds,
state_root)``, which makes the provider from the command's credentials. This module only
finds those modules; ``inletsctl --help`` is written from their declarations.

Every command, ``--help`` included, so imports every provider module: at its top a module imports only what
its declaration needs, and its SDK (libcloud, hcloud, scaleway, paramiko) and the modules that wait, render
or build the wheel where they are used (``tests/provisioner/test_startup_imports.py`` holds it to that).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ..errors import UsageError
from ..firewall import firewall_name, inbound_rules
from ..spec import TunnelSpec
from .base import Credentials, ProviderInfo, Provisioner

#: every provider, in the order the help lists them (each is providers/NAME.py)
PROVIDERS = ("local", "digitalocean", "ec2", "ssh", "gce", "azure", "linode", "vultr", "equinix", "hetzner", "scaleway")

#: clouds inletsctl knows but does not offer, and why in a few words (the README's "Not offered" says more)
NOT_OFFERED = {"ovh": "libcloud's OVH driver cannot pass user-data"}


def check(name: str) -> str:
    """``name`` when ``--provider`` takes it; else one short line that lists the providers it takes."""
    choose = f"choose one of {', '.join(PROVIDERS)}"
    if name in NOT_OFFERED:
        raise UsageError(f"--provider {name} is not offered ({NOT_OFFERED[name]}): {choose}")
    if name not in PROVIDERS:
        raise UsageError(f"unknown provider {name!r}: {choose}")
    return name


def _module(name: str) -> ModuleType:
    return importlib.import_module(f".{check(name)}", __package__)  # never a module named by unchecked input


def info(name: str) -> ProviderInfo:
    """The declaration of provider ``name``."""
    declared: ProviderInfo = _module(name).PROVIDER
    return declared


def make(name: str, state_root: Path, creds: Credentials) -> Provisioner:
    """The provider called ``name``; a one-line error for unknown names and missing credentials."""
    provider: Provisioner = _module(name).build(creds, state_root)
    return provider


def firewall_note(name: str, server_name: str, spec: TunnelSpec) -> str | None:
    """What stands in front of exit server ``server_name`` on provider ``name``, with the ports it lets in."""
    note = info(name).firewall_note
    if note is None:
        return None
    rules = inbound_rules(spec)  # the ports every cloud's firewall opens for this tunnel
    data = ",".join(str(rule.port) for rule in rules if rule.purpose == "data")
    return note.format(firewall=firewall_name(server_name, info(name).firewall_name_max), control_port=spec.control_port, data_ports=data)


# -- help, written from the declarations -------------------------------------------------------


def _all() -> list[ProviderInfo]:
    return [info(name) for name in PROVIDERS]


def providers_help() -> str:
    names = ", ".join(f"{p.name} ({p.note})" if p.note else p.name for p in _all())
    return f"{names}; not offered: {', '.join(f'{n} ({why})' for n, why in NOT_OFFERED.items())}"


def credentials_help() -> str:
    return "credentials: " + "; ".join(f"{p.name} {p.credentials}" for p in _all() if p.credentials)


def api_url_help() -> str:
    return ", ".join(env for p in _all() for env in p.api_url_env)


def region_sources(p: ProviderInfo) -> str:
    """Where a provider's region comes from without --region, in the order its code tries them: the help named
    only ec2's $AWS_REGION, though $AWS_DEFAULT_REGION and the profile's region were read before the default."""
    sources = [f"${env}" for env in p.region_env] + ([p.region_config] if p.region_config else [])
    return ", ".join([*sources, f"else {p.region}"]) if sources else p.region


def region_help() -> str:
    def one(p: ProviderInfo) -> str:
        return f"{p.name}: {region_sources(p)}" + (f" ({p.region_note})" if p.region_note else "")

    return "; ".join(one(p) for p in _all() if p.region)


def size_help() -> str:
    return "; ".join(f"{p.name}: {p.size}" for p in _all() if p.size)


def ssh_key_help() -> str:
    return "; ".join(f"{p.name}: {p.ssh_key}" for p in _all() if p.ssh_key)


#: ``create --replicas``: at most this many exit servers behind one balancer
MAX_REPLICAS = 10


def replicas_help() -> str:
    return "; ".join(f"{p.name}: {p.balancer}" for p in _all() if p.balancer)


def with_balancer() -> list[str]:
    """The providers that can create ``--replicas`` behind a load balancer."""
    return [p.name for p in _all() if p.balancer]
