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
the rest of the read waits unparsed and reading pauses until half of them are answered; none is
sent upstream while the user's socket is full.
Routing a parsed request to a tunnel client, and sending it, is ``routing.py``'s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Protocol

from . import exchange as http_exchange
from .exchange_state import Exchange
from ..core.bridge import LISTENER_TUNES_ACCEPTED, tune_socket
from ..server.admission import Admission, Ticket
from ..core.hosts import sockname_authority, unmapped
from ..core.logs import logfmt
from ..server.dataplane import HEADER_TIMEOUT, DataPlaneOptions, HeaderReader, ProxyProtocolError, address
from .leg import Leg
from .messages import Body, EndOfMessage, Event, HttpError, RequestHead, Upgraded, merge_bodies
from .request_reader import RequestReader
from .routing import RequestRouting, RoutingServer
from .write import SimpleResponse


log = logging.getLogger("inlets.http")

HIGH_WATER = 512 * 1024
#: What a queued body piece holds beyond its bytes (its ``Body`` and ``bytes`` objects: ~90 bytes, measured), charged
#: against ``HIGH_WATER``: else a stream of 1-byte chunks queued ~35 MB before reading paused.
EVENT_COST = 128
PIPELINE_DEPTH = 32  # requests parsed ahead of the one being answered
#: Seconds a user that closed its side gives the request in flight before the upstream is told (``pass_fin``): a
#: user that only half-closed (``nc -N``) still gets a prompt answer, from upstreams that stop at a FIN too (aiohttp).
FIN_GRACE = 1.0


class FrontServer(RoutingServer, Protocol):
    """The HTTP server as its user connections see it (``server.HttpTunnelServer`` is one)."""

    dataplane: DataPlaneOptions
    connections: set[FrontConnection]
    header_timeout: float
    admission: Admission


