"""The tunnel's websocket connections: the library's, with the tunnel's own frame path, and no
reading from a peer that does not read our replies.

The tunnel's binary messages bypass the library both ways (``wsframe``): ``write_binary``
writes one frame, and the writer stops while the send buffer is over its high-water mark (as the
library's send would wait in ``drain``) until ``on_drained``; from the
end of the opening handshake, a ``FrameReader`` splits what arrives, binary messages go to the
handler ``attach`` set (held, with reading paused, until there is one) and all other frames go
to the library whole: hello and welcome, pings, pongs, the closing handshake, protocol errors.

The websockets library answers each ping with a pong as it reads, whatever the state of
the send buffer: a peer that sends pings and never reads grows our memory by a pong per
ping. These connections count the replies queued while the send buffer is over its
high-water mark; past ``REPLY_LIMIT`` bytes they pause reading until the buffer drains
(the peer read). Honest peers ping once per keepalive interval, far below the limit, so
two honest ends busy writing to each other never both stop reading.

Reading is paused while any reason holds: the library's own (its queue of received messages
is full), ours (replies, a backlog, messages nobody takes yet, a turn used up), so none resumes
what another paused.

One connection does not hold the loop: the event loop reads a socket up to 32 times per turn
(libuv), and messages packed with tiny frames cost the session ~1 us per frame, so one client
flooding them held the loop for ~1 s per turn and stalled every other client's streams. Once a
connection has handed its session ``TURN_BYTES`` of frames it pauses reading until the next loop
turn (``call_soon``): others get theirs in between. Counted per read, not per message or frame.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

from websockets.asyncio.connection import Connection
from websockets.protocol import Side, State

from .wsframe import PAYLOAD, RAW_DATA, WRITE_APART_FROM, FrameReader, MaskKeys, binary_frame, frame_buffers

#: Bytes of pongs (and other automatic replies) that may wait behind a full send buffer.
REPLY_LIMIT = 64 * 1024
#: Bytes of frames one connection hands its session before it lets the loop serve others: about one
#: read (uvloop reads up to 256 KiB), so a turn costs at most a read's worth of tiny frames (~30 ms).
TURN_BYTES = 256 * 1024
#: Looked at per message sent: a module global, as reading a member off an enum class costs CPython 3.11
#: ~950 instructions (a descriptor call), a global ~50 (measured).
_OPEN = State.OPEN


class ReadGate:
    """Pauses a transport's reading while at least one reason holds."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()


#: Why a session closes on a text or fragmented websocket message, whenever it comes.
NOT_BINARY = "a text or fragmented message (the tunnel sends whole binary messages)"


