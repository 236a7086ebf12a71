"""Binary websocket frames for the tunnel's messages, written in one join (large ones as their buffers, their
large pieces uncopied) and read with one copy at most.

The websockets library sends each message through an async context manager, a ``Frame``
object and a ``BytesIO`` (two copies of the payload and about 15 Python calls), and reads
each through a byte buffer, a parser generator and a queue that a task awaits: a loop turn
and three more copies. A tunnel pays that for every chunk of every stream, and its messages
need none of it: one binary frame with FIN set and no extension (compression is off).

``binary_frame`` builds one such frame (``frame_buffers``: the same as buffers to write in turn);
``FrameReader`` splits what the peer sends into frames, hands unfragmented binary frames out as
payloads, and everything else (pings, pongs, close, text, fragments, anything it cannot vouch
for) back as raw frames for the library,
which answers, runs the closing handshake and fails the connection as before. Both sides deal
in whole frames only, so the library never sees half of one (see ``wsflow.BoundedReplies``).
"""

from __future__ import annotations

import os
import struct
import sys

from websockets.frames import apply_mask  # the library's C speedup when built

FIN_BINARY = 0x82  # FIN bit and opcode 2 (binary)
MASK_BIT = 0x80
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE = 0, 1, 2, 8
#: The opcodes handed out as raw frames (text, continuation, unfinished binary; ping, pong): any other, close
#: and the reserved ones, turns the reader into a pass-through.
_RAW_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, 9, 10))
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


#: A message from this size on is written as ``frame_buffers``, not one joined ``bytes``: its large pieces are
#: passed to the transport as they are, which TLS encrypts from in place (one copy of each byte fewer than a join,
#: ~1.8% of a bulk transfer's CPU in ``perf``). Below it a join costs less than a write per buffer.
WRITE_APART_FROM = 64 * 1024
#: ... and pieces from this size on are the ones that go apart (a 16 KiB TLS record's worth).
APART = 16 * 1024


def frame_buffers(pieces: list[bytes | memoryview], length: int, mask: bytes | None = None) -> list[bytes | memoryview]:
    """``binary_frame`` as buffers to write in order: the pieces of ``APART`` bytes or more each on its own
    (uncopied; masked, the masked copy ``apply_mask`` makes), the small ones joined with the frame header."""
    out: list[bytes | memoryview] = []
    run: list[bytes | memoryview] = [frame_header(length, mask is not None)]
    if mask is not None:
        run.append(mask)
    offset = 0
    # binary_frame's masking again, not a helper both call: a call more per small message cost the client
    # 0.5-1.1% of its instructions per request (bench_instructions)
    for piece in pieces:
        if mask is not None:
            turn = offset % 4
            offset += len(piece)
            piece = apply_mask(piece, mask[turn:] + mask[:turn] if turn else mask)
        if len(piece) >= APART:
            if run:
                out.append(b"".join(run))
                run = []
            out.append(piece)
        else:
            run.append(piece)
    if run:
        out.append(b"".join(run))
    return out


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


#: Room a read is offered at least, and when the transport names no size (plain TCP).
READ_ROOM = 64 * 1024
#: A buffer emptied by a read smaller than this, of whole frames only, is let go: an idle connection
#: holds none. A bulk transfer keeps one (its reads are ~200 KiB, or the ends of frames read before).
KEEP_AFTER = 64 * 1024
#: The buffer doubles when it grows, up to this; past it, it grows by what a frame and a read need.
GROW_TO = 1024 * 1024
_NO_BUFFER = bytearray()