class FrontConnection(RequestRouting, asyncio.Protocol):
    server: FrontServer
    #: its place among the data port's connections with no whole request head yet (``server.admission``; over TLS
    #: the HTTPS front's, passed on after the handshake), given back at its first head or close
    ticket: Ticket | None = None

    def __init__(self, server: FrontServer, scheme: bytes = b"http") -> None:
        self.server = server
        self.scheme = scheme  # what the user spoke: X-Forwarded-Proto (b"https" behind a TLS front)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.trusted = False  # ``peer`` is in --trusted-proxies: its X-Forwarded-For goes on, appended to
        self.reader = RequestReader()
        self.events: collections.deque[Event | HttpError] = collections.deque()
        self.buffered = 0
        self.pipelined = 0  # request heads in ``events``
        self.unparsed = b""  # read but not parsed: the pipeline was full
        self.raw = False
        self.eof = False
        self.fin = False  # the user half-closed (``eof`` is also set when its connection was lost)
        self.leg: Leg | None = None
        self._waiter: asyncio.Future | None = None
        self.drain: asyncio.Future | None = None
        self.unsent = 0  # while ``drain`` is pending: the write buffer's size when the sweep last looked
        self.stalled_since = 0.0  # ... and since when the user took none of it (the server's send timeout)
        self.acked: int | None = None  # ... and the bytes the user's kernel had acknowledged then (TCP_INFO), if asked
        self._paused_reading = False
        self._task: asyncio.Task | None = None
        self.loop = asyncio.get_running_loop()  # cached: each lookup costs a getpid() on 3.11
        self.idle_since: float | None = None  # waiting for the next request since (keep-alive timeout)
        self.head_since: float | None = None  # first byte of a request head still incomplete (slowloris)
        self.exchange: Exchange | None = None  # the request in flight, answered by callbacks
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
        self._trust()
        self.reader.default_authority = sockname_authority(transport.get_extra_info("sockname"))
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        gate = self.server.dataplane
        if gate.lb_proxy_protocol:  # the balancer's header says who the user is: read it first
            self._header = HeaderReader(gate.lb_proxy_protocol, address(peer))
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._forbid, "proxy_header_timeout",
                                                      time.monotonic())
        elif not gate.allows(address(peer)):
            self._forbid("source_not_allowed")
            return
        self.server.connections.add(self)
        self._task = asyncio.ensure_future(self._run())

    def _trust(self) -> None:
        """Whether ``peer`` is a --trusted-proxies balancer: asked once a connection, not per request."""
        trusted = self.server.trusted_proxies
        self.trusted = trusted is not None and trusted.allows(self.peer.decode())

    def header_timed_out(self) -> None:
        """The request head took longer than the header timeout to arrive (slowloris): 408, close. Its duration
        runs from the head's first byte (or the wait for it), as a request's does: counted as 0 s, slowloris's
        408s sat in the fastest bucket."""
        log.info("event=header_timeout source=%s", logfmt(self.peer.decode(errors="replace")))
        began = self.idle_since  # the head began before the wait (``server._head_late``), or during it:
        if self.head_since is not None and (began is None or self.head_since >= began):
            began = self.head_since
        waited = self.loop.time() - began if began is not None else 0.0
        self.server.observe(408, "", b"", time.monotonic() - waited, True)
        if self.transport is not None and not self.transport.is_closing():
            timeout = self.server.header_timeout
            message = f"the request head did not arrive within {timeout:g}s\n".encode()
            self.transport.write(SimpleResponse(408, message).encode(True))
            self.transport.close()

    def _forbid(self, reason: str, began: float | None = None, error: object = None) -> None:
        """Refuse the connection with a 403 before reading any request (counted, logged in one line); ``began``:
        when the wait that ended in the refusal began (a balancer's PROXY header that never came), so its duration
        counts; ``error``: what was wrong, when there is more to say."""
        source = self.peer.decode(errors="replace")
        if error is None:
            log.info("event=refused reason=%s source=%s", logfmt(reason), logfmt(source))
        else:
            log.info("event=refused reason=%s source=%s error=%s", logfmt(reason), logfmt(source), logfmt(error))
        self.server.observe(403, "", b"", time.monotonic() if began is None else began, True)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
                                 b"Connection: close\r\n\r\nforbidden\n")
            self.transport.close()

    def _accept_header(self, data: bytes) -> bytes | None:
        """Feed the balancer's PROXY header; the bytes after it once complete, None before (or refused)."""
        assert self._header is not None
        try:
            done = self._header.feed(data)
        except ProxyProtocolError as exc:
            self._bad_header(exc)
            return None
        if done is None:
            return None
        source, _, rest = done
        self._header = None
        if self._header_timer is not None:
            self._header_timer.cancel()
        self.peer = source[0].encode()  # the balancer's own for LOCAL/UNKNOWN, which its ticket already counts
        self._trust()
        if self.ticket is not None and not self.server.admission.move(self.ticket, unmapped(source[0])):
            self.transport.abort()  # type: ignore[union-attr]  # its real source is at its cap: as at accept
            return None
        if not self.server.dataplane.allows(source):
            self._forbid("source_not_allowed")
            return None
        return rest

    def _bad_header(self, error: object) -> None:
        self._header = None
        self._forbid("bad_proxy_header", error=error)

    def data_received(self, data: bytes) -> None:
        idle_since = self.idle_since
        if (idle_since is not None and (self.head_since is None or self.head_since < idle_since)
                and not self.reader.in_head):  # one begun before the wait counts from the wait's start (``_head_late``)
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
                if self.ticket is not None:  # its first head: it has shown it is a user
                    self.ticket, ticket = None, self.ticket
                    ticket.release()
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
            if self.drain is None and http_exchange.eligible(head) and http_exchange.try_start(self, head):
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
        if self._header is not None:  # closed within the balancer's header: refused as the TCP server refuses it
            error = self._header.cut_short()
            if error is not None:
                self._bad_header(error)
                return False
        self.eof = self.fin = True
        ex = self.exchange
        if ex is not None and not ex.body_pending:
            self.pass_fin(ex)
        self.wake()
        return True  # answer what was asked before closing

    def pass_fin(self, ex: Exchange) -> None:
        """The user closed its side after the request in flight, all of which went: unless answered within
        ``FIN_GRACE``, the upstream sees it too (a long poll its user left stops, as nginx closes it then). Not once
        the answer has begun: a user that only half-closed (``nc -N``) reads it, and a user gone altogether is
        found out by the answer's next write (a reset); the FIN cut answers that upstreams stop at a FIN, and
        counted them 499 (a 30-byte answer over 3 s: the user got its head and a reset)."""
        if self.eof and not self.unparsed and all(type(event) is EndOfMessage for event in self.events):
            self.loop.call_later(FIN_GRACE, self._pass_fin_now, ex)

    def _pass_fin_now(self, ex: Exchange) -> None:
        if self.exchange is ex and self.transport is not None and ex.response is None:
            ex.leg.end_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.transport = None
        if self.ticket is not None:
            self.ticket.release()
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
        self.acked = None

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
        transport = self.transport
        if transport is None or transport.is_closing():  # RFC 9112 9.6: no request after a close is processed (the
            return None  # user was told, or is gone): a pipelined POST ran upstream, its answer never delivered
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
                if self.drain is not None:  # the user takes none of the answers so far: none more until it does.
                    # Each answer with its own stream (Connection: close) went to the socket's buffer whole, so a
                    # pipeline of them grew it without bound (a stream's credit holds back only its own upstream)
                    await self.drain
                    if self.transport is None:
                        break
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
