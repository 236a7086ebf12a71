"""One user connection on the HTTP data plane: parse, route, forward, answer.

The socket side is an ``asyncio.Protocol`` that feeds a ``RequestReader``. Requests
are taken in order and routed by Host to a tunnel client (``Leg``); both legs stay
alive between requests. A plain request is sent straight from ``data_received``
(the fast path); one with a body, an upgrade or a refusal goes through the
connection's coroutine, which streams the body as it arrives. Either way the
response is passed on by the stream's callbacks (``exchange``). Bodies are
never held whole: reading from the user pauses when the queue passes
``HIGH_WATER``, and credit returns to the tunnel only once the user's socket took
the bytes. Pipelined requests likewise: past ``PIPELINE_DEPTH`` parsed and waiting,
the rest of the read waits unparsed and reading pauses until half of them are answered.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Protocol

from . import exchange as http_exchange
from ..core.bridge import LISTENER_TUNES_ACCEPTED, tune_socket
from ..core.session import Session
from ..server.registry import Registry, ejected, opened, resting
from ..core.hosts import sockname_authority, unmapped
from ..core.logs import logfmt
from ..server.dataplane import HEADER_TIMEOUT, DataPlaneOptions, HeaderReader, ProxyProtocolError, address
from .leg import Leg, LegFailed, UpstreamTimeout
from .options import HttpOptions
from .upgrade import UpgradeGateway, switch_protocols
from .messages import Body, EndOfMessage, Event, HttpError, RequestHead, ResponseHead, Upgraded, merge_bodies
from .parser import RequestReader
from .write import LAST_CHUNK, SimpleResponse, chunk, request_head
from ..core.mux import StreamError, StreamLimit


log = logging.getLogger("inlets.http")

HIGH_WATER = 512 * 1024
#: What a queued body piece holds beyond its bytes (its ``Body`` and ``bytes`` objects: ~90 bytes, measured), charged
#: against ``HIGH_WATER``: else a stream of 1-byte chunks queued ~35 MB before reading paused.
EVENT_COST = 128
PIPELINE_DEPTH = 32  # requests parsed ahead of the one being answered
#: Seconds a user that closed its side gives the request in flight before the upstream is told (``pass_fin``): a
#: user that only half-closed (``nc -N``) still gets a prompt answer, from upstreams that stop at a FIN too (aiohttp).
FIN_GRACE = 1.0


class FrontServer(http_exchange.Gateway, UpgradeGateway, Protocol):
    """The HTTP server as its user connections see it (``server.HttpTunnelServer`` is one)."""

    dataplane: DataPlaneOptions
    connections: set[FrontConnection]
    header_timeout: float
    registry: Registry[Session]


class FrontConnection(asyncio.Protocol):
    def __init__(self, server: FrontServer, scheme: bytes = b"http") -> None:
        self.server = server
        self.scheme = scheme  # what the user spoke: X-Forwarded-Proto (b"https" behind a TLS front)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.reader = RequestReader()
        self.events: collections.deque[Event | HttpError] = collections.deque()
        self.buffered = 0
        self.pipelined = 0  # request heads in ``events``
        self.unparsed = b""  # read but not parsed: the pipeline was full
        self.raw = False
        self.eof = False
        self.leg: Leg | None = None
        self._waiter: asyncio.Future | None = None
        self.drain: asyncio.Future | None = None
        self.unsent = 0  # while ``drain`` is pending: the write buffer's size when the sweep last looked
        self.stalled_since = 0.0  # ... and since when the user took none of it (the server's send timeout)
        self._paused_reading = False
        self._task: asyncio.Task | None = None
        self.loop = asyncio.get_running_loop()  # cached: each lookup costs a getpid() on 3.11
        self.idle_since: float | None = None  # waiting for the next request since (keep-alive timeout)
        self.head_since: float | None = None  # first byte of a request head still incomplete (slowloris)
        self.exchange: http_exchange.Exchange | None = None  # the request in flight, answered by callbacks
        self.parked = False  # the fast path owns the connection: the coroutine waits (http_exchange)
        self._header: HeaderReader | None = None  # --lb-proxy-protocol: until the balancer's header is read
        self._header_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not LISTENER_TUNES_ACCEPTED:  # else TCP_NOTSENT_LOWAT came from the listener (``listen``)
            tune_socket(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername")
        self.peer = unmapped(str(peer[0])).encode() if peer else b"unknown"
        self.reader.default_authority = sockname_authority(transport.get_extra_info("sockname"))
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        gate = self.server.dataplane
        if gate.lb_proxy_protocol:  # the balancer's header says who the user is: read it first
            self._header = HeaderReader(gate.lb_proxy_protocol)
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._forbid, "proxy_header_timeout")
        elif not gate.allows(address(peer)):
            self._forbid("source_not_allowed")
            return
        self.server.connections.add(self)
        self._task = asyncio.ensure_future(self._run())

    def header_timed_out(self) -> None:
        """The request head took longer than the header timeout to arrive (slowloris): 408, close."""
        log.info("event=header_timeout source=%s", logfmt(self.peer.decode(errors="replace")))
        self.server.observe(408, "", b"", time.monotonic(), True)
        if self.transport is not None and not self.transport.is_closing():
            timeout = self.server.header_timeout
            message = f"the request head did not arrive within {timeout:g}s\n".encode()
            self.transport.write(SimpleResponse(408, message).encode(True))
            self.transport.close()

    def _forbid(self, reason: str) -> None:
        """Refuse the connection with a 403 before reading any request (counted, logged)."""
        log.info("event=refused reason=%s source=%s", logfmt(reason), logfmt(self.peer.decode(errors="replace")))
        self.server.observe(403, "", b"", time.monotonic(), True)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
                                 b"Connection: close\r\n\r\nforbidden\n")
            self.transport.close()

    def _accept_header(self, data: bytes) -> bytes | None:
        """Feed the balancer's PROXY header; the bytes after it once complete, None before (or refused)."""
        assert self._header is not None
        try:
            done = self._header.feed(data)
        except ProxyProtocolError:
            self._header = None
            self._forbid("bad_proxy_header")
            return None
        if done is None:
            return None
        header, rest = done
        self._header = None
        if self._header_timer is not None:
            self._header_timer.cancel()
        if header.source is not None:
            self.peer = header.source[0].encode()
        if not self.server.dataplane.allows(header.source or ("", 0)) and header.source is not None:
            self._forbid("source_not_allowed")
            return None
        return rest

    def data_received(self, data: bytes) -> None:
        idle_since = self.idle_since
        if idle_since is not None and (self.head_since is None or self.head_since < idle_since):
            self.head_since = self.loop.time()  # a head has begun: it must be complete within the header timeout
        if self._header is not None:
            rest = self._accept_header(data)
            if not rest:
                return
            data = rest
        if self.raw:
            self.events.append(Body(data))
            self.buffered += len(data) + EVENT_COST
        elif self.unparsed:
            self.unparsed += data  # a read already on its way when reading paused
        else:
            self._parse(data)
        if self.buffered > HIGH_WATER:
            self._pause_reading()
        self.resume_requests()

    def _parse(self, data: bytes) -> None:
        """Parse no further than ``PIPELINE_DEPTH`` requests ahead; what is left waits, unread."""
        try:
            events, used = self.reader.feed_within(data, PIPELINE_DEPTH - self.pipelined)
        except HttpError as exc:
            self.events.append(exc)
            self._pause_reading()
            return
        bodies = 0
        for event in events:
            kind = type(event)
            if kind is Body:
                self.buffered += len(event.data)  # type: ignore[union-attr]
                bodies += 1
            elif kind is RequestHead:
                self.pipelined += 1
            elif kind is Upgraded:
                self.raw = True
                self.buffered += len(event.tail)  # type: ignore[union-attr]
        if bodies:
            if bodies > 1:
                events, bodies = merge_bodies(events)
            self.buffered += bodies * EVENT_COST
        self.events.extend(events)
        if used < len(data):
            if self.reader.refusal is not None:  # the rest begins with what was refused: it is answered after these
                self.events.append(self.reader.refusal)
            else:
                self.unparsed = data[used:]
            self._pause_reading()

    def _refill(self) -> None:
        """Half the pipeline is answered: parse what waited, and read on once all of it is parsed."""
        data, self.unparsed = self.unparsed, b""
        self._parse(data)
        self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._paused_reading and self.transport is not None:
            self.transport.pause_reading()
            self._paused_reading = True

    def _resume_reading(self) -> None:
        if (self._paused_reading and self.buffered < HIGH_WATER // 2 and not self.unparsed
                and self.transport is not None):
            self._paused_reading = False
            self.transport.resume_reading()

    def resume_requests(self) -> None:
        """Next request: a plain one runs on the fast path right here, anything else wakes the coroutine."""
        if self.parked:
            return  # the coroutine stays parked until the exchange in flight is done
        events = self.events
        head = events[0] if events else None
        if self.idle_since is not None and type(head) is RequestHead and self.transport is not None:
            if http_exchange.eligible(head) and http_exchange.try_start(self, head):
                self.idle_since = None
                events.popleft()
                if events and type(events[0]) is EndOfMessage:
                    events.popleft()
                self.pipelined -= 1
                if self.unparsed and self.pipelined <= PIPELINE_DEPTH // 2:
                    self._refill()
                return
        if events or self.eof:
            self.wake()

    def on_leg(self) -> None:
        """News on the leg of the exchange in flight."""
        http_exchange.progress(self)

    def eof_received(self) -> bool:
        self.eof = True
        ex = self.exchange
        if ex is not None and not ex.body_pending:
            self.pass_fin(ex)
        self.wake()
        return True  # answer what was asked before closing

    def pass_fin(self, ex: http_exchange.Exchange) -> None:
        """The user closed its side after the request in flight, all of which went: unless answered within
        ``FIN_GRACE``, the upstream sees it too (a long poll its user left stops, as nginx closes it then)."""
        if self.eof and not self.unparsed and all(type(event) is EndOfMessage for event in self.events):
            self.loop.call_later(FIN_GRACE, self._pass_fin_now, ex)

    def _pass_fin_now(self, ex: http_exchange.Exchange) -> None:
        if self.exchange is ex and self.transport is not None:
            ex.leg.end_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.transport = None
        if self._header_timer is not None:
            self._header_timer.cancel()
        http_exchange.abandon(self)
        self.wake()
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.drain = self.loop.create_future()
        self.unsent, self.stalled_since = self.transport.get_write_buffer_size(), self.loop.time()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)
        http_exchange.resumed(self)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_event(self) -> Event | HttpError | None:
        """Next event from the user; ``None`` once the user closed. Waits while the fast path runs."""
        while self.parked or not self.events:
            if self.eof and not self.parked:
                return None
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self.events.popleft()
        kind = type(event)
        if kind is Body:
            self.buffered -= len(event.data) + EVENT_COST  # type: ignore[union-attr]
            self._resume_reading()
        elif kind is Upgraded:  # what followed the request in its read, counted in ``_parse``
            self.buffered -= len(event.tail)  # type: ignore[union-attr]
            self._resume_reading()
        elif kind is RequestHead:
            self.pipelined -= 1
            if self.unparsed and self.pipelined <= PIPELINE_DEPTH // 2:
                self._refill()
        return event

    async def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("user went away")
        if data:
            transport.write(data)
        if self.drain is not None:
            await self.drain
            if self.transport is None:
                raise ConnectionResetError("user went away")

    # ------------------------------------------------------------------ requests

    async def _run(self) -> None:
        try:
            while True:
                self.idle_since = self.loop.time()
                event = await self.next_event()
                self.idle_since = None
                if event is None:
                    break
                if isinstance(event, HttpError):
                    await self._refuse(event.status, str(event), None, close=True)
                    break
                if type(event) is not RequestHead:
                    continue  # the rest of a request already answered
                if not await self._exchange(event):  # type: ignore[arg-type]
                    break
        except (ConnectionError, OSError):
            pass
        except Exception:  # noqa: BLE001 - one broken connection must not take the server down
            log.exception("event=proxy_error peer=%s", logfmt(self.peer.decode()))
        finally:
            self.server.connections.discard(self)
            if self.leg is not None:
                self.leg.finish()
                self.leg = None
            if self.transport is not None:
                self.transport.close()

    async def _refuse(self, status: int, message: str, head: RequestHead | None, *, close: bool,
                      extra: list | None = None, host: str = "", started: float = 0.0) -> None:
        body = (message.rstrip() + "\n").encode()
        response = SimpleResponse(status, body, extra or [])
        await self.send(response.encode(close, head is not None and head.method == b"HEAD"))
        if head is not None:
            self.server.observe(status, host, head.method, started, True)
        else:
            self.server.observe(status, "", b"", time.monotonic(), True)
        http_exchange.log_answer(status, host, head.method if head is not None else b"", message.rstrip())

    def pick(self, service: str, avoid: list[Session] | None = None) -> Leg | None:
        """A stream to a client serving ``service``: this connection's own while it can take the request, else
        the next client's, one whose upstream failed a dial a moment ago (``registry.resting``) or timed out requests
        in a row (``registry.ejected``) after the others;
        None when none can. StreamLimit when each one there holds --max-client-streams."""
        leg = self.leg
        if leg is not None:
            if leg.service == service and leg.usable and not leg.session.mux.peer_going_away:  # not a draining client's
                return leg
            leg.finish()
            self.leg = None
        full: StreamLimit | None = None
        later: list[Session] | None = None
        for session in self.server.registry.candidates(service):
            if session.closed.is_set() or (avoid is not None and session in avoid):  # ``avoid``: failed this request
                continue
            if ((session.unreachable or session.silent) and resting(session, service)  # tried last, not skipped
                    or session.ejected and ejected(session, service)):
                later = [session] if later is None else later + [session]
                continue
            opened = self._open_leg(session, service)
            if type(opened) is Leg:
                return opened
            full = opened or full
        for session in later or ():
            opened = self._open_leg(session, service)
            if type(opened) is Leg:
                return opened
            full = opened or full
        if full is not None:
            raise full
        return None

    def _open_leg(self, session: Session, service: str) -> Leg | StreamLimit | None:
        """A new stream on ``session`` (this connection's leg now); its StreamLimit when the client holds
        --max-client-streams and no idle user there gave one up; None when it takes no stream (draining)."""
        try:
            self.leg = Leg(session, service)
        except StreamLimit as exc:  # this client holds --max-client-streams: users between requests give
            # theirs up, as when the client refuses a stream for its own --max-streams
            if not http_exchange.reclaim_idle_stream(self, session):
                return exc
            try:
                self.leg = Leg(session, service)
            except StreamError:
                return exc
        except StreamError:
            return None
        opened(session, service)  # until an answer: a blackholed upstream's dial answers in 10 s
        return self.leg

    async def _exchange(self, head: RequestHead) -> bool:
        """Proxy one request; returns whether the user connection stays open."""
        server = self.server
        started = time.monotonic()  # for the duration histogram: see HttpTunnelServer.observe
        service, label = server.route(head.host)
        # An answer given before the body was read ends the connection: the body is not drained.
        close_on_refusal = head.has_body or head.upgrade or not head.keep_alive
        if service is None:
            await self._refuse(503, f"no tunnel client serves host {head.host or '(none)'!r}", head,
                               close=close_on_refusal, host=label, started=started)
            return not close_on_refusal
        guard = server.guards.get(service)
        refused = None if guard is None else server.guards.refusal(guard, head.noted.get(b"authorization", (None,))[0],
                                                                    self.peer)
        if guard is not None and refused is not None:
            if refused == 429:  # Retry-After: when this source's window ends (RFC 6585)
                wait = server.guards.failures.retry_after(self.peer.decode(errors="replace"))
                reason, extra = "too many failed logins: try again later", [(b"Retry-After", b"%d" % wait)]
            else:
                reason, extra = "unauthorized", guard.challenges()
            await self._refuse(refused, reason, head, close=close_on_refusal, extra=extra, host=label, started=started)
            return not close_on_refusal
        try:
            leg = self.pick(service)
        except StreamLimit as exc:
            await self._refuse(503, f"every tunnel client of host {head.host!r} is at its stream limit ({exc}): "
                               "try again later", head, close=close_on_refusal, host=label, started=started)
            return not close_on_refusal
        if leg is None:
            await self._refuse(503, f"no tunnel client serves host {head.host!r}", head,
                               close=close_on_refusal, host=label, started=started)
            return not close_on_refusal
        options = server.options_for(leg.session)
        return await self._forward(head, leg, options, label, started, guard is not None)

    async def _forward(self, head: RequestHead, leg: Leg, options: HttpOptions, label: str, started: float,
                       guarded: bool) -> bool:
        """Send the request (and its body, as it comes); the exchange's callbacks answer the user."""
        request = request_head(head, leg.service, options, guarded, self.peer, self.scheme)
        rest = leg.write_now(request)
        if rest is not None:
            try:
                await leg.write(rest)
            except (LegFailed, HttpError) as exc:
                await self._refuse(502, f"bad gateway: {exc}", head, close=True, host=label, started=started)
                return False
        waiter = self.loop.create_future()
        exchange = http_exchange.start(self, head, leg, options, label, started,
                                       None if head.has_body else request, waiter)
        pump = None
        if head.has_body:
            exchange.body_pending = True
            pump = asyncio.ensure_future(self._pump(leg, head.chunked, exchange))
        try:
            outcome = await waiter
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            if self.exchange is exchange:  # cancelled (shutdown): let go of the stream
                http_exchange.abandon(self, gone=False)
        if isinstance(outcome, ResponseHead):  # 101 Switching Protocols
            return await switch_protocols(self, head, outcome, leg, options, label, started)
        return bool(outcome)

    async def _pump(self, leg: Leg, chunked: bool, exchange: http_exchange.Exchange) -> None:
        """Request body, user -> upstream, as it arrives; a broken body fails the exchange."""
        try:
            while True:
                exchange.awaiting_body = True
                event = await self.next_event()
                exchange.awaiting_body = False
                if event is None or isinstance(event, HttpError):
                    leg.abort(event if isinstance(event, HttpError)  # the user's fault: a 400, not the upstream's 502
                              else HttpError(400, "request body incomplete: the connection ended before all of it came"))
                    return
                if type(event) is Body:
                    await leg.write(chunk(event.data) if chunked else event.data)  # type: ignore[union-attr]
                elif type(event) is EndOfMessage:
                    if chunked:
                        await leg.write(LAST_CHUNK)
                    self.pass_fin(exchange)
                    return
        except (LegFailed, HttpError, UpstreamTimeout):
            return  # the exchange saw it too and answers the user
        finally:
            exchange.body_pending = False