class FrameReader:
    """Splits the bytes after the opening handshake into frames (RFC 6455 5.2).

    ``masked`` is what the peer's frames must be (a server reads masked frames). A frame with
    reserved bits or a reserved opcode, the wrong masking or over ``max_size`` bytes, and a close frame, turn the
    reader into a pass-through: it and all that follows go to the library, which fails the
    connection or completes the closing handshake.

    Two ways in. ``feed`` takes a read's bytes: whole frames in it are handed out as views of it
    (unmasked for a server), and a frame it ends in the middle of waits in the reader's buffer.
    ``get_buffer`` and ``updated`` (asyncio's buffered protocol) let the transport read, and TLS
    decrypt, straight into that buffer: for large frames, which span reads, that saves three
    copies of every byte (the TLS layer's join of a read's records, the join of a frame's reads,
    the multiplexer's copy of the payload), and costs a call more per read, which small messages
    do not win back (measured: see the commit). The connection switches between the two (``bulk``).
    """

    __slots__ = ("passthrough", "bulk", "_mask_bit", "_limit", "_buf", "_view", "_start", "_end", "_need")

    def __init__(self, *, masked: bool, max_size: int | None) -> None:
        self._mask_bit = MASK_BIT if masked else 0  # what the second byte's top bit must be
        self._limit = max_size if max_size is not None else sys.maxsize
        self.passthrough = False
        #: ``feed`` left a frame larger than a read waiting for its rest: reading into the buffer pays from here.
        self.bulk = False
        self._buf = _NO_BUFFER
        self._view = memoryview(_NO_BUFFER)
        self._start = 0  # the unfinished frame: _buf[_start:_end]
        self._end = 0
        self._need = 2  # bytes of it needed before parsing can go on

    @property
    def capacity(self) -> int:
        """Bytes of buffer held: none once idle."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes | memoryview]]:
        """The frames that ``data``, read elsewhere, completes."""
        if self.passthrough:
            return [(RAW_REST, data)] if data else []
        view = memoryview(data)  # slices of it are copied once, into the buffer (a bytes slice is a copy)
        if self._end > self._start:  # it goes on a frame in the buffer
            out: list[tuple[int, bytes | memoryview]] = []
            at = 0
            while at < len(data):
                room = self.get_buffer(len(data) - at)
                count = min(len(room), len(data) - at)
                room[:count] = view[at : at + count]
                at += count
                out += self.updated(count)
            if self._start == self._end:
                self._let_go()
            self.bulk = self._need > READ_ROOM and self._end > self._start
            return out
        out, at = self._frames(data, view, 0, len(data), False)
        if at < len(data):  # the start of a frame: kept in the buffer
            room = self.get_buffer(len(data) - at)
            room[: len(data) - at] = view[at:]
            self._end += len(data) - at
            self.bulk = self._need > READ_ROOM
        return out

    def get_buffer(self, hint: int = -1) -> memoryview:
        """Room for the next read, after the unfinished frame: for ``hint`` bytes (what the transport has
        waiting; ``READ_ROOM`` when it does not say) and the rest of that frame. Short of that, the room
        left is offered as it is while it holds ``READ_ROOM`` and the frame's rest (the transport reads
        the others next turn); only then is the frame moved to the front, or the buffer grown."""
        held = self._end - self._start
        rest = self._need - held
        want = max(hint if hint > 0 else READ_ROOM, rest)
        buf = self._buf
        room = len(buf) - self._end
        if room >= want or room >= max(READ_ROOM, rest):
            return self._view[self._end :]
        if held + want <= len(buf) and held <= min(len(buf) // 4, self._start):  # a short move, onto no byte of it
            buf[:held] = self._view[self._start : self._end]  # (the slice assignment copies with memcpy)
        else:
            buf = bytearray(max(held + want, min(2 * len(buf), GROW_TO)))
            buf[:held] = self._view[self._start : self._end]
            self._buf, self._view = buf, memoryview(buf)
        self._start, self._end = 0, held
        return self._view[held:]

    def updated(self, count: int) -> list[tuple[int, bytes | memoryview]]:
        """``count`` bytes were read into the room ``get_buffer`` gave: the frames they complete, each
        payload copied out of the buffer (which the next read reuses)."""
        fresh = self._start == self._end  # the read began a frame (else it went on with one)
        self._end += count
        if self.passthrough:
            out: list[tuple[int, bytes | memoryview]] = [(RAW_REST, bytes(self._view[self._end - count : self._end]))]
            self._start = self._end
        else:
            out, self._start = self._frames(self._buf, self._view, self._start, self._end, True)
        if self._start == self._end:
            if fresh and count < KEEP_AFTER:
                self._let_go()
            self._start = self._end = 0
        return out

    def _let_go(self) -> None:
        """Idle: hold no buffer (the next read brings one of its size)."""
        self._buf, self._view = _NO_BUFFER, memoryview(_NO_BUFFER)
        self._start = self._end = 0
        self.bulk = False

    def _frames(self, buf: bytes | bytearray, view: memoryview, at: int, size: int,
                copy: bool) -> tuple[list[tuple[int, bytes | memoryview]], int]:
        """The whole frames in ``buf[at:size]``, and where the first unfinished one starts. ``copy``:
        ``buf`` will be written over, so what is handed out is copied (unmasking copies anyway).
        A whole binary message (the tunnel's every frame) is told from the rest with one test."""
        out: list[tuple[int, bytes | memoryview]] = []
        mask_bit, limit = self._mask_bit, self._limit
        while size - at >= 2:
            second = buf[at + 1]
            masked = second & MASK_BIT
            length = second & 0x7F
            head = 6 if masked else 2
            if length >= 126:
                head += 2 if length == 126 else 8
            if size - at < head:
                self._need = head
                break
            if length == 126:
                length = int.from_bytes(buf[at + 2 : at + 4], "big")
            elif length == 127:
                length = int.from_bytes(buf[at + 2 : at + 10], "big")
            first = buf[at]
            if first != FIN_BINARY or masked != mask_bit or length > limit:
                opcode = first & 0x0F  # a reserved one (3-7, 11-15) the library names, not as text or a fragment
                if first & 0x70 or masked != mask_bit or opcode not in _RAW_OPCODES or length > limit:
                    self.passthrough = True
                    out.append((RAW_REST, bytes(view[at:size])))
                    return out, size
            end = at + head + length
            if end > size:
                self._need = head + length
                break
            if first == FIN_BINARY:
                payload = view[at + head : end]
                if masked:
                    out.append((PAYLOAD, apply_mask(payload, buf[at + head - 4 : at + head])))
                else:
                    out.append((PAYLOAD, bytes(payload) if copy else payload))
            else:
                out.append((RAW_DATA if first & 0x0F < OP_CLOSE else RAW_CONTROL, bytes(view[at:end])))
            at = end
        else:
            self._need = 2
        return out, at
