"""UDP over the tunnel, the client's side: one connected socket to the upstream per flow.

A datagram that finds no credit (or a full tunnel) is dropped and counted, as on the
server's side (server/udp.py): UDP has no backpressure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from ..core.hosts import authority
from ..core.logs import logfmt
from ..core.datagram import send_empty
from ..core.mux import ResetCode
from ..core.services import MAX_DATAGRAM
from ..core.session import Channel

log = logging.getLogger("inlets.udp")

#: Seconds between two log lines about one flow's dropped datagrams (the server's metrics cannot see these).
DROP_LOG_INTERVAL = 10.0
#: Bytes a flow's socket may hold back (its send buffer full: a link slower than the tunnel) before datagrams
#: are dropped. The loop's transport would keep every one, without bound, and send it minutes late.
MAX_SEND_BACKLOG = 64 * 1024


class UdpUpstream(asyncio.DatagramProtocol):
    """The client's side of one flow: a connected UDP socket to the upstream."""

    datagrams = True  # an empty DATA frame is a datagram of zero bytes, passed on (see Session)

    def __init__(self, channel: Channel, on_close: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self.on_close = on_close  # told once, when the flow ends (TcpUpstreams counts the live ones)
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0
        self._unlogged = 0  # dropped since the last log line about it
        self._logged_at = float("-inf")
        self._early: list[bytes | memoryview] = []  # datagrams that came before the socket did (bounded)
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._closed:
            transport.close()
            return
        early, self._early = self._early, []
        for data in early:
            self._send(data)

    def datagram_received(self, data: bytes, address: tuple) -> None:
        if len(data) > MAX_DATAGRAM or not self.channel.write_whole(data):  # whole or not at all
            self._drop()

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: UDP carries on
        log.debug("event=udp_upstream_error error=%s", logfmt(exc))

    # StreamHandler: datagrams from the server's side
    def _send(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        if self.transport.get_write_buffer_size() >= MAX_SEND_BACKLOG:
            self._drop()
        elif data:
            self.transport.sendto(data)
        else:
            send_empty(self.transport)

    def on_data(self, data: bytes | memoryview) -> None:
        if self.transport is not None:
            self._send(data)
        elif len(self._early) < 64:
            self._early.append(data)
        else:
            self._drop()
        self.channel.consumed(len(data))

    def on_eof(self) -> None:
        self.close()

    def on_reset(self, code: int, reason: str) -> None:
        self.close()

    def on_writable(self) -> None:
        pass

    def _drop(self) -> None:
        """A datagram lost here, on the client: said in the log (at once, then at most every DROP_LOG_INTERVAL
        seconds and when the flow ends), as the server's udp_dataplane_dropped_total never sees it."""
        self.dropped += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= DROP_LOG_INTERVAL:
            self._log_drops(now)

    def _log_drops(self, now: float) -> None:
        log.warning("event=udp_dropped service=%s dropped=%d flow_total=%d", logfmt(self.channel.target),
                    self._unlogged, self.dropped)
        self._unlogged = 0
        self._logged_at = now

    def close(self) -> None:
        if not self._closed:
            if self.on_close is not None:
                self.on_close()
            if self._unlogged:
                self._log_drops(time.monotonic())
        self._closed = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def dial_udp(channel: Channel, host: str, port: int, on_close: Callable[[], None] | None = None) -> None:
    """Attach a flow to ``channel`` now (its first datagram may share the OPEN's message),
    then connect a UDP socket to the upstream; reset the stream if that fails. ``on_close``: when the flow ends."""
    upstream = UdpUpstream(channel, on_close)
    channel.handler = upstream
    asyncio.ensure_future(_connect(upstream, host, port))


async def _connect(upstream: UdpUpstream, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.create_datagram_endpoint(lambda: upstream, remote_addr=(host, port))
    except OSError as exc:  # said here, as a TCP dial says it: the server logs no reset, and datagrams vanished
        reason = exc.strerror or str(exc)
        where = authority(host, port)
        log.info("event=upstream_failed upstream=%s proto=udp error=%s", logfmt(where), logfmt(reason))
        upstream.close()
        upstream.channel.reset(ResetCode.REFUSED, f"upstream udp {where}: {reason}")
