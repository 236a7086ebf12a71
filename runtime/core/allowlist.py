"""Address allow-lists: which sources may use the data plane, which targets a client may reach."""

from __future__ import annotations

import ipaddress
import logging
import sys
from dataclasses import dataclass

from . import logs
from .hosts import check_host, unmapped_address
from .ports import parse_port

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str, option: str = "--allow-ips") -> list[Network]:
    """``10.0.0.0/8,2001:db8::/32,192.0.2.7`` -> networks; ValueError names the bad entry. An IPv4-mapped rule
    (``::ffff:10.0.0.0/104``) is the IPv4 network it names (10.0.0.0/8): sources are matched unmapped, so as an IPv6
    network it matched none and refused every user."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        address, percent, zone = item.partition("%")
        if percent:  # fe80::1%eth0 was taken with its zone ignored: fe80::1 from every interface got in
            bare = address + zone[zone.find("/"):] if "/" in zone else address
            raise ValueError(f"{option}: {item!r}: a zone (%...) cannot be matched: give {bare}, which matches on "
                             f"every interface")
        try:
            network: Network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{option}: {item!r} is not an IP address or CIDR network") from None
        written = unmapped_address(ipaddress.ip_address(item.partition("/")[0]))
        if written.version != network.version:  # IPv4-mapped
            if network.prefixlen < 96:  # reaches past ::ffff:0:0/96: no IPv4 network is that
                raise ValueError(f"{option}: {item!r}: an IPv4-mapped network needs a prefix of /96 or longer "
                                 f"(::ffff:10.0.0.0/104 is 10.0.0.0/8); or write the IPv4 network")
            network = ipaddress.ip_network(f"{written}/{network.prefixlen - 96}", strict=False)
        if written != network.network_address:
            _widened(option, item, network)
        networks.append(network)
    if not networks:
        raise ValueError(f"{option} needs at least one address or network")
    return networks


def _widened(option: str, item: str, network: Network) -> None:
    """Say, once at start, that ``10.0.0.1/8`` is taken as 10.0.0.0/8, as nginx warns ("low address bits of
    10.0.0.1/8 are meaningless"): a warning, not a refusal, which would stop servers whose flags always started."""
    if logs.configured() is None:  # the flags are checked before the log is set up
        print(f"inlets: warning: {option} {item} is taken as {network} (the low address bits are ignored): "
              f"write {network}", file=sys.stderr)
    else:
        logging.getLogger("inlets").warning("event=network_widened option=%s given=%s using=%s", option,
                                            logs.logfmt(item), network)


class SourceAllowList:
    """Sources permitted on the data plane. IPv4-mapped IPv6 sources match IPv4 rules."""

    def __init__(self, networks: list[Network]) -> None:
        self.networks = networks

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        address = unmapped_address(address)
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class TargetRule:
    host: str  # a name, an address, or a CIDR network
    port: int | None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        address = _address(host)
        if "/" in self.host:
            if address is None:
                return False  # a name never matches a network rule: no DNS games
            return address in ipaddress.ip_network(self.host, strict=False)
        rule = _address(self.host)
        if rule is not None or address is not None:  # the same address spelled otherwise (::ffff:127.0.0.1, 0::1)
            return rule == address
        return host.lower() == self.host.lower()


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` is, an IPv4-mapped one as the IPv4 address it is dialled as (an IPv6 rule such as
    ::/0 let ::ffff:127.0.0.1 by); None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return unmapped_address(address)


def parse_target_rules(text: str, option: str = "--client-forwarding-allow") -> list[TargetRule]:
    """``127.0.0.1:5432,10.0.0.0/8:*,db.internal:5432,[::1]:6379`` -> rules."""
    rules = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            port = rest[1:] if sep and rest.startswith(":") else ""
        else:
            host, _, port = item.rpartition(":")
        if not host or not port:
            raise ValueError(f"{option}: expected HOST:PORT or CIDR:* , got {item!r}")
        if "/" in host:  # a rule that could never match (127.0.0.1/33) was taken, and silently matched nothing
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ValueError(f"{option}: {host!r} in {item!r} is not a CIDR network (e.g. 10.0.0.0/8)") from None
        elif host == "*":  # taken as a name no target has: the server refused every client, saying nothing at start
            raise ValueError(f"{option}: {item!r}: * is for the port only; for any address give 0.0.0.0/0:{port} "
                             f"(and ::/0:{port} for IPv6)")
        else:  # "db internal", "127.0.0.1:5432" (of 127.0.0.1:5432:5432): names no target could ever have
            check_host(host, f"{option} {item!r}")
        number = parse_port(port)
        if port == "*":
            rules.append(TargetRule(host, None))
        elif number is not None:
            rules.append(TargetRule(host, number))
        else:
            raise ValueError(f"{option}: bad port in {item!r}")
    if not rules:
        raise ValueError(f"{option} needs at least one HOST:PORT")
    return rules
