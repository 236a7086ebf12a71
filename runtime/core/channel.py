"""One stream of a session as the code that bridges it sees it, and the callbacks it is handed.

A ``Channel`` is a handle: its writes, resets and credit go through its session's single writer
(``Session._write`` and the rest), which owns the multiplexer. It lives apart from session.py so
that the bridges, upstreams and routing can name it without the session's machinery.
"""

from __future__ import annotations

from typing import Protocol

from .mux import Multiplexer, ResetCode

#: Above this many queued outgoing bytes, channels stop accepting data until the
#: websocket drains: bounds memory across all streams, not just per stream.
OUT_HIGH_WATER = 4 * 1024 * 1024
OUT_LOW_WATER = 1024 * 1024
#: Datagrams (UDP) waiting to be sent beyond this are dropped, whatever room the rest has: a UDP flood filled
#: all of OUT_HIGH_WATER by itself, which stopped every TCP stream of the tunnel, and each TCP byte then waited
#: behind 4 MiB of datagrams. A late datagram is worth less than a dropped one (what UDP's users expect).
DATAGRAM_SHARE = 512 * 1024


class StreamHandler(Protocol):
    def on_data(self, data: bytes | memoryview) -> None: ...
    def on_eof(self) -> None: ...
    def on_reset(self, code: int, reason: str) -> None: ...
    def on_writable(self) -> None: ...


class ChannelOwner(Protocol):
    """What a channel uses of its session. The session is a ``core.session.Session``, which this module may not
    import (the runtime has no import cycle, not even through type hints): code that needs the rest of it casts."""

    mux: Multiplexer

    def _write(self, channel: Channel, data: bytes | memoryview) -> int: ...
    def _write_datagram(self, channel: Channel, data: bytes) -> bool: ...
    def _write_eof(self, channel: Channel) -> None: ...
    def _reset(self, channel: Channel, code: int, reason: str) -> None: ...
    def _consumed(self, channel: Channel, count: int) -> None: ...
    def _ack_soon(self, channel: Channel) -> None: ...


class Channel:
    """One stream of a session, as seen by the code that bridges it."""

    __slots__ = ("session", "stream_id", "target", "handler", "bytes_in", "bytes_out", "out_at_credit")

    def __init__(self, session: ChannelOwner, stream_id: int, target: str) -> None:
        self.session = session
        self.stream_id = stream_id
        self.target = target
        self.handler: StreamHandler | None = None
        self.bytes_in = 0  # received from the peer
        self.bytes_out = 0  # sent to the peer
        self.out_at_credit = 0  # bytes_out when the peer's credit last counted as a sign of life

    def write(self, data: bytes | memoryview) -> int:
        """Queue what credit allows; returns the count. ``on_writable`` follows a short write."""
        return self.session._write(self, data)

    def write_whole(self, data: bytes) -> bool:
        """Queue all of ``data`` or none of it (a UDP datagram: a part of one is a corrupt one); whether it went.
        None while the tunnel is congested (OUT_HIGH_WATER) or datagrams fill their share (DATAGRAM_SHARE)."""
        mux = self.session.mux
        if mux.buffered >= OUT_HIGH_WATER or mux.datagram_buffered >= DATAGRAM_SHARE:
            return False
        return self.session._write_datagram(self, data)

    def write_eof(self) -> None:
        self.session._write_eof(self)

    def reset(self, code: int = int(ResetCode.CANCEL), reason: str = "") -> None:
        self.session._reset(self, code, reason)

    def consumed(self, count: int) -> None:
        """Return credit for bytes the handler has passed on (written to its socket)."""
        self.session._consumed(self, count)

    def acknowledge(self) -> None:
        """Tell the peer this stream reached its far end (``Multiplexer.acknowledge``): the dial to it worked. Soon,
        not now (``Session._ack_soon``): an upstream that answers first says so itself, at no cost."""
        self.session._ack_soon(self)

    @property
    def is_open(self) -> bool:
        return self.session.mux.is_open(self.stream_id)
