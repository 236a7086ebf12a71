"""The upstream leg of a proxied HTTP connection: one tunnel stream to a client.

A ``Leg`` is the stream's handler: bytes from the client's upstream are parsed as
they arrive (``ResponseReader``) and queued as events for the proxy coroutine.
Credit goes back to the peer only once the proxy has passed the bytes on to the
user (``release``), so a slow user stalls this stream and nothing else, and the
queue never holds more than the stream window.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol

from ..core.logs import logfmt
from ..core.services import shown_service
from .messages import Body, Event, HttpError, Upgraded
from .response_reader import ResponseReader
from ..core.mux import ResetCode, StreamError
from ..core.channel import Channel
from ..core.session import Session
from ..server.registry import credited, reached

log = logging.getLogger("inlets.http")


class LegFailed(Exception):
    """The stream was reset (client gone, upstream refused) or the upstream broke HTTP.

    ``str()`` is for the user's 502; ``detail`` is what the tunnel client said (it names the
    upstream's address), for the log only.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


#: What a user is told when the tunnel client resets the stream: never the client's own reason.
RESET_MESSAGES: dict[int, str] = {
    ResetCode.REFUSED: "the tunnel client could not reach its upstream (the client's log says why)",
    ResetCode.NOT_ALLOWED: "the tunnel client does not serve this host",
    ResetCode.TOO_MANY_STREAMS: "the tunnel client has too many streams open",
}


class Listener(Protocol):
    """Who hears of a leg's news while an exchange runs on it (``front.FrontConnection``)."""

    drain: asyncio.Future | None  # set while the user's socket is full (the server's sweep waits then)

    def on_leg(self) -> None: ...


class UpstreamTimeout(Exception):
    """Nothing moved on the exchange for the configured timeout."""


