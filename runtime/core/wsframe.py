"""Binary websocket frames for the tunnel's messages, written in one join and read without copies.

The websockets library sends each message through an async context manager, a ``Frame``
object and a ``BytesIO`` (two copies of the payload and about 15 Python calls), and reads
each through a byte buffer, a parser generator and a queue that a task awaits: a loop turn
and three more copies. A tunnel pays that for every chunk of every stream, and its messages
need none of it: one binary frame with FIN set and no extension (compression is off).

``binary_frame`` builds one such frame; ``FrameReader`` splits what the peer sends into
frames, hands unfragmented binary frames out as payloads, and everything else (pings, pongs,
close, text, fragments, anything it cannot vouch for) back as raw frames for the library,
which answers, runs the closing handshake and fails the connection as before. Both sides deal
in whole frames only, so the library never sees half of one (see ``wsflow.BoundedReplies``).
"""

from __future__ import annotations

import os
import struct

from websockets.frames import apply_mask  # the library's C speedup when built

FIN_BINARY = 0x82  # FIN bit and opcode 2 (binary)
MASK_BIT = 0x80
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE = 0, 1, 2, 8
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame_header(length: int, masked: bool) -> bytes:
    """RFC 6455 5.2: the shortest length encoding that fits, as the RFC requires."""
    bit = MASK_BIT if masked else 0
    if length < 126:
        return _SHORT.pack(FIN_BINARY, bit | length)
    if length < 65536:
        return _MEDIUM.pack(FIN_BINARY, bit | 126, length)
    return _LONG.pack(FIN_BINARY, bit | 127, length)


def binary_frame(pieces: list[bytes | memoryview], length: int, mask: bytes | None = None) -> bytes:
    """One binary frame carrying ``pieces`` joined (``length`` bytes); masked when ``mask`` is given
    (a client's frames, RFC 6455 5.3)."""
    if mask is None:
        return b"".join([frame_header(length, False), *pieces])
    out = [frame_header(length, True), mask]
    offset = 0
    for piece in pieces:  # masked piece by piece, the key turned to each one's offset: one copy less
        turn = offset % 4
        out.append(apply_mask(piece, mask[turn:] + mask[:turn] if turn else mask))
        offset += len(piece)
    return b"".join(out)


class MaskKeys:
    """Masking keys from the OS's random source (RFC 6455 10.3: unpredictable), read 1,024 keys
    at a time: one ``getrandom`` call per 1,024 messages instead of one per message."""

    __slots__ = ("_pool", "_at")

    POOL = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(self.POOL), 0
        key = self._pool[self._at : self._at + 4]
        self._at += 4
        return key


# What ``FrameReader.feed`` hands out, each with its bytes:
PAYLOAD = 0  # the payload of an unfragmented binary frame, unmasked
RAW_DATA = 1  # a whole text, continuation or unfinished binary frame, as received
RAW_CONTROL = 2  # a whole ping or pong, as received
RAW_REST = 3  # everything from a close frame, or from a frame it cannot vouch for, on: the library's


class FrameReader:
    """Splits the bytes after the opening handshake into frames (RFC 6455 5.2).

    ``masked`` is what the peer's frames must be (a server reads masked frames). A frame with
    reserved bits, the wrong masking or over ``max_size`` bytes, and a close frame, turn the
    reader into a pass-through: it and all that follows go to the library, which fails the
    connection or completes the closing handshake. Partial frames wait as views of the reads
    they came in and are joined once, when whole.
    """

    __slots__ = ("masked", "max_size", "passthrough", "_parts", "_have", "_need")

    def __init__(self, *, masked: bool, max_size: int | None) -> None:
        self.masked = masked
        self.max_size = max_size
        self.passthrough = False
        self._parts: list[bytes | memoryview] = []  # the unfinished frame, as received
        self._have = 0
        self._need = 2  # bytes of it needed before parsing can go on

    def feed(self, data: bytes) -> list[tuple[int, bytes | memoryview]]:
        if self.passthrough:
            return [(RAW_REST, data)] if data else []
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts, self._have = [], 0
        out: list[tuple[int, bytes | memoryview]] = []
        view = memoryview(data)
        size, at = len(data), 0
        while size - at >= 2:
            first, second = data[at], data[at + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            masked = second & MASK_BIT
            if masked:
                head += 4
            if size - at < head:
                self._need = head
                break
            if length == 126:
                length = int.from_bytes(data[at + 2 : at + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[at + 2 : at + 10], "big")
            opcode = first & 0x0F
            if (first & 0x70 or bool(masked) != self.masked or opcode == OP_CLOSE
                    or (self.max_size is not None and length > self.max_size)):
                self.passthrough = True
                out.append((RAW_REST, data[at:]))
                return out
            end = at + head + length
            if end > size:
                self._need = head + length
                break
            if opcode == OP_BINARY and first & 0x80:
                payload = view[at + head : end]
                out.append((PAYLOAD, apply_mask(payload, data[at + head - 4 : at + head]) if masked else payload))
            else:
                out.append((RAW_DATA if opcode < OP_CLOSE else RAW_CONTROL, data[at:end]))
            at = end
        else:
            self._need = 2
        if at < size:
            self._parts, self._have = [view[at:]], size - at
        return out
