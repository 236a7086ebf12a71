"""``NO_PROXY`` read as curl and Go read it, for the client's choice of proxy (``outbound_proxy.choose``)."""

from __future__ import annotations

import ipaddress
import os


def no_proxy_covers(host: str, port: int) -> bool:
    """Whether ``NO_PROXY`` names ``host``, read as curl (7.86+) and Go read it: ``*``; a name, covering the names
    under it (a leading dot or not); an IP address or a CIDR range (``10.0.0.0/8``, ``[::1]``, ``fd00::/8``); each
    with ``:PORT`` optional. urllib reads names only, so a cluster's ``NO_PROXY=10.0.0.0/8`` sent a client dialling
    ``wss://10.1.2.3`` through the corporate proxy. No name is resolved, as in curl, and an address is matched by
    addresses and ranges only: a name's suffix rule took ``.0.0.1`` (or ``.1``) to cover 127.0.0.1, where curl
    (7.88, measured) goes through the proxy."""
    setting = no_proxy_setting()
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (part.strip().lower() for part in setting.split(",")):
        if entry == "*":
            return True
        name, entry_port = _entry_parts(entry)
        if not name or (entry_port is not None and entry_port != port):
            continue
        try:
            network = ipaddress.ip_network(name, strict=False)
        except ValueError:
            name = name.lstrip(".").rstrip(".")
            if address is None and name and (host == name or host.endswith("." + name)):
                return True
            continue
        if address is not None and address in network:
            return True
    return False


def no_proxy_setting() -> str:
    """``no_proxy`` (curl's first choice), else ``NO_PROXY``: "" when neither is set."""
    return os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""


def _entry_parts(entry: str) -> tuple[str, int | None]:
    """A NO_PROXY entry as (name or address or range, port or None): ``[v6]:PORT``, ``HOST:PORT``, bare IPv6."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        if not rest:
            return name, None
        port = rest[1:] if rest.startswith(":") else "?"
    elif entry.count(":") == 1:
        name, _, port = entry.partition(":")
    else:
        return entry, None
    return (name, int(port)) if port.isascii() and port.isdigit() else ("", None)  # a port not digits: no match