class BoundedReplies:
    """Mixin for a websockets connection (asyncio protocol): see the module docstring. Each end mixes
    it into its own class (``server.admission``, ``client.dialer``), so neither imports the other's:
    the library's client module brings python-socks, which a server never uses."""

    transport: asyncio.Transport
    paused: bool  # the library's flag: the send buffer is over its high-water mark
    gate: ReadGate

    #: The message handler (``attach``); a message it receives raises nothing (its own errors are its own).
    on_message: Callable[[bytes | memoryview], None] | None = None
    #: Called instead when the peer sends a message other than an unfragmented binary one.
    on_bad_message: Callable[[str], None] | None = None
    #: Called when the send buffer drained below its low-water mark (the session's writer sends on).
    on_drained: Callable[[], None] | None = None
    #: Called when the peer's first message is binary (a tunnel's hello is text): the server refuses it at once,
    #: rather than holding it unread for a session that never starts while the hello timeout runs out.
    on_binary_first: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        client = self.protocol.side is Side.CLIENT  # type: ignore[attr-defined]
        self._masks = MaskKeys() if client else None
        self.gate = ReadGate(self.transport)
        self._waiting_replies = 0
        self._reader: FrameReader | None = None  # from the end of the opening handshake
        self._bulk_reads: BulkReads | None = None  # the transport's protocol while large frames arrive
        self._tail = b""  # the last bytes of the handshake so far: its end may span two reads
        self._early: deque[bytes | memoryview] = deque()  # binary messages before ``attach``
        self._discarding = False
        self._text_seen = False  # a text (or fragmented) message went to the library: the hello came first
        self.binary_first = False  # the peer's first message was binary (then ``on_binary_first`` was called)
        self._turn_bytes = 0  # handed to the session since reading last yielded (see the module docstring)
        self._call_soon = asyncio.get_running_loop().call_soon
        messages = self.recv_messages  # type: ignore[attr-defined]
        messages.pause = lambda: self.gate.hold("messages")
        messages.resume = lambda: self.gate.release("messages")

    def attach(self, on_message: Callable[[bytes | memoryview], None], on_bad_message: Callable[[str], None]) -> None:
        """Take the binary messages from now on (and those that came early), as callbacks from the loop.

        Text (or fragmented) messages the peer sent after its hello or welcome, before this, went to the library's
        queue, which nobody reads any more: they were held (up to 64 frames of ``max_size``) with reading paused
        until the keepalive gave up. Now they are dropped and the session closes on them, as on one sent after."""
        self.on_message, self.on_bad_message = on_message, on_bad_message
        messages = self.recv_messages  # type: ignore[attr-defined]
        if len(messages.frames):
            messages.frames.queue.clear()
            messages.maybe_resume()  # releases the gate's "messages": the closing handshake is read
            self.discard_messages()
            on_bad_message(NOT_BINARY)
            return
        while self._early and self.on_message is not None:
            on_message(self._early.popleft())
        self.gate.release("early")

    def limit_messages(self, max_size: int) -> None:
        """Take messages of at most ``max_size`` bytes from now on (the client, once the welcome named the server's
        ``max_frame``: ``mux.max_message``); a larger one closes the connection (1009), as the library's limit does."""
        self.protocol.max_message_size = max_size  # type: ignore[attr-defined]  # text, pings and the rest
        if self._reader is not None:
            self._reader._limit = max_size  # the tunnel's binary messages, which bypass the library (``FrameReader``)

    def discard_messages(self) -> None:
        """Drop the peer's messages from now on (closing after a protocol error); still read the rest,
        so that the closing handshake completes."""
        self.on_message = None
        self._discarding = True
        self._early.clear()
        self.gate.release("early")

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            self._handshake_received(data)
            return
        self._take(reader.feed(data))
        self.handed(len(data))
        if reader.bulk and self._bulk_reads is not None and not self.transport.is_closing():
            self.transport.set_protocol(self._bulk_reads)  # large frames: read into the reader's buffer

    def handed(self, count: int) -> None:
        """``count`` bytes of frames went to the session: past ``TURN_BYTES`` since the last pause, read no more
        in this loop turn (other connections' reads and callbacks run first)."""
        self._turn_bytes += count
        if self._turn_bytes < TURN_BYTES:
            return
        self._turn_bytes = 0
        if not self.transport.is_closing():
            self.gate.hold("turn")
            self._call_soon(self.gate.release, "turn")

    def _take(self, items: list[tuple[int, bytes | memoryview]]) -> None:
        for kind, item in items:
            if kind == PAYLOAD:
                if self.on_message is not None:
                    self.on_message(item)
                elif not self._discarding:
                    if not self._text_seen and not self.binary_first:
                        self.binary_first = True
                        if self.on_binary_first is not None:
                            self.on_binary_first()
                    self._early.append(item)
                    self.gate.hold("early")  # read no more until someone takes them
            elif kind == RAW_DATA and (self.on_message is not None or self._discarding):
                if self.on_message is not None:  # else closing: dropped, or the library queued them unread
                    self.discard_messages()
                    if self.on_bad_message is not None:
                        self.on_bad_message(NOT_BINARY)
            else:
                if kind == RAW_DATA:
                    self._text_seen = True
                self._to_library(item)  # type: ignore[arg-type]  # raw frames are bytes

    def _handshake_received(self, data: bytes) -> None:
        """Feed the library the opening handshake's bytes, up to the end of the HTTP head; what
        follows it is frames, for the reader (or all the library's when the handshake failed)."""
        probe = self._tail + data
        end = probe.find(b"\r\n\r\n")
        if end < 0:
            self._tail = probe[-3:]
            self._to_library(data)
            return
        cut = end + 4 - len(self._tail)
        self._tail = b""
        self._to_library(data[:cut])
        state = self.protocol.state  # type: ignore[attr-defined]
        opened = state is State.OPEN or (state is State.CONNECTING and self.protocol.side is Side.SERVER)  # type: ignore[attr-defined]
        self._reader = FrameReader(masked=self.protocol.side is Side.SERVER,  # type: ignore[attr-defined]
                                   max_size=self.protocol.max_message_size)  # type: ignore[attr-defined]
        self._reader.passthrough = not opened
        self._bulk_reads = BulkReads(self, self._reader)
        if len(data) > cut:
            self.data_received(data[cut:])

    def _to_library(self, data: bytes) -> None:
        if not data:
            return
        before = self.transport.get_write_buffer_size()
        super().data_received(data)  # type: ignore[misc]
        if self.paused:
            self._waiting_replies += max(0, self.transport.get_write_buffer_size() - before)
            if self._waiting_replies > REPLY_LIMIT:
                self.gate.hold("replies")

    @property
    def closing(self) -> bool:
        """The closing handshake began (a close frame went or came: a protocol error, a message too big) or the
        connection is going: ``write_binary`` writes nothing from now on."""
        return self.protocol.state is not _OPEN or self.transport.is_closing()  # type: ignore[attr-defined]

    def write_binary(self, pieces: list[bytes | memoryview], length: int) -> bool:
        """Write one binary message of ``pieces`` now; False, writing nothing, once the connection is
        no longer open (the closing handshake began: no data frame may follow a close frame). The
        caller then awaits ``drain()``, which waits while the send buffer is over its high-water mark."""
        if self.protocol.state is not _OPEN or self.transport.is_closing():  # type: ignore[attr-defined]
            return False
        mask = self._masks.next() if self._masks else None
        if length < WRITE_APART_FROM:
            self.transport.write(binary_frame(pieces, length, mask))
        else:  # TLS encrypts each buffer where it lies (a plain transport: one writev, or asyncio's join)
            self.transport.writelines(frame_buffers(pieces, length, mask))
        return True

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._waiting_replies = 0
        self.gate.release("replies")
        if self.on_drained is not None:
            self.on_drained()


