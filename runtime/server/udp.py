"""UDP over the tunnel, the server's side: one stream per flow, one DATA frame per datagram.

Datagram boundaries survive because the multiplexer delivers each DATA frame as one
event. UDP has no backpressure, so nothing waits: a datagram that finds no credit
(or a full tunnel) is dropped and counted, as a congested network would drop it.
The server keeps a flow per source address, ended after ``idle_timeout`` of silence. When a
port's flows or a client's are at their bound, a new source takes the place of the oldest flow
never answered, else of the least recently active one not yet assured, as Linux's conntrack drops
unassured entries first: else a spray of sources (one host's ports, or forged ones) held every flow
for a minute and every new user was refused. A client's bound counts its flows on all its ports, so the one
that goes is the oldest of them all (``_ClientFlows``): a spray at one port locked the others' users out.
As conntrack's, a flow is assured (keeps its place) once it carried a datagram ``assured_after`` (2 s)
after it opened, an answer having come: a single answer did it before, and a spray at an upstream that
answers each datagram (DNS, an echo) took every place for its minute.
The client's side of a flow is client/udp_upstream.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, cast
from weakref import WeakKeyDictionary

from ..core.mux import ResetCode
from ..core.services import MAX_DATAGRAM
from ..core.channel import Channel
from ..core.session import Session
from .registry import Registry, credited, open_on_first, reached, unreachable
from .udp_socket import UdpSocket

log = logging.getLogger("inlets.udp")

IDLE_TIMEOUT = 60.0
MAX_FLOWS = 4096
#: Seconds after it opened from which an answered flow's next datagram assures it, as conntrack's UDP streams.
ASSURED_AFTER = 2.0


@dataclass
class UdpCounters:
    """What the metrics report for one public port (see metrics.TcpMetrics.watch_udp)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    evicted: int = 0  # flows not assured, ended for a new source (see _evict_flow)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


class _Flow:
    """One source address on the server: a stream to a client."""

    __slots__ = ("port", "address", "local", "channel", "client", "opened", "last_seen", "carried", "answered",
                 "assured")

    datagrams = True  # an empty DATA frame is a datagram of zero bytes, passed on (see Session)

    def __init__(self, port: UdpPort, address: tuple, local: bytes | None) -> None:
        self.port = port
        self.address = address
        self.local = local  # the address the source wrote to, for the answers' source (see udp_socket)
        self.channel: Channel | None = None
        self.client: _ClientFlows | None = None  # its client's flows a new source may take the place of
        self.opened = self.last_seen = asyncio.get_running_loop().time()
        self.carried = 0  # datagrams put in the tunnel: all lost if the client refuses the flow
        self.answered = False  # the upstream has sent something back: no longer the first to go for a new source
        self.assured = False  # answered and still going ASSURED_AFTER on: never ended for a new source

    # StreamHandler: datagrams coming back from the client's upstream
    def on_data(self, data: bytes | memoryview) -> None:
        transport = self.port.transport
        if transport is not None:
            transport.sendto(data, self.address, self.local)
            self.port.counters.datagrams_out += 1
            self.port.counters.bytes_out += len(data)
        if self.channel is not None:
            self.channel.consumed(len(data))
        self.last_seen = asyncio.get_running_loop().time()
        if not self.answered:  # an answer: the client reaches its upstream, and takes its share of flows again
            self._reached()
        if not self.assured:  # per datagram: an assured flow has nothing left to move
            self.port.touch(self, answer=True)

    def on_eof(self) -> None:  # no half-close for a flow: ended without a reset, its stream stayed open here
        self.port.end(self, ResetCode.CANCEL, "UDP flows do not half-close")

    def on_reset(self, code: int, reason: str) -> None:
        if code == ResetCode.TOO_MANY_STREAMS:  # the client's --max-streams (or its flows' half): refused at open,
            self.port.counters.drop("client_stream_limit", self.carried)  # so every datagram sent on it is lost
        elif code == ResetCode.REFUSED and self.channel is not None:  # its upstream: no socket to it (a name that
            self.port.counters.drop("upstream_failed", self.carried)  # does not resolve); new flows go to the others
            unreachable(cast(Session, self.channel.session), self.port.service)  # first for a while, as TCP's do
        self.port.end(self, reset=False)

    def on_writable(self) -> None:
        if not self.answered and self.channel is not None and credited(self.channel):  # the client acknowledged
            self._reached()  # its socket to the upstream: one that never answers (syslog, statsd) takes its share too

    def _reached(self) -> None:
        session = cast(Session, self.channel.session) if self.channel is not None else None
        if session is not None and (session.unreachable or session.silent):
            reached(session, self.port.service)


