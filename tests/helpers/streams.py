"""A coroutine interface to one tunnel stream, for tests that open streams themselves."""

from __future__ import annotations

import asyncio
import collections

from inlets_py.runtime.core.mux import ResetCode
from inlets_py.runtime.core.channel import Channel


class AsyncStream:
    """Coroutine-style access to a channel: the tests' own end of a stream they open on a session.

    Received data is buffered (bounded by the stream window: credit returns only as
    ``read`` hands data out), writes wait for credit.
    """

    def __init__(self) -> None:
        self.channel: Channel | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._reset: tuple[int, str] | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    def attach(self, channel: Channel) -> None:
        self.channel = channel
        channel.handler = self

    # StreamHandler callbacks
    def on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()

    def on_eof(self) -> None:
        self._eof = True
        self._readable.set()

    def on_reset(self, code: int, reason: str) -> None:
        self._reset = (code, reason)
        self._readable.set()
        self._writable.set()

    def on_writable(self) -> None:
        self._writable.set()

    # coroutine interface
    async def read(self) -> bytes:
        """Next chunk; b"" at end of stream. Raises ``ConnectionResetError`` on reset."""
        while not self._chunks:
            if self._reset is not None:
                raise ConnectionResetError(self._reset[1] or "stream reset")
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        assert self.channel is not None
        self.channel.consumed(len(data))
        return data

    async def write(self, data: bytes) -> None:
        assert self.channel is not None
        view = memoryview(data)
        while view:
            if self._reset is not None:
                raise ConnectionResetError(self._reset[1] or "stream reset")
            count = self.channel.write(view)
            view = view[count:]
            if view:
                self._writable.clear()
                await self._writable.wait()

    def write_eof(self) -> None:
        if self.channel is not None and self._reset is None:
            self.channel.write_eof()

    def reset(self, code: int = ResetCode.CANCEL, reason: str = "") -> None:
        if self.channel is not None and self._reset is None:
            self._reset = (code, reason)
            self.channel.reset(code, reason)
