"""One exchange's response side, run in the tunnel stream's callbacks; and the fast path.

Once a request head is on its way upstream, an ``Exchange`` listens on the leg:
each batch of response events is written to the user as it arrives (one write
per batch), 1xx answers are relayed, the end of the response, a failure (502), a
timeout (504) or a reused stream closed before answering (an idempotent request is sent once
more) end it.
Credit goes back to the tunnel only once the user's socket took the bytes.

Fast path: a plain request (no body, no upgrade, nothing to refuse) is also routed
and sent from ``data_received`` (``try_start``), so a GET costs no coroutine hop
at all, as with the TCP bridge (~6% more requests/s, p99 ~10% lower, measured).
Everything else goes through the connection's coroutine, which sends the request
(and its body), then waits on the exchange's ``waiter``. ``Exchange`` and the interfaces it
works through (``Gateway``, ``Front``) are in ``exchange_state.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..core.logs import logfmt
from ..core.bridge import reset
from ..core.mux import StreamLimit
from ..core.services import shown_service
from ..server import registry
from ..server.registry import answered, reached, timed_out, unreachable
from .leg import Leg, LegFailed
from .exchange_state import Exchange, Front
from .options import HttpOptions
from .reclaim import reclaim_idle_stream
from .messages import Body, EndOfMessage, HttpError, RequestHead, ResponseHead
from .write import LAST_CHUNK, SimpleResponse, chunk, chunk_parts, request_head, response_head

#: nginx's "client closed request": a user who left before the answer ended (no error of the upstream's)
CLIENT_CLOSED = 499

log = logging.getLogger("inlets.http")

#: Seconds to wait before each new try when the client refuses a request's stream (see ``_retry_refused``).
REFUSED_RETRY_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.4)
#: Methods a proxy may send again by itself (RFC 9110 9.2.2: idempotent; a proxy MUST NOT retry others):
#: a POST the upstream may have acted on before it closed is answered 502, not done twice.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


#: Body pieces from this size on are written as they are, with the response head and the rest of the
#: batch in one ``writelines`` (uvloop sends them with one writev), rather than copied into one
#: ``bytes`` first: a 64 KiB response's body is copied once less (measured: 3.3% fewer instructions
#: per such request in the server). Smaller ones are joined: a join of a few KiB costs less than the
#: writev's bookkeeping (1 KiB responses: unchanged).
WRITEV_FROM = 16 * 1024


def eligible(head: RequestHead) -> bool:
    return not (head.chunked or head.content_length or head.upgrade or head.expect_continue or head.own_answer)


def try_start(front: Front, head: RequestHead) -> bool:
    """Fast path: route and send ``head`` now; False leaves it to the coroutine (nothing was sent)."""
    server = front.server
    service, label = server.route(head.host)
    if service is None:
        return False
    guard = server.guards.get(service)
    credentials = head.noted.get(b"authorization", (None,))
    if guard is not None and (len(credentials) > 1 or not guard.authorized(credentials[0])
                              or server.guards.limited(front.guard_source(head))):
        return False  # the coroutine answers it (400, 401, 429)
    try:
        leg = front.pick(service)
    except StreamLimit:  # the coroutine answers it (503)
        return False
    if leg is None:
        return False
    options = server.options_for(leg.session)
    request = request_head(head, leg.service, options, guard is not None, front.peer, front.scheme, front.trusted)
    if not _send_request(leg, request):
        return False
    front.parked = True  # the coroutine leaves the connection to the callbacks until this ends
    start(front, head, leg, options, label, time.monotonic(), request, None)
    return True


def start(front: Front, head: RequestHead, leg: Leg, options: HttpOptions, label: str, started: float,
          request: bytes | None, waiter: asyncio.Future | None) -> Exchange:
    """The request head was sent on ``leg``: listen for the response."""
    reused = leg.received > 0
    leg.start_exchange(head.method == b"HEAD", head.upgrade)
    exchange = front.exchange = Exchange(head, leg, options, label, started, request, reused, waiter)
    leg.listener = front
    front.server.exchanges.add(leg)
    return exchange


def _send_request(leg: Leg, request: bytes) -> bool:
    channel = leg.channel
    if channel.session.mux.send_window(channel.stream_id) < len(request):
        return False
    return leg.write_now(request) is None  # all or nothing here (the window was checked)


def progress(front: Front) -> None:
    """The leg has news for the exchange in flight: pass the response on, or end the exchange."""
    ex = front.exchange
    if ex is None:
        return
    leg = ex.leg
    head = ex.head
    done = False
    large = False  # a body piece worth writing as it is, not joined
    out = ex.out
    events = leg.events
    while events:
        event = events.popleft()
        kind = type(event)
        if kind is Body:
            data = event.data  # type: ignore[union-attr]
            if len(data) >= WRITEV_FROM:
                large = True
                out += chunk_parts(data) if ex.chunked else (data,)
            else:
                out.append(chunk(data) if ex.chunked else data)
        elif kind is ResponseHead:
            response: ResponseHead = event  # type: ignore[assignment]
            if response.status >= 200:
                ex.response = response
                if leg.session.unreachable or leg.session.silent:  # an answer: its client reaches its upstream
                    reached(leg.session, leg.service)
                if leg.session.timeouts:
                    _answered(leg)
                ex.chunked = response.chunked and head.version == b"1.1"
                ex.close = (not head.keep_alive or head.upgrade or response.close_delimited
                              or (response.chunked and not ex.chunked) or ex.body_pending or front.server.draining)
                out.append(response_head(response, ex.options, ex.chunked, ex.close,
                                         keep_alive=head.version == b"1.0" and not ex.close))
            elif response.status == 101 and head.upgrade:
                if leg.session.unreachable or leg.session.silent:  # an answer too: a websocket accepted
                    reached(leg.session, leg.service)
                if leg.session.timeouts:
                    _answered(leg)
                if out and front.transport is not None:
                    front.transport.write(b"".join(out))
                _switch(front, ex, response)
                return
            elif response.status != 101 and head.version == b"1.1":
                out.append(response_head(response, ex.options, False, False))
                ex.continued = ex.continued or response.status == 100
        elif kind is EndOfMessage:
            if ex.chunked:
                out.append(LAST_CHUNK)
            done = True
            break
    if not done:
        failure = leg.failure
        if leg.timed_out or failure is not None or leg.eof:
            if ex.response is None:
                if ((leg.eof and failure is None or leg.dropped) and not leg.timed_out and not ex.retried
                        and (ex.reused or leg.dropped and leg.session.closed.is_set())  # or its client went away
                        and ex.request is not None and head.method in IDEMPOTENT and not leg.request_ended):
                    _retry(front, ex, f"bad gateway: {failure}" if failure is not None and not ex.reused
                           else "upstream closed the connection without answering")
                elif leg.eof and failure is None and leg.request_ended:  # it stopped as the user left (``end_request``)
                    abandon(front)
                elif leg.refused and ex.request is not None and ex.refusals < len(REFUSED_RETRY_DELAYS):
                    _retry_refused(front, ex)
                elif leg.refused:  # it never reached the upstream: busy, as at the server's own stream limit
                    _detach(front, ex)
                    _reply(front, ex, *_at_stream_limit(ex))
                elif leg.unreachable and ex.request is not None:
                    _retry_elsewhere(front, ex, failure)
                else:
                    _fail(front, ex, failure)
                return
            if not (leg.eof and failure is None and ex.response.close_delimited):
                # it stopped as the user left, or went silent after the user closed its side (as ``_fail``): not a 502
                if leg.eof and failure is None and leg.request_ended or leg.timed_out and front.eof:
                    front.server.observe(CLIENT_CLOSED, ex.label, head.method, ex.started)
                    _abort(front)
                    return
                why = (f"upstream sent nothing for {front.server.upstream_timeout:g}s" if leg.timed_out
                       else str(failure) if failure is not None else "upstream closed the connection")
                log.info("event=answer_cut status=%d host=%s reason=%s", ex.response.status, logfmt(ex.label or "-"),
                         logfmt(why + " in the middle of the answer"))
                front.server.observe(502, ex.label, head.method, ex.started, True)  # the user got a bad gateway
                _abort(front)  # cut mid-response: the user must see the connection fail
                return
            done = True
    transport = front.transport
    if transport is None:
        return
    if out:
        if large:
            transport.writelines(out)  # uvloop: one writev, no copy
        else:
            transport.write(b"".join(out))
        out.clear()
    if front.drain is None:
        leg.release()
    else:
        ex.unreleased = True  # released by ``resumed``
    if done:
        _finish(front, ex)


def resumed(front: Front) -> None:
    """The user's socket drained: hand the tunnel the credit held back (the upstream's timeout starts now)."""
    ex = front.exchange
    if ex is not None and ex.unreleased:
        ex.unreleased = False
        ex.leg.last_activity = front.loop.time()
        ex.leg.release()


def abandon(front: Front, gone: bool = True) -> None:
    """The user went away mid-exchange (``gone``: counted as nginx does, 499), or the server is stopping."""
    ex = front.exchange
    if ex is not None:
        if gone:
            front.server.observe(CLIENT_CLOSED, ex.label, ex.head.method, ex.started)
        _detach(front, ex)
        _end(front, ex, False)


def _end(front: Front, ex: Exchange, outcome: object) -> None:
    """The exchange is over: its owner (the coroutine's waiter, or the fast path) carries on."""
    front.exchange = None
    waiter = ex.waiter
    if waiter is not None:
        if not waiter.done():
            waiter.set_result(outcome)
        return
    front.parked = False
    if outcome is True:
        front.idle_since = front.loop.time()
        front.resume_requests()
    elif front.transport is not None:
        front.transport.close()
    else:
        front.wake()  # the user is gone: the coroutine ends the connection


def _switch(front: Front, ex: Exchange, response: ResponseHead) -> None:
    """101: the coroutine bridges raw bytes from here (the leg keeps what followed the head)."""
    leg = ex.leg
    leg.listener = None
    front.server.exchanges.discard(leg)
    _end(front, ex, response)


def _retry(front: Front, ex: Exchange, failure: str) -> None:
    """A kept-alive upstream closed (or reset) as its stream was reused, or the client went away (killed, or silent
    past its keepalive) before any answer: once more on a fresh stream, to another client in the second case, as
    nginx sends an idempotent request to the next upstream (a GET to a paused client got 502)."""
    _detach(front, ex)
    ex.retried = True
    _resend(front, ex, failure)  # the 502 when no other stream takes it


def _retry_elsewhere(front: Front, ex: Exchange, failure: Exception | None) -> None:
    """The client could not dial its upstream (down behind that client only, say): the request reached no upstream,
    so it goes to another client serving the host, any method, each client tried once; 502 when none is left.
    For a while new requests try that client after the others (a blackholed upstream cost each one the dial timeout)."""
    ex.unreachable_on.append(ex.leg.session)
    unreachable(ex.leg.session, ex.leg.service)
    _detach(front, ex)
    _resend(front, ex, f"bad gateway: {failure}")


def _retry_refused(front: Front, ex: Exchange) -> None:
    """The client refused the stream for its --max-streams: the request never reached the upstream, so it
    goes again on a fresh stream once one is free: a user between requests gives theirs up now
    (``reclaim_idle_stream``), and streams of users who just left close (a few ms, more under load: up
    to ``REFUSED_RETRY_DELAYS``, then 502, when every stream carries a request)."""
    _detach(front, ex)
    # A stream given up is free at the client before the new one's OPEN arrives (frames stay in order)
    delay = 0.0 if reclaim_idle_stream(front, ex.leg.session) else REFUSED_RETRY_DELAYS[ex.refusals]
    ex.refusals += 1
    front.loop.call_later(delay, _resend_if_waiting, front, ex)


def _resend_if_waiting(front: Front, ex: Exchange) -> None:
    if front.exchange is ex:  # else the user went away meanwhile
        status, failure = _at_stream_limit(ex)
        _resend(front, ex, failure, status)


def _at_stream_limit(ex: Exchange) -> tuple[int, str]:
    """The answer when a client refused the stream at its --max-streams until the retries ran out: 503, overload, as
    the server's own --max-client-streams answers it (RFC 9110 15.6.4), not the bad gateway it was said as; still a
    502 where another client could not reach its upstream for it (a site partly down, not only busy)."""
    if ex.unreachable_on:
        return 502, "bad gateway: the tunnel client has too many streams open"
    return 503, f"every tunnel client of host {ex.head.host!r} is at its stream limit (its --max-streams): try again later"


def _resend(front: Front, ex: Exchange, failure: str, status: int = 502) -> None:
    """Send the request again on a fresh stream, to none of the clients that could not dial their upstream for it
    (each retry's: a retry after a refused stream dialled the unreachable one again, up to 6 times a request)."""
    try:
        leg = front.pick(ex.leg.service, ex.unreachable_on or None)
    except StreamLimit:  # every client serving it holds --max-client-streams, each stream carrying a request
        leg = None
    # ex.request is None where the body outgrew routing.KEPT_REQUEST meanwhile (a retry waiting for a free stream)
    # bytes(): the kept request may grow on (``routing._send_body``) while a copy of it waits to be sent
    if leg is None or ex.request is None or not _send_request(leg, bytes(ex.request)):
        _reply(front, ex, status, failure)
        return
    leg.start_exchange(ex.head.method == b"HEAD", ex.head.upgrade)
    ex.leg, ex.reused = leg, False
    leg.listener = front
    front.server.exchanges.add(leg)
    front.exchange = ex


def _answered(leg: Leg) -> None:
    """An answer came through ``leg``: its client's response timeouts start over, and one routed around is back."""
    if answered(leg.session, leg.service):
        log.info("event=client_returned client=%s service=%s", logfmt(leg.session.name), logfmt(shown_service(leg.service)))


def _fail(front: Front, ex: Exchange, failure: Exception | None) -> None:
    if ex.leg.timed_out and front.eof and not ex.body_pending:  # the user left before a silent upstream timed out:
        abandon(front)  # 499, as when the upstream stops at its FIN; counted a tunnel 504, it set off the tunnel's alerts
        return
    # The user stalled (as nginx's client_body_timeout); not one who waits for a 100 Continue the upstream never sent
    # (one it sent leaves the stall to the user: counted against the client, three such users ejected it)
    if ex.leg.timed_out and ex.body_pending and ex.awaiting_body and (not ex.head.expect_continue or ex.continued):
        status, message = 408, f"request body timed out: none of it came for {front.server.upstream_timeout:g}s"
    elif ex.leg.timed_out:
        status, message = 504, f"upstream did not answer within {front.server.upstream_timeout:g}s"
        if timed_out(ex.leg.session, ex.leg.service):
            log.warning("event=client_ejected client=%s service=%s timeouts=%d retry_in=%gs reason=%s",
                        logfmt(ex.leg.session.name), logfmt(shown_service(ex.leg.service)), registry.EJECT_AFTER,
                        registry.EJECT_FOR, logfmt(f"its upstream answered none of {registry.EJECT_AFTER} requests in a "
                                                   "row within --upstream-timeout, so the other clients take its requests: check that app"))
    elif isinstance(failure, HttpError) and failure.status < 500:  # the request's body was malformed
        status, message = failure.status, str(failure)
    elif isinstance(failure, HttpError):
        status, message = failure.status, f"bad gateway: {failure}"
    else:
        status, message = 502, f"bad gateway: {failure or 'upstream closed the connection'}"
    _detach(front, ex)
    _reply(front, ex, status, message)


def _reply(front: Front, ex: Exchange, status: int, message: str) -> None:
    transport = front.transport
    if transport is not None:
        body = SimpleResponse(status, (message + "\n").encode())
        transport.write(body.encode(True, ex.head.method == b"HEAD"))
    front.server.observe(status, ex.label, ex.head.method, ex.started, True)
    log_answer(status, ex.label, ex.head.method, message)
    _end(front, ex, False)


def log_answer(status: int, host: str, method: bytes, message: str) -> None:
    """One line for each answer the proxy makes itself: at info when the upstream side failed (5xx), at debug
    for users' mistakes (4xx). The handler's repeat limit bounds a flood of either."""
    log.log(logging.INFO if status >= 500 else logging.DEBUG, "event=answered status=%d host=%s method=%s reason=%s",
            status, logfmt(host or "-"), logfmt(method.decode("latin-1") or "-"), logfmt(message))


def _abort(front: Front) -> None:
    """Cut the user's connection with a reset: a close would end a close-delimited body (HTTP/1.0)
    as if it were complete."""
    ex = front.exchange
    if front.transport is not None:
        reset(front.transport)
    if ex is not None:
        _detach(front, ex)
        _end(front, ex, False)


def _detach(front: Front, ex: Exchange) -> None:
    """The exchange failed: its leg goes (it cannot carry another request)."""
    leg = ex.leg
    leg.listener = None
    front.server.exchanges.discard(leg)
    leg.abort(LegFailed("exchange abandoned"))
    if front.leg is leg:
        front.leg = None


def _finish(front: Front, ex: Exchange) -> None:
    leg = ex.leg
    leg.listener = None
    front.server.exchanges.discard(leg)
    response = ex.response
    assert response is not None
    front.server.observe(response.status, ex.label, ex.head.method, ex.started)
    if ex.body_pending:  # answered before the whole body went: the upstream still waits for it
        leg.abort(LegFailed("request body abandoned"))
        drop = True
    else:
        # The next request already waits (pipelined): not on this stream, where bytes the upstream sent after this
        # answer (past its Content-Length), still on their way, would be taken for that request's answer
        drop = (response.close_delimited or not response.keep_alive or not leg.usable or leg.session.mux.peer_going_away
                or front.pipelined > 0)
        if drop:
            leg.finish()
    if drop and front.leg is leg:
        front.leg = None
    _end(front, ex, not ex.close)