class _ClientFlows:
    """A client's flows not assured, on all the ports it serves, in the order ``UdpPort`` tables them: the bound
    they take the place of one another under is the client's, so a flow of any port may go for a new source."""

    __slots__ = ("unanswered", "unassured")

    def __init__(self) -> None:
        self.unanswered: OrderedDict[_Flow, None] = OrderedDict()  # oldest first
        self.unassured: OrderedDict[_Flow, None] = OrderedDict()  # least recently active first


#: Each client's (session's) flows, all ports together; gone with the session.
_clients: WeakKeyDictionary[Session, _ClientFlows] = WeakKeyDictionary()


class UdpPort:
    """A public UDP port on the server: datagrams in, flows to clients, answers back out."""

    def __init__(
        self,
        service: str,
        registry: Registry[Session],
        allows: Callable[[tuple[str, int]], bool] = lambda source: True,
        idle_timeout: float = IDLE_TIMEOUT,
        max_flows: int = MAX_FLOWS,
        counters: UdpCounters | None = None,
    ) -> None:
        self.service = service
        self.registry = registry  # whose turn a new flow is: round robin, as a TCP connection's
        self.allows = allows
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.flows: dict[tuple, _Flow] = {}
        self.unanswered: OrderedDict[tuple, _Flow] = OrderedDict()  # no answer came back on these: oldest first
        self.unassured: OrderedDict[tuple, _Flow] = OrderedDict()  # answered, not assured: least recently active first
        self.assured_after = ASSURED_AFTER
        self.counters = counters if counters is not None else UdpCounters()  # the server's, kept per port
        self.transport: UdpSocket | None = None
        self._sweeper: asyncio.Task | None = None

    def connection_made(self, transport: UdpSocket) -> None:
        self.transport = transport
        self._sweeper = asyncio.ensure_future(self._sweep())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in list(self.flows.values()):
            self.end(flow)

    def datagram_received(self, data: bytes, address: tuple, local: bytes | None = None) -> None:
        if len(data) > MAX_DATAGRAM:
            self.counters.drop("oversize")
            return
        flow = self.flows.get(address)
        if flow is None:
            flow = self._open(address, local)
            if flow is None:
                return
        elif flow.local != local:
            flow.local = local  # the source now writes to another of our addresses: answer from that one
        assert flow.channel is not None
        flow.last_seen = asyncio.get_running_loop().time()
        if flow.answered and not flow.assured:
            self.touch(flow)
        if not flow.channel.write_whole(data):  # the tunnel is congested: drop it whole (a part of it went, cut short)
            self.counters.drop("congested")
            return
        flow.carried += 1
        self.counters.datagrams_in += 1
        self.counters.bytes_in += len(data)

    def send_failed(self) -> None:
        self.counters.drop("send_failed")

    def overflowed(self, count: int) -> None:
        """Datagrams the kernel dropped before we read them: the port's socket buffer was full."""
        self.counters.drop("receive_buffer", count)

    def _open(self, address: tuple, local: bytes | None) -> _Flow | None:
        if not self.allows((str(address[0]), int(address[1]))):
            self.counters.drop("source_not_allowed")
            return None
        if len(self.flows) >= self.max_flows and not self._evict():
            self.counters.drop("too_many_flows")
            return None
        flow = _Flow(self, address, local)
        candidates = self.registry.candidates(self.service)
        sessions = _with_room(candidates)
        if candidates and not sessions and _evict_for(candidates):
            sessions = _with_room(candidates)
        channel = open_on_first(sessions, self.service, flow) if sessions else "client_stream_limit"
        if isinstance(channel, str):  # why no client took it, as a TCP connection's refusal is counted
            self.counters.drop(channel)
            return None
        flow.channel = channel
        session = cast(Session, channel.session)
        session.udp_flows += 1
        self.registry.took(self.service, session)  # the next turn after it: else a full client's fell to the next
        self.flows[address] = self.unanswered[address] = flow
        client = flow.client = _clients.get(session)
        if client is None:
            client = flow.client = _clients[session] = _ClientFlows()
        client.unanswered[flow] = None
        return flow

    def touch(self, flow: _Flow, answer: bool = False) -> None:
        """A datagram went either way on ``flow`` (an ``answer`` from its upstream, or one more from its source).
        Its first answer moves it from the first to go (``unanswered``) to the next (``unassured``); a datagram
        after that, ``assured_after`` from its opening on, assures it: a one-shot exchange (a spray) never is. O(1)."""
        address = flow.address
        if not flow.answered:
            if answer:
                flow.answered = True
                if self.unanswered.pop(address, None) is flow:  # else ended already: in no table
                    self.unassured[address] = flow
                    client = flow.client
                    assert client is not None  # tabled with its port's
                    del client.unanswered[flow]
                    client.unassured[flow] = None
            return
        if flow.assured or self.unassured.get(address) is not flow:
            return
        if flow.last_seen - flow.opened >= self.assured_after:
            flow.assured = True
            del self.unassured[address]
            del flow.client.unassured[flow]  # type: ignore[union-attr]
        else:
            self.unassured.move_to_end(address)
            flow.client.unassured.move_to_end(flow)  # type: ignore[union-attr]  # per datagram: no cast() call

    def _evict(self) -> bool:
        """End this port's oldest flow never answered, else its least recently active one not assured, for a new
        source; False when there is none."""
        flow = next(iter(self.unanswered.values()), None) or next(iter(self.unassured.values()), None)
        if flow is None:
            return False
        _evict_flow(flow)
        return True

    def end_session(self, session: Session) -> None:
        """A client leaves (GOAWAY: it drains): its flows end now, and a source's next datagram opens one on
        another client. A flow never finishes by itself, so the client waited out its whole drain for them."""
        for flow in [f for f in self.flows.values() if f.channel is not None and f.channel.session is session]:
            self.end(flow, ResetCode.CANCEL, "client draining")

    def end(self, flow: _Flow, code: int = ResetCode.TIMEOUT, reason: str = "UDP flow idle", reset: bool = True) -> None:
        if self.unanswered.get(flow.address) is flow:
            del self.unanswered[flow.address]
        if self.unassured.get(flow.address) is flow:
            del self.unassured[flow.address]
        client = flow.client
        if client is not None:
            client.unanswered.pop(flow, None)
            client.unassured.pop(flow, None)
        if self.flows.get(flow.address) is flow:
            del self.flows[flow.address]
            if flow.channel is not None:
                cast(Session, flow.channel.session).udp_flows -= 1
        if reset and flow.channel is not None:
            flow.channel.reset(code, reason)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.idle_timeout / 2))
            cutoff = loop.time() - self.idle_timeout
            for flow in [f for f in self.flows.values() if f.last_seen < cutoff]:
                self.end(flow)


