"""Sans-I/O stream multiplexer: many TCP-like streams over one message channel.

Modelled on h11 and the websockets library: a ``Multiplexer`` is fed the payloads
of websocket binary messages (``receive``), returns events, and queues the messages
to send (``next_message``: a message's pieces; ``data_to_send``: whole messages). It never touches a socket, so every rule below is
unit-tested without one. The wire format and the events are ``muxframe``'s; the queue of frames
to send, its packing into messages and the bound on control frames, ``muxqueue``'s.

Flow control is per stream and credit based, as in HTTP/2: a side may send DATA
only up to the credit the peer granted (``initial_window`` at open, then WINDOW
increments as the peer's application consumes). A slow reader therefore stalls
only its own stream; the shared websocket keeps moving. A peer that breaks a
limit (window, frame size, stream ids) gets ``ProtocolError``: the glue closes the
connection rather than trust it.

A receiver may also bound what all streams together can make it hold. Streams then
start with ``initial_recv_window`` of credit (the handshake's window) and double per
grant towards ``recv_window`` as their data is consumed, while the growth of all live
streams together (``grown``) stays within ``recv_budget``; a stream whose reader
stalls keeps what it had, and one that is consumed always gets its credit back. What
the peer can make the receiver hold, credit outstanding and bytes not yet consumed, is
then at most ``max_streams * initial_recv_window + recv_budget`` (and a byte a stream ``acknowledge`` may grant).
"""

from __future__ import annotations