class BoundedConnection(BoundedReplies, Connection):
    """What a ``Session`` runs on, for type checkers: either end's connection (never made itself)."""


class BulkReads(asyncio.BufferedProtocol):
    """The transport's protocol while large frames arrive: it reads (and TLS decrypts) straight into
    the ``FrameReader``'s buffer, hands the rest to the connection, and hands reading back to it once
    the frames are small again (a call more per read, which small messages do not win back).

    A protocol of its own because uvloop reads into a protocol's buffer only when that protocol is
    not an ``asyncio.Protocol``, and the library's connection is one.
    """

    __slots__ = ("connection", "reader")

    def __init__(self, connection: BoundedReplies, reader: FrameReader) -> None:
        self.connection = connection
        self.reader = reader

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        items = self.reader.updated(nbytes)
        connection = self.connection
        transport = connection.transport
        if not self.reader.capacity and not transport.is_closing():  # idle again: bytes as they come
            transport.set_protocol(connection)  # type: ignore[arg-type]
        connection._take(items)
        connection.handed(nbytes)

    def eof_received(self) -> bool | None:
        return self.connection.eof_received()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.connection.pause_writing()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.connection.resume_writing()


class BinaryFirst(Exception):
    """The peer's first message was binary, where its hello (or welcome) is text: held for a session, unread."""


async def first_message(websocket: Connection, timeout: float) -> str | bytes | None:
    """The peer's first message within ``timeout`` (None when none came), the hello or the welcome: ``BinaryFirst``
    at once when a binary one comes first (``BoundedReplies.on_binary_first``), which ``recv()`` never sees, so the
    wait ran out (and a close after it waited out its own timeout, reading paused)."""
    if websocket.binary_first:  # type: ignore[attr-defined]  # before this coroutine ran
        raise BinaryFirst
    loop = asyncio.get_running_loop()
    binary_first: asyncio.Future[None] = loop.create_future()
    websocket.on_binary_first = lambda: None if binary_first.done() else binary_first.set_result(None)  # type: ignore[attr-defined]
    received = loop.create_task(websocket.recv())
    try:
        done, _ = await asyncio.wait((received, binary_first), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        websocket.on_binary_first = None  # type: ignore[attr-defined]
        if not received.done():
            received.cancel()
    if received in done:
        return received.result()
    if binary_first in done:
        raise BinaryFirst
    return None
