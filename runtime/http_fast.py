"""The proxy's fast path: a plain request (no body, no upgrade) run entirely in callbacks.

Most requests are GETs answered in one piece. Through the connection's coroutine
each costs two task wake-ups and an extra event-loop turn per direction; here the
request is routed and written to the tunnel from ``data_received``, and the
response written to the user from the stream's callback, as the TCP bridge does.
Anything else, or anything unusual before the request is sent (a refusal, a
stream without credit), is left to the coroutine (``FrontConnection._exchange``),
which stays parked meanwhile and takes over again after the exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .http_leg import Leg, LegFailed
from .http_options import HttpOptions
from .http_proto import LAST_CHUNK, Body, EndOfMessage, HttpError, RequestHead, ResponseHead, SimpleResponse, chunk

if TYPE_CHECKING:
    from .http_proxy import FrontConnection


class FastExchange:
    __slots__ = ("head", "leg", "options", "label", "started", "request", "response", "chunked", "close",
                 "out", "retried", "reused", "unreleased")

    def __init__(self, head: RequestHead, leg: Leg, options: HttpOptions, label: str, started: float,
                 request: bytes, reused: bool) -> None:
        self.head = head
        self.leg = leg
        self.options = options
        self.label = label
        self.started = started
        self.request = request  # kept to retry once on a fresh stream (no body: safe to resend)
        self.response: ResponseHead | None = None
        self.chunked = False
        self.close = False
        self.out: list[bytes] = []
        self.retried = False
        self.reused = reused
        self.unreleased = False  # credit held back while the user's socket drains


def eligible(head: RequestHead) -> bool:
    return not (head.chunked or head.content_length or head.upgrade or head.expect_continue)


def try_start(front: FrontConnection, head: RequestHead) -> bool:
    """Route and send ``head`` now; False leaves it to the coroutine (nothing was sent)."""
    server = front.server
    service, label = server.route(head.host)
    if service is None:
        return False
    leg = front._pick(service)
    if leg is None:
        return False
    options = server.options_for(leg.session)
    if options.protected and not options.authorized(head.noted.get(b"authorization", (None,))[0]):
        return False
    request = front._request_head(head, leg, options)
    if not _send_request(leg, request):
        return False
    reused = leg.received > 0
    leg.start_exchange(head.method == b"HEAD")
    front.fast = FastExchange(head, leg, options, label, front._loop.time(), request, reused)
    leg.listener = front
    server.exchanges.add(leg)
    return True


def _send_request(leg: Leg, request: bytes) -> bool:
    channel = leg.channel
    if channel.session.mux.send_window(channel.stream_id) < len(request):
        return False
    return leg.write_now(request) is None  # all or nothing here (the window was checked)


def progress(front: FrontConnection) -> None:
    """The leg has news for the exchange in flight: pass the response on, or end the exchange."""
    fast = front.fast
    if fast is None:
        return
    leg = fast.leg
    head = fast.head
    done = False
    out = fast.out
    events = leg.events
    while events:
        event = events.popleft()
        kind = type(event)
        if kind is Body:
            out.append(chunk(event.data) if fast.chunked else event.data)  # type: ignore[union-attr]
        elif kind is ResponseHead:
            response: ResponseHead = event  # type: ignore[assignment]
            if response.status >= 200:
                fast.response = response
                fast.chunked = response.chunked and head.version == b"1.1"
                fast.close = (not head.keep_alive or response.close_delimited
                              or (response.chunked and not fast.chunked))
                out.append(front._response_head(response, fast.options, fast.chunked, fast.close))
            elif response.status != 101 and head.version == b"1.1":
                out.append(front._response_head(response, fast.options, False, False))
        elif kind is EndOfMessage:
            if fast.chunked:
                out.append(LAST_CHUNK)
            done = True
            break
    if not done:
        failure = leg.failure
        if leg.timed_out or failure is not None or leg.eof:
            if fast.response is None:
                if leg.eof and failure is None and not leg.timed_out and fast.reused and not fast.retried:
                    _retry(front, fast)
                else:
                    _fail(front, fast, failure)
                return
            if not (leg.eof and failure is None and fast.response.close_delimited):
                _abort(front)  # cut mid-response: the user must see the connection fail
                return
            done = True
    transport = front.transport
    if transport is None:
        return
    if out:
        transport.write(b"".join(out))
        out.clear()
    if front._drain is None:
        leg.release()
    else:
        fast.unreleased = True  # released by ``resumed``
    if done:
        _finish(front, fast)


def resumed(front: FrontConnection) -> None:
    """The user's socket drained: hand the tunnel the credit held back."""
    fast = front.fast
    if fast is not None and fast.unreleased:
        fast.unreleased = False
        fast.leg.release()


def abandon(front: FrontConnection) -> None:
    """The user went away mid-exchange."""
    fast = front.fast
    if fast is not None:
        front.fast = None
        _detach(front, fast)


def _retry(front: FrontConnection, fast: FastExchange) -> None:
    """A kept-alive upstream closed as its stream was reused: once more on a fresh stream."""
    _detach(front, fast)
    leg = front._pick(fast.leg.service)
    if leg is None or not _send_request(leg, fast.request):
        _reply(front, fast, 502, "upstream closed the connection without answering")
        return
    leg.start_exchange(fast.head.method == b"HEAD")
    fast.leg, fast.retried, fast.reused = leg, True, False
    leg.listener = front
    front.server.exchanges.add(leg)


def _fail(front: FrontConnection, fast: FastExchange, failure: Exception | None) -> None:
    if fast.leg.timed_out:
        status, message = 504, f"upstream did not answer within {front.server.upstream_timeout:g}s"
    elif isinstance(failure, HttpError):
        status, message = failure.status, f"bad gateway: {failure}"
    else:
        status, message = 502, f"bad gateway: {failure or 'upstream closed the connection'}"
    _detach(front, fast)
    _reply(front, fast, status, message)


def _reply(front: FrontConnection, fast: FastExchange, status: int, message: str) -> None:
    from .http_proxy import REASONS

    front.fast = None
    transport = front.transport
    if transport is not None:
        body = SimpleResponse(status, (message + "\n").encode())
        transport.write(body.encode(REASONS.get(status, "Error"), True, fast.head.method == b"HEAD"))
        transport.close()
    front.server.observe(status, fast.label, fast.head.method, fast.started)


def _abort(front: FrontConnection) -> None:
    fast = front.fast
    if fast is not None:
        front.fast = None
        _detach(front, fast)
    if front.transport is not None:
        front.transport.abort()


def _detach(front: FrontConnection, fast: FastExchange) -> None:
    """The exchange failed: its leg goes (it cannot carry another request)."""
    leg = fast.leg
    leg.listener = None
    front.server.exchanges.discard(leg)
    leg.abort(LegFailed("exchange abandoned"))
    if front.leg is leg:
        front.leg = None


def _finish(front: FrontConnection, fast: FastExchange) -> None:
    leg = fast.leg
    leg.listener = None
    front.fast = None
    front.server.exchanges.discard(leg)
    response = fast.response
    assert response is not None
    front.server.observe(response.status, fast.label, fast.head.method, fast.started)
    if response.close_delimited or not response.keep_alive or not leg.usable:
        leg.finish()
        if front.leg is leg:
            front.leg = None
    if fast.close:
        if front.transport is not None:
            front.transport.close()
        return
    front.idle_since = front._loop.time()
    front._resume_requests()
