"""Websocket connections that stop reading from a peer that does not read our replies.

The websockets library answers each ping with a pong as it reads, whatever the state of
the send buffer: a peer that sends pings and never reads grows our memory by a pong per
ping. These connections count the replies queued while the send buffer is over its
high-water mark; past ``REPLY_LIMIT`` bytes they pause reading until the buffer drains
(the peer read). Honest peers ping once per keepalive interval, far below the limit, so
two honest ends busy writing to each other never both stop reading.

Reading is paused while any reason holds: the library's own one (its queue of received
messages is full) or ours, so neither resumes what the other paused.

The tunnel's own binary messages bypass the library's send path (``write_binary``, framed by
``wsframe``) but keep its flow control: the writer awaits ``drain`` as the library would.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.connection import Connection
from websockets.protocol import Side, State

from .wsframe import MaskKeys, binary_frame

#: Bytes of pongs (and other automatic replies) that may wait behind a full send buffer.
REPLY_LIMIT = 64 * 1024


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


class BoundedReplies:
    """Mixin for a websockets connection (asyncio protocol): see the module docstring. Each end mixes
    it into its own class (``server.admission``, ``client.dialer``), so neither imports the other's:
    the library's client module brings python-socks, which a server never uses."""

    transport: asyncio.Transport
    paused: bool  # the library's flag: the send buffer is over its high-water mark
    gate: ReadGate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._masks = MaskKeys() if self.protocol.side is Side.CLIENT else None  # type: ignore[attr-defined]
        self.gate = ReadGate(self.transport)
        self._waiting_replies = 0
        messages = self.recv_messages  # type: ignore[attr-defined]
        messages.pause = lambda: self.gate.hold("messages")
        messages.resume = lambda: self.gate.release("messages")

    def data_received(self, data: bytes) -> None:
        before = self.transport.get_write_buffer_size()
        super().data_received(data)  # type: ignore[misc]
        if self.paused:
            self._waiting_replies += max(0, self.transport.get_write_buffer_size() - before)
            if self._waiting_replies > REPLY_LIMIT:
                self.gate.hold("replies")

    def write_binary(self, pieces: list[bytes | memoryview], length: int) -> bool:
        """Write one binary message of ``pieces`` now; False, writing nothing, once the connection is
        no longer open (the closing handshake began: no data frame may follow a close frame). The
        caller then awaits ``drain()``, which waits while the send buffer is over its high-water mark."""
        if self.protocol.state is not State.OPEN or self.transport.is_closing():  # type: ignore[attr-defined]
            return False
        self.transport.write(binary_frame(pieces, length, self._masks.next() if self._masks else None))
        return True

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._waiting_replies = 0
        self.gate.release("replies")


class BoundedConnection(BoundedReplies, Connection):
    """What a ``Session`` runs on, for type checkers: either end's connection (never made itself)."""