class Leg:
    __slots__ = ("session", "service", "channel", "reader", "events", "eof", "failure", "raw", "timed_out",
                 "_waiter", "_writable", "_unconsumed", "received", "last_activity", "_loop", "listener", "refused",
                 "request_ended", "unreachable", "dropped")

    def __init__(self, session: Session, service: str) -> None:
        self.session = session
        self.service = service
        self.reader = ResponseReader()
        self.events: collections.deque[Event] = collections.deque()
        self.eof = False
        self.failure: Exception | None = None
        self.raw = False  # after 101 Switching Protocols: bytes pass as they are
        self.timed_out = False
        self.refused = False  # the client refused the stream (its --max-streams): the request never reached the upstream
        self.unreachable = False  # the client could not dial its upstream: nothing of the request reached one
        #: The client's connection to the upstream was lost (a reset, not a FIN) before a byte of the answer: an idle
        #: kept-alive upstream connection that closed with the next request unread in its socket is reset so.
        self.dropped = False
        self.received = 0  # bytes received in the current exchange
        self.request_ended = False  # the user's FIN went upstream (``end_request``): no other request follows
        self._waiter: asyncio.Future | None = None
        self._writable: asyncio.Future | None = None
        self._unconsumed = 0
        #: The connection whose exchange this leg answers (``on_leg``); None: a coroutine waits (``next_event``).
        self.listener: Listener | None = None
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self.channel: Channel = session.open_stream(service, self)  # StreamError when it cannot

    # ------------------------------------------------------- StreamHandler

    def on_data(self, data: bytes | memoryview) -> None:
        self._unconsumed += len(data)
        self.received += len(data)
        self.last_activity = self._loop.time()
        if self.raw:
            self.events.append(Body(data))
        elif self.failure is None:
            try:
                events = self.reader.feed(data)
            except HttpError as exc:
                self.failure = exc
                self.events.extend(exc.complete)  # answered; the failure keeps the stream from being reused
            else:
                self.events.extend(events)
                if events and isinstance(events[-1], Upgraded):
                    self.raw = True
        self._wake()

    def on_eof(self) -> None:
        self.eof = True
        self._wake()

    def on_reset(self, code: int, reason: str) -> None:
        if self.failure is None:
            log.debug("event=stream_reset service=%s code=%d reason=%s", logfmt(shown_service(self.service)), code, logfmt(reason))
            self.failure = LegFailed(RESET_MESSAGES.get(code, "the tunnel stream was reset"), reason)
            self.refused = code == ResetCode.TOO_MANY_STREAMS and not self.received
            self.unreachable = code == ResetCode.REFUSED and not self.received
            self.dropped = code == ResetCode.CANCEL and not self.received
        self._wake()
        self._wake_writer()

    def on_writable(self) -> None:
        session = self.session
        if (session.unreachable or session.silent) and credited(self.channel):  # the client's dial worked (it
            reached(session, self.service)  # acknowledges each one), as an answer shows: a long poll's may take minutes
        self._wake_writer()

    # ------------------------------------------------------------- proxy side

    @property
    def usable(self) -> bool:
        """Can carry another request (kept alive, nothing pending, client still there). Not once bytes came after
        the answer, even the beginning of a head (``reader.in_head``): the next answer would be read on after them,
        so an upstream whose Content-Length fell short set the next request's status and headers (RFC 9112 6.3:
        such bytes are never a response)."""
        return (not self.eof and not self.request_ended and self.failure is None and not self.raw and not self.events
                and not self.reader.in_head and not self.session.closed.is_set() and self.channel.is_open)

    def start_exchange(self, head_request: bool, upgrade: bool = False) -> None:
        self.reader.expect(head_request, upgrade)
        self.received = 0
        self.timed_out = False
        self.last_activity = self._loop.time()

    async def next_event(self) -> Event | None:
        """The next response event; ``None`` when the upstream closed. Raises on failure."""
        while not self.events:
            if self.timed_out:
                raise UpstreamTimeout()
            if self.failure is not None:
                raise self.failure
            if self.eof:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.events.popleft()

    def release(self) -> None:
        """The user took everything parsed so far: give the credit back."""
        if self._unconsumed:
            count, self._unconsumed = self._unconsumed, 0
            self.channel.consumed(count)

    def write_now(self, data: bytes) -> memoryview | None:
        """Queue what credit allows, synchronously; returns what is left (``None``: all of it went)."""
        if self.failure is not None or self.timed_out:
            return memoryview(data)  # ``write`` raises the reason
        try:
            count = self.channel.write(data)
        except StreamError:
            return memoryview(data)
        if count == len(data):
            self.last_activity = self._loop.time()
            return None
        return memoryview(data)[count:]

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while True:
            if self.failure is not None:
                raise self.failure
            if self.timed_out:
                raise UpstreamTimeout()
            try:
                count = self.channel.write(view)
            except StreamError as exc:
                raise LegFailed("the tunnel stream closed", str(exc)) from None
            if count == len(view):
                break
            view = view[count:]
            self._writable = self._loop.create_future()
            try:
                await self._writable
            finally:
                self._writable = None
        self.last_activity = self._loop.time()

    def fire_timeout(self) -> None:
        self.timed_out = True
        self._wake()
        self._wake_writer()

    def abort(self, failure: Exception) -> None:
        """Give up on this stream: the exchange in progress fails with ``failure``."""
        if self.failure is None:
            self.failure = failure
        if self.channel.is_open:
            self.channel.reset(ResetCode.CANCEL, str(failure)[:200])
        self._wake()
        self._wake_writer()

    def end_request(self) -> None:
        """The user closed its side with nothing more to send: half-close the upstream too, so an upstream
        waiting to answer (a long poll) sees its user leave and can stop, as nginx cuts it then. Without it,
        an abandoned request held its upstream connection, and a client stream, until the upstream answered."""
        if self.channel.is_open and not self.request_ended:
            self.request_ended = True
            self.channel.write_eof()

    def finish(self) -> None:
        """Done with this stream: half-close when it is idle, else reset it."""
        if self.channel.is_open:
            if self.usable:
                self.channel.write_eof()
            else:
                self.channel.reset(ResetCode.CANCEL, "proxy closed the exchange")

    def _wake(self) -> None:
        if self.listener is not None:
            self.listener.on_leg()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
