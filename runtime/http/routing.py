"""A request's way to a tunnel client: routed by Host, checked by the host's guard, given a stream (``pick``),
refused in the proxy's own words when none can take it, then sent upstream with its body as it comes.

Apart from ``front.py`` (the user's socket: accepting it, the PROXY header and ``--allow-ips``, reading and
parsing, flow control both ways) because this is what happens to each request once parsed, and the registry's
choice of client lives here. ``FrontConnection`` takes it as a mixin, so the fast path (``exchange.try_start``
calls ``front.pick``) and the coroutine call the same methods as before.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from . import exchange as http_exchange
from .exchange_state import Exchange, Front, Gateway
from .reclaim import reclaim_idle_stream
from ..core.session import Session
from ..core.allowlist import SourceAllowList
from ..server.control_http import forwarded_client
from ..server.registry import Registry, ejected, opened, resting
from .leg import Leg, LegFailed, UpstreamTimeout
from .options import HttpOptions
from .upgrade import UpgradeGateway, switch_protocols
from .messages import Body, EndOfMessage, HttpError, RequestHead, ResponseHead
from .write import LAST_CHUNK, SimpleResponse, chunk, request_head
from ..core.mux import StreamError, StreamLimit


class RoutingServer(Gateway, UpgradeGateway, Protocol):
    """The HTTP server as a request's routing sees it (``front.FrontServer`` adds what the socket side reads)."""

    registry: Registry[Session]
    trusted_proxies: SourceAllowList | None  # --trusted-proxies: whose X-Forwarded-For names the user


class RequestRouting:
    """``FrontConnection``'s request side; ``send``, ``next_event`` and ``pass_fin`` are the connection's."""

    server: RoutingServer
    leg: Leg | None
    peer: bytes
    scheme: bytes
    trusted: bool
    loop: asyncio.AbstractEventLoop
    exchange: Exchange | None

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
            if not reclaim_idle_stream(self, session):
                return exc
            try:
                self.leg = Leg(session, service)
            except StreamError:
                return exc
        except StreamError:
            return None
        opened(session, service)  # until an answer: a blackholed upstream's dial answers in 10 s
        self.server.registry.took(service, session)  # the next turn begins after it, not at its client tried last
        return self.leg

    async def _exchange(self, head: RequestHead) -> bool:
        """Proxy one request; returns whether the user connection stays open."""
        server = self.server
        started = time.monotonic()  # for the duration histogram: see HttpTunnelServer.observe
        service, label = server.route(head.host)
        # An answer given before the body was read ends the connection: the body is not drained.
        close_on_refusal = head.has_body or head.upgrade or not head.keep_alive
        if head.own_answer:  # OPTIONS with Max-Forwards: 0: its final recipient answers (RFC 9110 7.6.2), with no
            # Allow, which would list the upstream's methods (9.3.7 makes it optional)
            await self.send(SimpleResponse(200, b"").encode(close_on_refusal))
            server.observe(200, label, head.method, started, True)
            http_exchange.log_answer(200, label, head.method, "OPTIONS with Max-Forwards: 0 answered by the proxy")
            return not close_on_refusal
        if service is None:
            await self._refuse(503, f"no tunnel client serves host {head.host or '(none)'!r}", head,
                               close=close_on_refusal, host=label, started=started)
            return not close_on_refusal
        guard = server.guards.get(service)
        source = self.peer if guard is None else self.guard_source(head)
        credentials = head.noted.get(b"authorization", (None,))
        if guard is not None and len(credentials) > 1:  # a singleton field (RFC 9110 11.6.2): which one counts was
            await self._refuse(400, "more than one Authorization header", head,  # the first; nginx answers 400 too
                               close=close_on_refusal, host=label, started=started)
            return not close_on_refusal
        refused = None if guard is None else server.guards.refusal(guard, credentials[0], source)
        if guard is not None and refused is not None:
            if refused == 429:  # Retry-After: when this source's window ends (RFC 6585)
                wait = server.guards.failures.retry_after(source.decode(errors="replace"))
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

    def guard_source(self, head: RequestHead) -> bytes:
        """Whose credential this is, for the failed-login limit: behind a --trusted-proxies balancer the user it
        forwarded for (else one user's guesses had every user refused), as the control port counts them."""
        if not self.trusted:  # asked once a connection (FrontConnection._trust), not per request
            return self.peer
        values = [value.decode("latin-1") for value in head.noted.get(b"x-forwarded-for", ())]
        return forwarded_client(self.peer.decode(errors="replace"), values, self.server.trusted_proxies).encode()

    async def _forward(self, head: RequestHead, leg: Leg, options: HttpOptions, label: str, started: float,
                       guarded: bool) -> bool:
        """Send the request (and its body, as it comes); the exchange's callbacks answer the user."""
        request = request_head(head, leg.service, options, guarded, self.peer, self.scheme, self.trusted)
        rest = leg.write_now(request)
        if rest is not None:
            try:
                await leg.write(rest)
            except (LegFailed, HttpError) as exc:
                await self._refuse(502, f"bad gateway: {exc}", head, close=True, host=label, started=started)
                return False
        waiter = self.loop.create_future()
        exchange = http_exchange.start(self, head, leg, options, label, started, request, waiter)
        pump = None
        if head.has_body:
            exchange.body_pending = True
            pump = asyncio.ensure_future(self._pump(head.chunked, exchange))
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

    async def _pump(self, chunked: bool, exchange: Exchange) -> None:
        """Request body, user -> upstream, as it arrives, on the exchange's leg of the moment; a broken body fails
        the exchange."""
        try:
            while True:
                exchange.awaiting_body = True
                event = await self.next_event()
                exchange.awaiting_body = False
                if event is None or isinstance(event, HttpError):
                    exchange.leg.abort(event if isinstance(event, HttpError)  # the user's fault: a 400, not a 502
                                       else HttpError(400, "request body incomplete: the connection ended before all "
                                                           "of it came"))
                    return
                if type(event) is Body:
                    await _send_body(self, exchange, chunk(event.data) if chunked else event.data)  # type: ignore[union-attr]
                elif type(event) is EndOfMessage:
                    if chunked:
                        await _send_body(self, exchange, LAST_CHUNK)
                    self.pass_fin(exchange)
                    return
        except (LegFailed, HttpError, UpstreamTimeout):
            return  # the exchange saw it too and answers the user
        finally:
            exchange.body_pending = False


#: A request with a body is kept, head and body so far, up to this, until its answer begins: a client that could not
#: reach its upstream (or refused the stream) has it sent whole to another. POSTs to a host served by three clients,
#: one with its app down, got 502 one time in three (README: any method goes to the next client): the body had gone.
KEPT_REQUEST = 64 * 1024


async def _send_body(front: Front, exchange: Exchange, piece: bytes | memoryview) -> None:
    """One piece of the request body to the exchange's leg, kept with the request while it may be sent again. A
    leg that failed with the piece kept, the exchange still in flight, is no loss: the request went again, whole, on
    another leg (or goes once a stream is free)."""
    kept = exchange.request
    if kept is not None:
        if exchange.response is None and len(kept) + len(piece) <= KEPT_REQUEST:
            # grown in place: joined anew per piece, 64 KiB dripped a byte a read was 2 GiB of copies
            if type(kept) is bytes:
                kept = exchange.request = bytearray(kept)
            kept += piece
        else:
            exchange.request = None
    leg = exchange.leg
    try:
        await leg.write(piece)
    except LegFailed:
        if exchange.request is None or front.exchange is not exchange:  # answered (a 502), or the user left
            raise
