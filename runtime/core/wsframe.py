"""Binary websocket frames for the tunnel's messages, built in one join.

The websockets library sends each message through an async context manager, a ``Frame``
object and a ``BytesIO``: two copies of the payload and about 15 Python calls per message,
which a tunnel pays for every chunk of every stream. Its messages need none of that: one
binary frame with FIN set and no extension (compression is off), whose payload is the
multiplexer's frames, joined here once together with the websocket header. Pings, pongs and
the closing handshake stay with the library; both write whole frames, so they never
interleave within one (see ``wsflow.FrameWriter``).
"""

from __future__ import annotations

import os
import struct

from websockets.frames import apply_mask  # the library's C speedup when built

FIN_BINARY = 0x82  # FIN bit and opcode 2 (binary)
MASK_BIT = 0x80
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
