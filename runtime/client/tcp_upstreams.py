"""`inlets tcp client`: the upstreams a client advertises, and dialling them on demand.

The client dials only what it was configured with: a stream for any other target
is reset, whatever the server asks.
"""

from __future__ import annotations

import functools
import logging
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable, cast

from ..core.logs import logfmt
from ..core.bridge import dial
from ..core.hosts import HostError, check_host, is_ip
from ..core.mux import ResetCode
from ..core.ports import parse_port
from ..core.channel import Channel
from ..core.session import Session
from ..core.services import tcp_service
from ..core.eyeballs import connect_socket, is_name
from .udp_upstream import dial_udp

log = logging.getLogger("inlets.tcp")


class UpstreamError(ValueError):
    """A malformed --upstream/--ports value; the message names it."""


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int

    @functools.cached_property
    def opener(self) -> Callable[[str, int], Awaitable[socket.socket]] | None:
        """How a stream's connection is made: the Happy Eyeballs race for a name, the loop's own for an address
        (asked once per upstream, not at every stream)."""
        return connect_socket if is_name(self.host) else None


def _port(text: str, what: str) -> int:
    port = parse_port(text.strip())
    if port is None:
        raise UpstreamError(f"{what} must be a port between 1 and 65535, got {text!r}")
    return port


def _host(host: str, item: str) -> str:
    """An upstream host checked now: a bad one would leave every user connection to it hanging."""
    try:
        return check_host(host, f"--upstream {item!r}")
    except HostError as exc:
        raise UpstreamError(str(exc)) from None


def _split_host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, with IPv6 hosts in brackets: [::1]:22."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":") or not is_ip(host) or ":" not in host:
            raise UpstreamError(f"expected [IPv6]:PORT, got {text!r}")
        return host, _port(rest[1:], "upstream port")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise UpstreamError(f"expected HOST:PORT, got {text!r}")
    if ":" in host:
        raise UpstreamError(f"expected HOST:PORT (an IPv6 host in brackets: [::1]:22), got {text!r}")
    return _host(host, text), _port(port, "upstream port")


def _plain_host(item: str) -> str:
    """The plain ``--upstream HOST`` that --ports/--udp-ports go to: a host, without a port."""
    host = item.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host and not is_ip(host):
        raise UpstreamError(f"--upstream {item!r}: with --ports give the host alone (the ports come from --ports), "
                            "or PUBLIC_PORT=HOST:PORT")
    return _host(host, item)


def parse_upstreams(upstreams: list[str], ports: list[str], udp_ports: list[str] | None = None) -> dict[str, Upstream]:
    """Map service -> upstream from ``--upstream HOST --ports 80,443 [--udp-ports 53]`` and/or the
    remap forms ``--upstream 2222=HOST:22`` (TCP) and ``--upstream udp:5353=HOST:53``."""
    mapping: dict[str, Upstream] = {}
    plain_hosts: list[str] = []
    for item in upstreams:
        if not item.strip():  # ``--upstream "$UNSET"`` beside another was skipped without a word
            raise UpstreamError("--upstream is empty: give HOST (with --ports) or PUBLIC_PORT=HOST:PORT")
        if "=" in item:
            public, _, target = item.partition("=")
            kind, colon, number = public.strip().rpartition(":")
            if colon and kind not in ("tcp", "udp"):
                raise UpstreamError(f"expected [udp:]PUBLIC_PORT=HOST:PORT, got {item!r}")
            host, port = _split_host_port(target.strip())
            service = f"{kind or 'tcp'}:{_port(number, 'public port')}"
            if service in mapping:
                raise UpstreamError(f"public port {service} is given twice in --upstream: one upstream each")
            mapping[service] = Upstream(host, port)
        else:
            plain_hosts.append(_plain_host(item))
    lists = {"tcp": _entries(ports, "--ports"), "udp": _entries(udp_ports or [], "--udp-ports")}
    if len(plain_hosts) > 1:
        raise UpstreamError("give one plain --upstream HOST (use PORT=HOST:PORT for more)")
    if plain_hosts and not (lists["tcp"] or lists["udp"]):
        raise UpstreamError(f"--upstream {plain_hosts[0]} needs --ports (or --udp-ports)")
    if (lists["tcp"] or lists["udp"]) and not plain_hosts:
        raise UpstreamError("--ports and --udp-ports need a plain --upstream HOST")
    for kind, texts in lists.items():
        for text in texts:
            port = _port(text.strip(), f"--{'udp-' if kind == 'udp' else ''}ports entry")
            upstream = Upstream(plain_hosts[0], port)
            if mapping.setdefault(f"{kind}:{port}", upstream) != upstream:
                raise UpstreamError(f"public port {kind}:{port} is given by --{'udp-' if kind == 'udp' else ''}ports "
                                    "and by a PUBLIC_PORT=HOST:PORT --upstream: one upstream each")
    if not mapping:
        raise UpstreamError("nothing to serve: give --upstream HOST --ports P or --upstream PORT=HOST:PORT")
    return mapping


def _entries(groups: list[str], flag: str) -> list[str]:
    """The entries of ``--ports 80,443 [--ports 8080]``: an empty one (``80,,81``, a trailing comma) or a port
    given twice is refused, as inletsctl's --ports refuses them, rather than skipped without a word."""
    entries: list[str] = []
    seen: set[int] = set()
    for group in groups:
        for text in (part.strip() for part in group.split(",")):
            if not text:
                raise UpstreamError(f"{flag} {group!r} has an empty entry: give ports separated by single commas, "
                                    "e.g. 80,443")
            port = parse_port(text)  # a bad one is said by the caller, with the flag's name
            if port is not None:
                if port in seen:
                    raise UpstreamError(f"port {port} is given twice in {flag}")
                seen.add(port)
            entries.append(text)
    return entries


class TcpUpstreams:
    """Handles streams the server opens: dial the configured upstream (TCP or UDP) and bridge it.

    UDP flows may hold at most ``max_udp_flows`` of the streams the client allows the server (``--max-streams``,
    half by default): a flow is opened by one datagram from a new source address, which anyone can send (and
    forge), and a flood of them took every stream, so every TCP connection was refused for the flows' 60 s.
    Counted per server (session), as --max-streams bounds each one's streams: a server bounds its flows by the same
    half and ends one never answered for a new source there (server/udp), which it cannot do for another server's."""

    def __init__(self, mapping: dict[str, Upstream] | dict[int, Upstream], max_udp_flows: int = 512) -> None:
        self.by_service = {
            key if isinstance(key, str) else tcp_service(key): upstream for key, upstream in mapping.items()
        }
        self.max_udp_flows = max_udp_flows

    @property
    def services(self) -> list[str]:
        return list(self.by_service)

    def on_stream(self, channel: Channel) -> None:
        upstream = self.by_service.get(channel.target)
        if upstream is None:
            log.warning("event=refused_stream target=%s reason=not_advertised", logfmt(channel.target))
            channel.reset(ResetCode.NOT_ALLOWED, f"{channel.target} is not served by this client")
            return
        if channel.target.startswith("udp:"):
            session = cast(Session, channel.session)
            if session.udp_flows >= self.max_udp_flows:
                channel.reset(ResetCode.TOO_MANY_STREAMS, f"limit of {self.max_udp_flows} UDP flows")
                return
            session.udp_flows += 1
            dial_udp(channel, upstream.host, upstream.port, on_close=functools.partial(self._udp_flow_closed, session))
        else:
            dial(channel, upstream.host, upstream.port, opener=upstream.opener)

    def _udp_flow_closed(self, session: Session) -> None:
        session.udp_flows -= 1