from . import muxframe
from .muxframe import (
    _DATA,
    _FIN,
    _GOAWAY,
    _OPEN,
    _RESET,
    _WINDOW,
    MAX_REASON,
    MAX_STREAM_ID,
    MAX_TARGET,
    MAX_WINDOW,
    DataReceived,
    Event,
    FrameType,
    GoAway,
    ProtocolError,
    ResetCode,
    StreamEnded,
    StreamError,
    StreamLimit,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from .muxqueue import COALESCE_LIMIT, DEFAULT_MAX_CONTROL_BACKLOG, FrameQueue, max_message

#: The structs bound by assignment, not imported: CPython 3.11 compiles ``NAME.pack(...)`` on an imported
#: NAME as an attribute load and a call, making a bound method per frame (+1.3% instructions in the mux, measured).
HEADER, WINDOW_PAYLOAD, RESET_CODE = muxframe.HEADER, muxframe.WINDOW_PAYLOAD, muxframe.RESET_CODE

#: What ``mux`` offers, the wire format's names included: callers import all of it from here.
__all__ = [
    "COALESCE_LIMIT", "DEFAULT_INITIAL_WINDOW", "DEFAULT_MAX_CONTROL_BACKLOG", "DEFAULT_MAX_FRAME", "DEFAULT_MAX_STREAMS",
    "DEFAULT_WINDOW", "EMPTY_DATA_PER_MESSAGE", "HEADER", "ID_RESERVE", "MAX_REASON", "MAX_STREAM_ID", "MAX_TARGET",
    "MAX_WINDOW", "RESET_CODE", "VIEW_FROM", "WINDOW_PAYLOAD", "max_message", "DataReceived", "Event", "FrameType",
    "GoAway", "Multiplexer", "ProtocolError", "ResetCode", "StreamEnded", "StreamError", "StreamLimit", "StreamOpened",
    "StreamReset", "WindowUpdated",
]

DEFAULT_WINDOW = 2 * 1024 * 1024  # as OpenSSH's channel window: 1 MiB stalled single streams
#: Credit a new stream starts with when its receiver has a budget; it doubles per grant up to the window.
#: A burst of datagrams at a UDP flow's start must fit: what finds no credit is dropped.
DEFAULT_INITIAL_WINDOW = 256 * 1024
DEFAULT_MAX_FRAME = 256 * 1024
DEFAULT_MAX_STREAMS = 4096
#: DATA payloads from this size on may be passed on as views of their message (see ``_on_data``).
VIEW_FROM = 64 * 1024
#: Empty DATA frames one message may hand on (a UDP flow's datagrams of zero bytes); the rest are dropped, as UDP may
#: drop them. They cost the peer no credit: 1.86 million in one message held the loop for 3 s and built as many events.
EMPTY_DATA_PER_MESSAGE = 1024
#: Our stream ids left when ``ids_running_out`` says to replace the connection: they serve until the new one is up.
ID_RESERVE = 1 << 16


class _Stream:
    __slots__ = ("send_window", "recv_window", "recv_limit", "held", "unacked", "local_closed", "remote_closed")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window  # bytes we may still send
        self.recv_window = recv_window  # bytes the peer may still send us
        self.recv_limit = recv_window  # the window this stream has grown to
        self.held = 0  # received, not yet consumed by the application
        self.unacked = 0  # consumed by the application, not yet granted back
        self.local_closed = False
        self.remote_closed = False


class Multiplexer(FrameQueue):
    """One side of a multiplexed connection: its streams, their credit, and the frames they exchange
    (queued, and packed into messages, by ``FrameQueue``).

    The client opens odd stream ids, the server even ones, so both sides can open
    streams without coordination (remote and local forwarding).
    """

    def __init__(
        self,
        *,
        client: bool,
        recv_window: int = DEFAULT_WINDOW,
        send_window: int = DEFAULT_WINDOW,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_control_backlog: int = DEFAULT_MAX_CONTROL_BACKLOG,
        initial_recv_window: int | None = None,
        recv_budget: int | None = None,
    ) -> None:
        initial_recv_window = initial_recv_window or recv_window
        if not 0 < initial_recv_window <= recv_window <= MAX_WINDOW or not 0 < send_window <= MAX_WINDOW:
            raise ValueError("windows must be between 1 and 2**31-1, the initial one no larger")
        FrameQueue.__init__(self, max_control_backlog)
        self.recv_window = recv_window  # the most credit one stream may grow to
        self.initial_recv_window = initial_recv_window  # each new stream's credit (the handshake's window)
        self.recv_budget = recv_budget  # None: streams grow freely
        self.grown = 0  # how far live streams' windows grew beyond initial_recv_window, all together
        self.initial_send_window = send_window  # what the peer grants us per stream
        self.max_frame = max_frame
        self.max_streams = max_streams
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        self._peer_parity = 0 if client else 1
        self._peer_highest = 0
        self._peer_open = 0  # streams the peer opened that are still live
        self.peer_max_streams: int | None = None  # the streams the peer takes from us (its --max-streams), if it said
        self.going_away = False  # we sent GOAWAY
        self.peer_going_away = False  # the peer sent GOAWAY
        self._empty = 0  # empty DATA frames in the message being parsed (``EMPTY_DATA_PER_MESSAGE``)

    # ----------------------------------------------------------------- local calls

    def at_peer_limit(self) -> bool:
        """Whether the peer would refuse another stream of ours (TOO_MANY_STREAMS), by the limit it sent."""
        return self.peer_max_streams is not None and len(self._streams) - self._peer_open >= self.peer_max_streams

    def open_stream(self, target: str) -> int:
        if self.going_away or self.peer_going_away:
            raise StreamError("the connection is draining: no new streams")
        if len(self._streams) - self._peer_open >= self.max_streams:  # ours count as the peer's do: a server's
            raise StreamLimit(f"limit of {self.max_streams} open streams")  # --max-client-streams bounds its data plane
        raw = target.encode()
        if not raw or len(raw) > MAX_TARGET:
            raise ValueError(f"target must be 1..{MAX_TARGET} bytes")
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise StreamError("stream ids exhausted; reconnect")
        self._next_id += 2
        self._streams[stream_id] = _Stream(self.initial_send_window, self.initial_recv_window)
        self._queue(_OPEN, stream_id, raw)
        return stream_id

    @property
    def ids_running_out(self) -> bool:
        """Fewer than ``ID_RESERVE`` of our stream ids are left (2**31 a side, never reused): the connection must
        be replaced, as HTTP/2's are, before ``open_stream`` can open nothing more."""
        return self._next_id > MAX_STREAM_ID - ID_RESERVE

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as the peer's credit allows; returns that count."""
        stream = self._local_stream(stream_id)
        if stream.local_closed:
            raise StreamError(f"stream {stream_id} is closed for sending")
        count = min(len(data), stream.send_window)
        if count == len(data) <= self.max_frame and type(data) is bytes:
            self._queue(_DATA, stream_id, data)  # the common case: one read, one frame
        else:
            view = memoryview(data)
            if not isinstance(view.obj, bytes):
                view = memoryview(bytes(view[:count]))  # a buffer the caller may reuse: queue a copy
            sent = 0
            while sent < count:
                chunk = view[sent : min(count, sent + self.max_frame)]
                self._queue(_DATA, stream_id, chunk)
                sent += len(chunk)
        stream.send_window -= count
        return count

    def send_datagram(self, stream_id: int, data: bytes) -> bool:
        """Queue all of ``data`` in one DATA frame, or none of it (a part of a datagram is a corrupt one)."""
        stream = self._local_stream(stream_id)
        if stream.local_closed or len(data) > stream.send_window or len(data) > self.max_frame:
            return False
        self._queue_datagram(stream_id, data)
        stream.send_window -= len(data)
        return True

    def send_eof(self, stream_id: int) -> None:
        stream = self._local_stream(stream_id)
        if stream.local_closed:
            return
        stream.local_closed = True
        self._queue(_FIN, stream_id, b"")
        self._maybe_forget(stream_id, stream)

    def reset_stream(self, stream_id: int, code: int = int(ResetCode.CANCEL), reason: str = "") -> None:
        """Abort a stream both ways. Resetting a stream already gone is a no-op."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._forgotten(stream_id, stream)
        self._queue_reset(stream_id, code, reason)

    def go_away(self, reason: str = "") -> None:
        """Drain: ask the peer to open no new streams. Streams it opens meanwhile are still served."""
        if not self.going_away:
            self.going_away = True
            self._queue(_GOAWAY, 0, reason.encode()[:MAX_REASON])

    def consumed(self, stream_id: int, count: int) -> None:
        """The application took ``count`` bytes of this stream: grant that credit back, and more
        while the stream is below its full window and the budget has room."""
        stream = self._streams.get(stream_id)
        if stream is None or count <= 0:
            return
        count = min(count, stream.held)
        stream.held -= count
        if stream.remote_closed:
            return
        stream.unacked += count
        # Grant in batches: one WINDOW frame per quarter window, not per read.
        if stream.unacked >= stream.recv_limit // 4:
            grant = stream.unacked
            grow = min(stream.recv_limit, self.recv_window - stream.recv_limit)
            if self.recv_budget is not None:
                grow = min(grow, self.recv_budget - self.grown)
            if grow > 0:
                stream.recv_limit += grow
                self.grown += grow
                grant += grow
            self._queue(_WINDOW, stream_id, WINDOW_PAYLOAD.pack(grant))
            stream.recv_window += grant
            stream.unacked = 0

    def acknowledge(self, stream_id: int) -> None:
        """Say our dial for the peer's stream worked, before the upstream says a word (an idle pool connection never
        draws one): a WINDOW frame, which every peer takes, granting what was consumed, else one byte. None after
        the peer's FIN (``consumed`` grants nothing then either)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        grant = stream.unacked or 1
        if stream.recv_window + grant > MAX_WINDOW:
            return
        self._queue(_WINDOW, stream_id, WINDOW_PAYLOAD.pack(grant))
        stream.recv_window += grant
        stream.unacked = 0

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    # ------------------------------------------------------------------ peer input

    def receive(self, message: bytes | memoryview) -> list[Event]:
        """Parse one message from the peer. Raises ``ProtocolError`` on any violation."""
        events: list[Event] = []
        view = memoryview(message)
        offset = 0
        end = len(view)
        if end == 0:
            raise ProtocolError("empty message")
        self._refused = self._empty = 0  # frames of this message that cost us work and the peer nothing
        while offset < end:
            if end - offset < HEADER.size:
                raise ProtocolError("truncated frame header")
            ftype, stream_id, length = HEADER.unpack_from(view, offset)
            offset += HEADER.size
            if length > end - offset:
                raise ProtocolError("truncated frame payload")
            payload = view[offset : offset + length]
            offset += length
            self._receive_frame(ftype, stream_id, payload, events)
        return events

    def _receive_frame(self, ftype: int, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if (stream_id == 0) != (ftype == _GOAWAY):
            raise ProtocolError("stream id 0 is for GOAWAY, and GOAWAY only")
        if ftype == _DATA:
            self._on_data(stream_id, payload, events)
        elif ftype == _WINDOW:
            self._on_window(stream_id, payload, events)
        elif ftype == _OPEN:
            self._on_open(stream_id, payload, events)
        elif ftype == _FIN:
            self._on_fin(stream_id, payload, events)
        elif ftype == _RESET:
            self._on_reset(stream_id, payload, events)
        elif ftype == _GOAWAY:
            if len(payload) > MAX_REASON:
                raise ProtocolError("GOAWAY reason too long")
            if not self.peer_going_away:
                self.peer_going_away = True
                events.append(GoAway(bytes(payload).decode(errors="replace")))
        else:
            raise ProtocolError(f"unknown frame type {ftype}")

    def _on_open(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if stream_id % 2 != self._peer_parity or stream_id <= self._peer_highest:
            raise ProtocolError(f"bad stream id {stream_id} in OPEN")
        if not 0 < len(payload) <= MAX_TARGET:
            raise ProtocolError("OPEN target length out of range")
        try:
            target = bytes(payload).decode()
        except UnicodeDecodeError:
            raise ProtocolError("OPEN target is not utf-8") from None
        self._peer_highest = stream_id
        if self._peer_open >= self.max_streams:
            self._refuse(stream_id, self.max_streams)
            return
        self._peer_open += 1
        self._streams[stream_id] = _Stream(self.initial_send_window, self.initial_recv_window)
        events.append(StreamOpened(stream_id, target))

    def _on_data(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if len(payload) > self.max_frame:
            raise ProtocolError(f"DATA frame of {len(payload)} bytes exceeds {self.max_frame}")
        stream = self._peer_stream(stream_id)
        if stream is None:
            return  # raced with our RESET: drop
        if stream.remote_closed:
            raise ProtocolError(f"DATA after FIN on stream {stream_id}")
        size = len(payload)
        if not size:  # a datagram of zero bytes on a UDP flow (the session drops it for a byte stream); no credit
            self._empty += 1
            if self._empty <= EMPTY_DATA_PER_MESSAGE:
                events.append(DataReceived(stream_id, b""))
            return
        if size > stream.recv_window:
            raise ProtocolError(f"stream {stream_id} exceeded its flow-control window")
        stream.recv_window -= size
        stream.held += size
        # A bulk stream's frame is most of its message: passed on as a view of it, not copied. Anything else
        # is copied: a small payload costs less as bytes to the loop's write than as a view, and what a slow
        # reader holds then keeps at most twice its credit alive, never another stream's message.
        keep = size >= VIEW_FROM and 2 * size >= len(payload.obj)  # type: ignore[arg-type]
        events.append(DataReceived(stream_id, payload if keep else bytes(payload)))

    def _on_window(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if len(payload) != WINDOW_PAYLOAD.size:
            raise ProtocolError("WINDOW payload must be 4 bytes")
        (increment,) = WINDOW_PAYLOAD.unpack(payload)
        if increment == 0:
            raise ProtocolError("WINDOW increment of 0")
        stream = self._peer_stream(stream_id)
        if stream is None:
            return
        if stream.send_window + increment > MAX_WINDOW:
            raise ProtocolError(f"stream {stream_id} window overflow")
        was_blocked = stream.send_window == 0
        stream.send_window += increment
        if not stream.local_closed or was_blocked:
            events.append(WindowUpdated(stream_id))

    def _on_fin(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if len(payload):
            raise ProtocolError("FIN carries no payload")
        stream = self._peer_stream(stream_id)
        if stream is None:
            return
        if stream.remote_closed:
            raise ProtocolError(f"second FIN on stream {stream_id}")
        stream.remote_closed = True
        events.append(StreamEnded(stream_id))
        self._maybe_forget(stream_id, stream)

    def _on_reset(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if not RESET_CODE.size <= len(payload) <= RESET_CODE.size + MAX_REASON:
            raise ProtocolError("RESET payload length out of range")
        (code,) = RESET_CODE.unpack_from(payload)
        reason = bytes(payload[RESET_CODE.size :]).decode(errors="replace")
        stream = self._peer_stream(stream_id)
        if stream is None:
            return
        del self._streams[stream_id]
        self._forgotten(stream_id, stream)
        events.append(StreamReset(stream_id, code, reason))

    # ------------------------------------------------------------------- internals

    def _peer_stream(self, stream_id: int) -> _Stream | None:
        """The live stream, or None for one that existed and is gone (a benign race).

        A frame for a stream that never existed is a protocol error.
        """
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id % 2 == self._peer_parity:
            known = stream_id <= self._peer_highest
        else:
            known = stream_id < self._next_id
        if not known:
            raise ProtocolError(f"frame for unknown stream {stream_id}")
        return None

    def _local_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamError(f"stream {stream_id} is not open")
        return stream

    def _maybe_forget(self, stream_id: int, stream: _Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            del self._streams[stream_id]
            self._forgotten(stream_id, stream)

    def _forgotten(self, stream_id: int, stream: _Stream) -> None:
        self.grown -= stream.recv_limit - self.initial_recv_window
        if stream_id % 2 == self._peer_parity:
            self._peer_open -= 1


