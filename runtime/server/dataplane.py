"""Who may use the data plane, and who they really are.

Shared by the TCP and HTTP servers: ``--allow-ips`` (sources outside it are refused),
``--lb-proxy-protocol`` (a load balancer in front tells us the real source in a
PROXY header) and ``--proxy-protocol`` (we tell the upstream, through the client).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from ..core.allowlist import SourceAllowList
from ..core.hosts import unmapped
from .proxy_protocol import Address, ProxyProtocolError, parse

#: A balancer sends its header at once; a connection that does not is dropped.
HEADER_TIMEOUT = 5.0


def bind_failure(data_addr: str | None, port: int, exc: OSError, control_ports: frozenset[int] = frozenset()) -> str:
    """Why a data port cannot be opened and what to do, in the words a client shows its user.

    Short enough for a websocket close reason (123 bytes): the OS's reason, not asyncio's
    wrapper around it, which repeats the address as a Python tuple.
    """
    host = data_addr or "*"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno is None and isinstance(exc.__cause__, OSError):  # uvloop's UDP bind: "could not bind to local_addr (...)"
        exc = exc.__cause__
    reason = os.strerror(exc.errno) if exc.errno else "the address cannot be used here"
    if exc.errno == errno.EACCES and port < 1024:  # the server's operator has to act: say how
        return f"server cannot listen on {where}: {reason}: ports under 1024 need root or CAP_NET_BIND_SERVICE"
    if exc.errno != errno.EADDRINUSE:
        return f"server cannot listen on {where}: {reason}"
    if port in control_ports:  # "free it" cannot be done: the server holds it
        return f"server cannot listen on {where}: it is this server's control port: use --upstream OTHER_PORT=HOST:{port}"
    if data_addr is None:  # every interface: on one machine, the client's own upstream has this port
        return f"server cannot listen on {where}: port in use; free it, or on one machine use --data-addr 127.0.0.2"
    return f"server cannot listen on {where}: port in use there; free it or give the server another --data-addr"


@dataclass
class DataPlaneOptions:
    allow_ips: SourceAllowList | None = None
    proxy_protocol: str | None = None  # v1|v2: send the real source to the upstream
    lb_proxy_protocol: str | None = None  # v1|v2: expect a header from a load balancer

    def allows(self, source: Address) -> bool:
        return self.allow_ips is None or self.allow_ips.allows(source[0])


class HeaderReader:
    """Collects the first bytes of a connection until the balancer's PROXY header is complete: the TCP and HTTP
    servers' one reader, so both take a balancer's connection by the same rules."""

    def __init__(self, version: str, peer: Address) -> None:
        self.version = version
        self.peer = peer  # the balancer's own address
        self.buffer = bytearray()

    def feed(self, data: bytes) -> tuple[Address, Address | None, bytes] | None:
        """(the source, the destination, the bytes after the header) once complete; None before. Raises
        ProxyProtocolError. A header naming no source (LOCAL/UNKNOWN: the balancer's own connection, a health
        check) gives the balancer's address, for ``--allow-ips`` to judge: the HTTP server let it through unjudged.
        An IPv4-mapped address (``TCP6 ::ffff:10.9.9.9``) is taken as the IPv4 one, as ``address`` takes a direct
        user's: logs and the upstream's header named it ``::ffff:a09:909``."""
        self.buffer += data
        header = parse(bytes(self.buffer), self.version)
        if header is None:
            return None
        source, destination = header.source or self.peer, header.destination
        if destination is not None:
            destination = unmapped(destination[0]), destination[1]
        return (unmapped(source[0]), source[1]), destination, bytes(self.buffer[header.length :])

    def cut_short(self) -> str | None:
        """Why a connection closed (FIN) before its header was whole is refused, at once rather than held until the
        header timeout as a slow balancer's; None when it sent nothing (a balancer's connect check): it just closes."""
        return f"connection closed after {len(self.buffer)} bytes of the PROXY header" if self.buffer else None


def address(info: object) -> Address:
    """(host, port) from a socket's peername/sockname (IPv6 ones have four fields)."""
    if isinstance(info, tuple) and len(info) >= 2:
        return unmapped(str(info[0])), int(info[1])
    return ("0.0.0.0", 0)


__all__ = ["DataPlaneOptions", "HeaderReader", "ProxyProtocolError", "address", "HEADER_TIMEOUT"]
