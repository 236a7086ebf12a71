"""Asyncio glue between one websocket and the sans-I/O ``Multiplexer``.

A ``Session`` takes the websocket's binary messages as callbacks (``wsflow``), feeds
them to the multiplexer and dispatches the events to each stream's handler; a single
writer, run as loop callbacks, sends what the multiplexer queued. Stream handlers are plain callback objects
(``StreamHandler``), so a TCP socket can be bridged without a coroutine per direction
(see ``bridge.py``), and a message is handled in the loop turn it arrives in.

A peer that does not read is not read from: the writer takes one message at a time,
so what waits stays counted in the multiplexer, and while it is ``backlogged`` the
transport's reading is paused. Only traffic a peer that reads nothing could not keep up counts
as a sign of life (``_dispatch``), so a peer repeating GOAWAY, empty DATA, or credit for bytes
it was not sent, or sending frames for streams long gone, still has to answer pings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .channel import OUT_HIGH_WATER, OUT_LOW_WATER, Channel, StreamHandler
from .keepalive import Keepalive
from .logs import logfmt
from .mux import (
    DataReceived,
    GoAway,
    Multiplexer,
    ProtocolError,
    ResetCode,
    StreamEnded,
    StreamError,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from .wsflow import BoundedConnection

log = logging.getLogger("inlets.session")

#: How soon a stream whose dial worked is acknowledged when its upstream has not answered (``Channel.acknowledge``):
#: well within the server's SILENT_FOR (0.5 s), past most answers on a LAN, which acknowledge it themselves.
ACK_DELAY = 0.05
RETIRE_TIMEOUT = 30.0  # how long a session out of stream ids lets its streams finish (--drain-timeout's default)

_RUNNING, _DRAINING, _STOPPED = object(), object(), object()  # the writer's states besides idle and scheduled


class Session(Keepalive):
    """A live tunnel connection: one websocket carrying many streams."""

    def __init__(
        self,
        websocket: BoundedConnection,
        mux: Multiplexer,
        *,
        on_stream: Callable[[Channel], None] | None = None,
        name: str = "",
        keepalive: float | None = None,
    ) -> None:
        self.websocket = websocket
        self.mux = mux
        self.on_stream = on_stream
        self.name = name
        self.channels: dict[int, Channel] = {}
        self.closed = asyncio.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The writer's state: None idle, a Handle while a send is scheduled, or one of _RUNNING, _DRAINING
        #: (the websocket's send buffer is full: ``resume_writing`` sends on) and _STOPPED (also before ``run``).
        self._sending: object = _STOPPED
        self._backlog_paused = False  # reading paused until the writer works the backlog off
        self._closing: asyncio.Future | None = None  # the close after a protocol error
        self._blocked: set[Channel] = set()
        self._close_reason = ""
        self.keepalive = keepalive
        self._last_rx = 0.0
        #: Called once when the peer drains (GOAWAY): stop routing new streams here.
        self.on_goaway: Callable[[Session], None] | None = None
        #: Called once when our stream ids run low: replace this session (see ``_retire``).
        self.on_retire: Callable[[Session], None] | None = None
        self._retired: object = None  # True, or the drain that retires it
        #: The services whose upstream this peer could not dial, and until when (``time.monotonic``) it is tried after
        #: others for them (the server's TCP data plane notes them: ``registry.unreachable``)
        self.unreachable: dict[str, float] = {}
        #: The services for which a stream opened on this peer waits for its first answer, none answered since, and
        #: since when (``time.monotonic``; ``registry.opened``)
        self.silent: dict[str, float] = {}
        #: HTTP: the services whose requests on this peer got no answer within the upstream timeout, how many in a row
        #: (``registry.timed_out``), and past ``EJECT_AFTER`` until when it is tried after others for them
        self.timeouts: dict[str, int] = {}
        self.ejected: dict[str, float] = {}
        #: The UDP flows on this peer, all ports together (the server's: ``server/udp``; the client's: ``TcpUpstreams``):
        #: at most half its streams
        self.udp_flows = 0
        self._acks: list[Channel] = []  # streams whose dial worked, acknowledged at ACK_DELAY unless answered by then
        self._ack_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the session until the websocket closes; then reset every stream."""
        self._loop = asyncio.get_running_loop()
        self._sending = None
        self.websocket.on_drained = self._drained
        self._last_rx = time.monotonic()  # before ``attach`` hands over messages that came early
        self._flush()  # what was queued before
        watchdog = asyncio.create_task(self._watchdog()) if self.keepalive else None
        try:
            self.websocket.attach(self._on_message, self._on_bad_message)
            await self.websocket.wait_closed()
        finally:
            self._stop_sending()
            if watchdog is not None:
                watchdog.cancel()
            self.teardown(self._close_reason or "tunnel connection closed")

    def _on_message(self, message: bytes | memoryview) -> None:
        """One binary message from the peer, in the loop turn it arrived in."""
        try:
            events = self.mux.receive(message)
        except ProtocolError as exc:
            self._on_bad_message(f"protocol error: {exc}")
            return
        if events and self._dispatch(events):
            self._last_rx = time.monotonic()
        self._flush()
        if self.mux.backlogged and not self._backlog_paused:
            self._until_drained()

    def _on_bad_message(self, reason: str) -> None:
        """Close with 1002 and reset every stream now: no frame of the peer's is read any more, so its users would
        otherwise wait out the close timeout (5 s) for a peer that may never answer the close."""
        log.warning("event=protocol_error session=%s error=%s", self.name, logfmt(reason))
        self._close_reason = reason
        self.websocket.discard_messages()
        self._closing = asyncio.ensure_future(self.websocket.close(1002, reason[:120]))
        self.teardown(reason)

    def teardown(self, reason: str) -> None:
        """Reset every stream (``run`` ends so; the server, for a session that never ran: its welcome not taken)."""
        if self.closed.is_set():
            return
        self.closed.set()
        for channel in list(self.channels.values()):
            handler = channel.handler
            self.channels.pop(channel.stream_id, None)
            if handler is not None:
                handler.on_reset(ResetCode.CANCEL, reason)

    def _until_drained(self) -> None:
        """Read nothing more until the peer has read enough of what we owe it (the writer resumes)."""
        log.warning("event=peer_not_reading session=%s queued=%d action=reading_paused", self.name, self.mux.buffered)
        self._backlog_paused = True
        self.websocket.gate.hold("backlog")

    def go_away(self, reason: str = "") -> None:
        """Tell the peer to open no new streams here; open streams carry on."""
        if not self.closed.is_set():
            self.mux.go_away(reason)
            self._flush()

    async def drain(self, timeout: float, reason: str = "draining") -> None:
        """GOAWAY, wait up to ``timeout`` seconds for open streams to finish, then close."""
        self.go_away(reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.channels or self.mux.buffered) and not self.closed.is_set() and loop.time() < deadline:
            await asyncio.sleep(0.02)  # also until GOAWAY and the last frames are on the wire
        if self.channels:
            log.warning("event=drain_timeout session=%s open_streams=%d", self.name, len(self.channels))
        await self.close(1001, reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.websocket.close(code, reason)

    # -------------------------------------------------------------------- streams

    def open_stream(self, target: str, handler: StreamHandler) -> Channel:
        """Open a stream to the peer. Refused (``StreamError``: callers try another client) from the moment the
        connection starts closing (our protocol error, the library's), not only once it closed: the peer may never
        answer the close, and streams opened meanwhile went nowhere (nothing is sent after a close frame) until
        the close timeout or keepalive."""
        if self.closed.is_set() or self._closing is not None or self.websocket.closing:
            raise StreamError("session is closed")
        stream_id = self.mux.open_stream(target)
        channel = Channel(self, stream_id, target)
        channel.handler = handler
        self.channels[stream_id] = channel
        self._flush()
        if self.mux.ids_running_out and self._retired is None:
            self._retire()
        return channel

    def _retire(self) -> None:
        """Replace a session whose stream ids run low: at their end it refused every stream, and nothing reconnected.
        ``on_retire`` (the client) connects anew and drains this one; else (the server) GOAWAY asks the peer to."""
        log.warning("event=stream_ids_exhausted session=%s open_streams=%d", self.name, len(self.channels))
        if self.on_retire is not None:
            self._retired = True
            self.on_retire(self)
        else:  # and close once the open streams finish, if the peer does not
            self._retired = asyncio.ensure_future(self.drain(RETIRE_TIMEOUT, "stream ids exhausted: reconnect"))

    @property
    def open_streams(self) -> int:
        return len(self.channels)

    # ----------------------------------------------------------------- internals

    def _dispatch(self, events: list) -> bool:
        """Hand the events to the streams; whether one is a sign of life. Empty DATA and credit for bytes we did
        not send since the last credit that counted are not: a peer that reads nothing can send them without end
        (it was served for as long as it sent them, its pings unanswered)."""
        alive = False
        for event in events:
            channel = self.channels.get(event.stream_id)
            try:
                if isinstance(event, DataReceived):
                    if event.data:
                        alive = True
                    if channel is not None:
                        size = len(event.data)
                        channel.bytes_in += size
                        self.bytes_in += size
                        handler = channel.handler
                        # An empty DATA frame means something only to a datagram flow; a byte stream ignores it
                        # (a bridge still dialling would otherwise queue any number of them, none costing credit).
                        if handler is not None and (size or getattr(handler, "datagrams", False)):
                            handler.on_data(event.data)
                elif isinstance(event, WindowUpdated):
                    if channel is not None and channel.out_at_credit != channel.bytes_out:
                        channel.out_at_credit = channel.bytes_out
                        alive = True
                    if channel is not None and channel.handler is not None:
                        channel.handler.on_writable()
                else:
                    alive = True  # a stream opened, ended or reset, or GOAWAY: once each at most
                    if isinstance(event, StreamOpened):
                        if self.keepalive and time.monotonic() - self._last_rx > self.keepalive:
                            self._found_stale()  # opened before the peer gave us up: acted on, it ran twice
                            return False
                        channel = Channel(self, event.stream_id, event.target)
                        self.channels[event.stream_id] = channel
                        if self.on_stream is None:
                            self._reset(channel, ResetCode.NOT_ALLOWED, "this side accepts no streams")
                        else:
                            self.on_stream(channel)
                    elif isinstance(event, StreamEnded):
                        if channel is not None:
                            if not self.mux.is_open(event.stream_id):
                                self.channels.pop(event.stream_id, None)
                            if channel.handler is not None:
                                channel.handler.on_eof()
                    elif isinstance(event, GoAway):
                        log.info("event=peer_draining session=%s reason=%s", self.name, logfmt(event.reason))
                        if self.on_goaway is not None:
                            self.on_goaway(self)
                    elif isinstance(event, StreamReset):
                        self.channels.pop(event.stream_id, None)
                        if channel is not None:
                            self._blocked.discard(channel)
                            if channel.handler is not None:
                                channel.handler.on_reset(event.code, event.reason)
            except Exception:  # one stream's failure must not take the tunnel down
                log.exception("event=stream_handler_failed session=%s stream=%d", self.name, event.stream_id)
                if channel is not None:
                    self._reset(channel, ResetCode.INTERNAL, "internal error")
        return alive

    def _write(self, channel: Channel, data: bytes | memoryview) -> int:
        if self.mux.buffered >= OUT_HIGH_WATER:
            self._blocked.add(channel)
            return 0
        try:
            count = self.mux.send_data(channel.stream_id, data)
        except StreamError:
            return 0
        if count:
            channel.bytes_out += count
            self.bytes_out += count
            self._flush()
        elif not data:  # an empty datagram: its frame is queued, and goes now
            self._flush()
        return count

    def _write_datagram(self, channel: Channel, data: bytes) -> bool:
        try:
            if not self.mux.send_datagram(channel.stream_id, data):
                return False
        except StreamError:
            return False
        channel.bytes_out += len(data)
        self.bytes_out += len(data)
        self._flush()
        return True

    def _write_eof(self, channel: Channel) -> None:
        try:
            self.mux.send_eof(channel.stream_id)
        except StreamError:
            return
        if not self.mux.is_open(channel.stream_id):
            self.channels.pop(channel.stream_id, None)
        self._flush()

    def _reset(self, channel: Channel, code: int, reason: str) -> None:
        self.channels.pop(channel.stream_id, None)
        self._blocked.discard(channel)
        if not self.closed.is_set():
            self.mux.reset_stream(channel.stream_id, code, reason)
            self._flush()

    def _consumed(self, channel: Channel, count: int) -> None:
        self.mux.consumed(channel.stream_id, count)
        if self.mux.buffered:
            self._flush()

    def _ack_soon(self, channel: Channel) -> None:
        """One timer for every stream dialled within ``ACK_DELAY``: sent at once, each acknowledgement was a message,
        a TLS record and a send of its own before the upstream's answer (+4% and +6% instructions a connection)."""
        self._acks.append(channel)
        if self._ack_timer is None:
            self._ack_timer = (self._loop or asyncio.get_running_loop()).call_later(ACK_DELAY, self._send_acks)

    def _send_acks(self) -> None:
        """Acknowledge the streams that sent nothing back yet (an idle pool's connection, a slow answer)."""
        self._ack_timer = None
        acks, self._acks = self._acks, []
        for channel in acks:
            if not channel.bytes_out:
                self.mux.acknowledge(channel.stream_id)  # nothing for a stream gone meanwhile
        self._flush()

    def _flush(self) -> None:
        """Send what the multiplexer queued, two loop turns from now.

        The second turn lets frames queued by this turn's I/O (a new connection's OPEN and its first
        bytes, replies of many streams) leave as one message, one TLS record and one send, rather
        than one each. Plain callbacks, not a task waking on an event: a task step and a future per
        send cost more than the send's own Python work (measured: see the commit)."""
        if self._sending is None:
            loop = self._loop
            self._sending = loop.call_soon(loop.call_soon, self._send)  # type: ignore[union-attr]

    def _send(self) -> None:
        """Send one message at a time: what waits stays in the multiplexer, under its bounds."""
        if self._sending is _STOPPED:
            return
        mux, websocket = self.mux, self.websocket
        self._sending = _RUNNING  # frames queued meanwhile leave in this loop
        try:
            while message := mux.next_message():
                if not websocket.write_binary(*message):
                    self._stop_sending()  # the closing handshake began: no data may follow the close frame
                    return
                if self._backlog_paused and not mux.backlogged:  # below half the bound again
                    self._backlog_paused = False
                    websocket.gate.release("backlog")
                if self._blocked and mux.buffered < OUT_LOW_WATER:
                    blocked, self._blocked = self._blocked, set()
                    for channel in blocked:
                        if channel.handler is not None and channel.stream_id in self.channels:
                            channel.handler.on_writable()
                if websocket.paused:  # the library's flow control, as its send() would wait
                    self._sending = _DRAINING
                    return
        except OSError:
            self._stop_sending()  # the connection died: the reader sees it too
            return
        if self._sending is _RUNNING:
            self._sending = None

    def _drained(self) -> None:
        """The websocket's send buffer drained (``resume_writing``): send on."""
        if self._sending is _DRAINING:
            self._send()

    def _stop_sending(self) -> None:
        sending = self._sending
        if isinstance(sending, asyncio.Handle):
            sending.cancel()
        self._sending = _STOPPED
        if self._backlog_paused:  # nothing more will be sent: read again, so that the close completes
            self._backlog_paused = False
            self.websocket.gate.release("backlog")
