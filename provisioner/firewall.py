"""The inbound ports an exit server needs, computed once for every cloud's firewall.

TCP mode: the control port and exactly the data ports asked for (ports under 1024
included, which inletsctl's EC2 rule leaves out). HTTP mode: the control port, the
HTTP data port, and 443 (kept for HTTPS / Let's Encrypt on the data plane; inletsctl's
Azure rule forgets the control port). Nothing else: no SSH (22 is the VM's sshd, never a tunnel port).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .spec import HTTPS_PORT, TunnelSpec

ANY_IPV4 = "0.0.0.0/0"
ANY_IPV6 = "::/0"


@dataclass(frozen=True)
class Rule:
    """One inbound TCP port open to everyone."""

    port: int
    purpose: str  # "control" or "data"
    protocol: str = "tcp"

def inbound_ports(spec: TunnelSpec) -> tuple[int, ...]:
    """Sorted, unique TCP ports to open for ``spec``."""
    return tuple(rule.port for rule in inbound_rules(spec))


def inbound_rules(spec: TunnelSpec) -> list[Rule]:
    """One rule per port, sorted by port; the control port is marked as such."""
    data = set(spec.ports) if spec.mode == "tcp" else {spec.http_port, HTTPS_PORT}
    data.discard(spec.control_port)
    rules = [Rule(spec.control_port, "control")] + [Rule(port, "data") for port in data]
    return sorted(rules, key=lambda rule: rule.port)


#: the longest firewall name most clouds take (GCE: 1-63 characters, [a-z]([-a-z0-9]*[a-z0-9])?)
FIREWALL_NAME_MAX = 63
_DIGEST = 8  # hex digits of the server name's SHA-256 in a shortened firewall name


def firewall_name(server_name: str, limit: int = FIREWALL_NAME_MAX) -> str:
    """The name of the firewall / security group made for one exit server: ``inlets-NAME``, unchanged while it fits
    the cloud's ``limit``. Longer, it is shortened and ends in 8 hex digits of NAME's SHA-256, so that two names
    sharing their first characters (replicas NAME-1, NAME-2) never get the same firewall, and never end in a hyphen
    (cut short, ``inlets-NAME`` did both: Hetzner refuses a second firewall of one name, GCE one ending in -)."""
    full = f"inlets-{server_name}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(server_name.encode()).hexdigest()[:_DIGEST]
    return f"{full[:limit - _DIGEST - 1].rstrip('-')}-{digest}"


def made_for(firewall: str | None, server_name: str, limit: int = FIREWALL_NAME_MAX) -> bool:
    """Whether a firewall attached to a server is the one ``create`` made for it (deleted with it): exactly the name
    ``firewall_name`` gives it on that cloud. A name that merely starts with ``inlets-`` may be the user's own, or the
    one of another exit server, shared: it stays."""
    return bool(server_name) and firewall == firewall_name(server_name, limit)