def _evict_flow(flow: _Flow) -> None:
    """End ``flow``, not assured, for a new source (counted on its own port's metrics)."""
    flow.port.end(flow, ResetCode.CANCEL, "UDP flow not assured, ended for a new source")
    flow.port.counters.evicted += 1


def _evict_for(sessions: Iterable[Session]) -> bool:
    """End, for a new source, the oldest flow never answered of the clients ``sessions`` (each at its flows' bound),
    on whichever port, else their least recently active one not assured; False when there is none. The head of each
    client's tables: a few clients, not every flow."""
    tables = [client for client in map(_clients.get, sessions) if client is not None]
    heads = [next(iter(client.unanswered)) for client in tables if client.unanswered]
    if heads:
        _evict_flow(min(heads, key=lambda flow: flow.opened))
        return True
    heads = [next(iter(client.unassured)) for client in tables if client.unassured]
    if heads:
        _evict_flow(min(heads, key=lambda flow: flow.last_seen))
        return True
    return False


def _with_room(candidates: list[Session]) -> list[Session]:
    """The clients with room for a flow: half of a client's streams at most, by the lower of --max-client-streams
    and the client's own --max-streams (its hello's), of which the client keeps half for TCP too; else a flood of
    sources takes every stream and each TCP connection through that client is refused. Known here, a client's
    bound lets a new source take a flow never answered (_evict) instead of the client refusing it."""
    return [s for s in candidates if s.udp_flows < max(1, (s.mux.peer_max_streams or s.mux.max_streams) // 2)]
