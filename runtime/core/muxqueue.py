"""The multiplexer's outbound side: frames queued to send, packed into messages, and the bound on
control frames that stops reading from a peer that does not read.

Control frames (all but DATA and our own OPENs) are counted in ``control_buffered``: a peer can make
us queue them (a RESET per OPEN, a WINDOW per read) without reading any, so beyond
``max_control_backlog`` the glue reads nothing more from it until half of them are sent. That check comes
between messages: within one, the ``Multiplexer`` bounds the RESETs it queues itself (``REFUSALS_SHARE``).
"""

from __future__ import annotations

import collections

from . import muxframe
from .muxframe import _DATA, _RESET, MAX_REASON, FrameType, ProtocolError, ResetCode

#: Bound by assignment, not imported: CPython 3.11 compiles ``NAME.pack(...)`` on an imported NAME as an
#: attribute load and a call, making a bound method per frame (see ``mux``).
HEADER, RESET_CODE = muxframe.HEADER, muxframe.RESET_CODE

#: Queued control frames (all but DATA and our own OPENs) beyond which the peer is not read
#: from: about 40,000 RESETs; far more than honest traffic leaves unsent.
DEFAULT_MAX_CONTROL_BACKLOG = 1024 * 1024
#: Frames queued together share one message up to this size: a websocket message costs
#: far more CPU than copying its bytes, so several streams' DATA frames travel together.
COALESCE_LIMIT = 256 * 1024
#: The share of ``max_control_backlog`` the RESETs refusing one message's OPENs may take: past it the message is a
#: protocol error (``Multiplexer``). A 16 MiB message of OPENs past the limit queued 62 MB of RESETs in one pass.
REFUSALS_SHARE = 2
#: Room a peer's websocket message may take beyond the frames it carries (``max_message``).
MESSAGE_ROOM = 64 * 1024


def max_message(max_frame: int) -> int:
    """The largest websocket message to take from a peer whose DATA frames are at most ``max_frame`` bytes: one such
    frame alone, or frames packed up to ``COALESCE_LIMIT`` (``next_message``), and ``MESSAGE_ROOM``. Both ends cap
    what they read so (the client once the welcome named ``max_frame``); a larger message closes the connection
    (1009) before the multiplexer parses a byte of it."""
    return max(max_frame, COALESCE_LIMIT) + MESSAGE_ROOM


#: How a datagram's DATA frame is queued (``_queue_datagram``), so that ``datagram_buffered`` sees it leave; on
#: the wire it is a DATA frame like any other.
_DATAGRAM = -1


class FrameQueue:
    """Frames waiting to be sent, as (type, header, payload); the ``Multiplexer`` is one."""

    def __init__(self, max_control_backlog: int = DEFAULT_MAX_CONTROL_BACKLOG) -> None:
        self._out: collections.deque[tuple[int, bytes, bytes | memoryview]] = collections.deque()  # (type, header, payload)
        self.buffered = 0  # bytes queued in _out
        self.control_buffered = 0  # of which control frames, bar OPEN (see the module docstring)
        self.datagram_buffered = 0  # of which datagrams (UDP), which the glue keeps to a share (channel.py)
        self.max_control_backlog = max_control_backlog
        self._backlogged = False
        self._refused = 0  # streams refused in the message being parsed (``_refuse``; the Multiplexer counts anew)

    def data_to_send(self, limit: int | None = None) -> list[bytes]:
        """Up to ``limit`` messages to send (all when None), in order; see ``next_message``."""
        messages: list[bytes] = []
        while limit is None or len(messages) < limit:
            message = self.next_message()
            if message is None:
                break
            messages.append(b"".join(message[0]))
        return messages

    def next_message(self) -> tuple[list[bytes | memoryview], int] | None:
        """The next message as the pieces to join (frame headers and payloads) and its size; None when
        nothing waits. Frames are packed into messages of up to ``COALESCE_LIMIT`` bytes (a larger frame
        goes alone), so the peer's ``max_size`` must allow ``max(COALESCE_LIMIT, max_frame + HEADER.size)``.

        The pieces are joined once, by whoever frames the message (``wsframe``), not once per frame here.
        A writer that takes one message at a time leaves the rest counted in ``buffered`` and
        ``control_buffered``, so the bounds see everything not yet sent."""
        out = self._out
        if not out:
            return None
        pieces: list[bytes | memoryview] = []
        size = control = datagrams = 0
        while out:
            ftype, header, payload = out[0]
            frame_size = len(header) + len(payload)
            if pieces and size + frame_size > COALESCE_LIMIT:
                break
            out.popleft()
            pieces.append(header)
            if payload:
                pieces.append(payload)
            size += frame_size
            if ftype not in _UNBOUNDED_TYPES:
                control += frame_size
            elif ftype == _DATAGRAM:
                datagrams += frame_size
        self.buffered -= size
        self.control_buffered -= control
        self.datagram_buffered -= datagrams
        if self._backlogged and self.control_buffered <= self.max_control_backlog // 2:
            self._backlogged = False
        return pieces, size

    @property
    def backlogged(self) -> bool:
        """Too many control frames wait to be sent: read nothing more from the peer for now."""
        return self._backlogged

    def _refuse(self, stream_id: int, limit: int) -> None:
        """Refuse the peer's stream past our ``limit`` of open streams with a RESET; past ``REFUSALS_SHARE``'s share
        of ``max_control_backlog`` in RESETs for one message, end the connection instead: ``backlogged`` is looked
        at between messages, and nothing honest opens thousands of streams past a limit in one message."""
        reason = f"limit of {limit} open streams"
        self._refused += 1
        most = self.max_control_backlog // REFUSALS_SHARE // (HEADER.size + RESET_CODE.size + len(reason))
        if self._refused > most:
            raise ProtocolError(f"the peer opened more than {most} streams past the limit of {limit} in one message")
        self._queue_reset(stream_id, ResetCode.TOO_MANY_STREAMS, reason)

    def _queue_reset(self, stream_id: int, code: int, reason: str) -> None:
        raw = reason.encode()[:MAX_REASON]
        self._queue(_RESET, stream_id, RESET_CODE.pack(code) + raw)

    def _queue_datagram(self, stream_id: int, payload: bytes) -> None:
        """Queue a datagram as one DATA frame, counted in ``datagram_buffered`` until it leaves."""
        size = HEADER.size + len(payload)
        self._out.append((_DATAGRAM, HEADER.pack(_DATA, stream_id, len(payload)), payload))
        self.buffered += size
        self.datagram_buffered += size

    def _queue(self, ftype: int, stream_id: int, payload: bytes | memoryview) -> None:
        """Queue a frame as its header and payload, joined only into the message that carries it."""
        size = HEADER.size + len(payload)
        self._out.append((ftype, HEADER.pack(ftype, stream_id, len(payload)), payload))
        self.buffered += size
        if ftype not in _UNBOUNDED_TYPES:
            self.control_buffered += size
            if self.control_buffered > self.max_control_backlog:
                self._backlogged = True


#: Frames outside ``control_buffered``: DATA is bounded by credit and the glue's high-water
#: mark, our OPENs by whatever local policy opens streams (accepting data-plane connections).
_UNBOUNDED_TYPES = frozenset((int(FrameType.DATA), int(FrameType.OPEN), _DATAGRAM))
