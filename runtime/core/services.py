"""Service names on the wire: what a client advertises and what a stream's OPEN targets.

``tcp:PORT`` and ``udp:PORT`` (TCP tunnels), ``http:HOST`` and ``http:*`` (HTTP tunnels),
``forward:HOST:PORT`` (local forwarding). Both sides build and check them here, so the
client needs no server module to speak them.
"""

from __future__ import annotations

import re

from .handshake import CLOSE_SERVICE_REFUSED, HandshakeError
from .hosts import is_ip
from .ports import parse_port

CATCH_ALL = "http:*"
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9_]([a-z0-9_\-]{0,62})(\.[a-z0-9_]([a-z0-9_\-]{0,62}))*")  # fullmatch
FORWARD_PREFIX = "forward:"
#: The largest payload of a UDP datagram over IPv4 (one DATA frame each); anything larger is dropped.
MAX_DATAGRAM = 65507


def tcp_service(port: int) -> str:
    return f"tcp:{port}"


def parse_port_service(service: str) -> tuple[str, int]:
    """(``tcp`` or ``udp``, port) of a ``tcp:N``/``udp:N`` service name; ``HandshakeError`` otherwise."""
    kind, _, number = service.partition(":")
    port = parse_port(number)
    if kind not in ("tcp", "udp") or port is None:
        raise HandshakeError(CLOSE_SERVICE_REFUSED, f"not a TCP or UDP service: {service!r}")
    return kind, port


def http_service(host: str) -> str:
    """``http:example.com``; ``http:*`` for the catch-all (``host`` ``*`` or empty)."""
    return CATCH_ALL if host in ("", "*") else f"http:{host.lower().rstrip('.')}"


def shown_service(service: str) -> str:
    """A service as logs, /status and the status table show it: ``http:[::1]``, not ``http:::1`` (host ``::1``, or
    ``:`` port 1?). Only shown: the wire keeps ``http:::1``, the name a stream's OPEN target is matched against."""
    kind, _, host = service.partition(":")
    return f"{kind}:[{host}]" if kind == "http" and ":" in host and is_ip(host) else service


def parse_http_service(service: str) -> str:
    """The host name of an ``http:NAME`` service (``*`` for the catch-all); ``HandshakeError`` otherwise."""
    kind, _, host = service.partition(":")
    if kind != "http" or not (host == "*" or _HOSTNAME.fullmatch(host) or is_ip(host)):
        raise HandshakeError(CLOSE_SERVICE_REFUSED, f"not an HTTP service: {service!r} (expected http:HOSTNAME)")
    return host


def format_target(host: str, port: int) -> str:
    """``forward:HOST:PORT`` (an IPv6 HOST in brackets): the stream target of a local forward."""
    return f"{FORWARD_PREFIX}[{host}]:{port}" if ":" in host else f"{FORWARD_PREFIX}{host}:{port}"


def parse_target(target: str) -> tuple[str, int]:
    """``forward:HOST:PORT`` -> (HOST, PORT); ValueError for anything else."""
    if not target.startswith(FORWARD_PREFIX):
        raise ValueError(f"not a forwarding target: {target!r}")
    rest = target[len(FORWARD_PREFIX) :]
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        port = tail[1:] if sep and tail.startswith(":") else ""
    else:
        host, _, port = rest.rpartition(":")
    number = parse_port(port)
    if not host or number is None:
        raise ValueError(f"malformed forwarding target: {target!r}")
    return host, number
