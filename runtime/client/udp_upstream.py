"""UDP over the tunnel, the client's side: one connected socket to the upstream per flow.

A datagram that finds no credit (or a full tunnel) is dropped and counted, as on the
server's side (server/udp.py): UDP has no backpressure. So is an answer the kernel dropped because the flow's
socket was full (an upstream answering in bursts faster than the loop reads), Linux only: the kernel's count
(``SO_MEMINFO``'s drops, the count ``SO_RXQ_OVFL`` would carry) is read at most once a second while answers
come and when the flow ends, not with every datagram: the loop's transport (``recvfrom``, in C) is kept, as a
reader of our own with ``recvmsg`` read 15-30% fewer datagrams a second. Fewer are dropped so: the first
BURST_FLOWS flows' sockets hold a burst of 3,640 answers of 1 KB, not the kernel default's 92.
A flow whose upstream refuses it (ICMP unreachable) before any answer fails, as a refused TCP dial does (REFUSED):
the server then sends that source's next datagram, and new flows, to its other clients first.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from typing import Callable

from ..core.hosts import authority
from ..core.logs import logfmt
from ..core.datagram import raise_receive_buffer, send_empty
from ..core.dial_failures import UNREACHABLE
from ..core.mux import DEFAULT_INITIAL_WINDOW, ResetCode
from ..core.services import MAX_DATAGRAM
from ..core.channel import Channel

log = logging.getLogger("inlets.udp")

#: Seconds between two log lines about one flow's dropped datagrams (the server's metrics cannot see these).
DROP_LOG_INTERVAL = 10.0
#: Bytes a flow's socket may hold back (its send buffer full: a link slower than the tunnel) before datagrams
#: are dropped. The loop's transport would keep every one, without bound, and send it minutes late.
MAX_SEND_BACKLOG = 64 * 1024
#: Bytes a flow keeps while its socket is made (its upstream's name resolving; an address's is made at once), as
#: many as its stream's first window lets the server send, and bytes all flows keep so: counted per flow alone, 64
#: of 64 KB waited in each, and 100 flows behind a silent DNS took 60 MB more; 64 datagrams of 100 B cut a burst.
EARLY_FLOW_BYTES = DEFAULT_INITIAL_WINDOW
EARLY_BYTES = 4 * 1024 * 1024
#: What each datagram waiting for its socket counts beyond its bytes (about what Python keeps for it): empty ones,
#: which cost the peer no credit, were counted as nothing and kept without bound.
DATAGRAM_COST = 64
#: Seconds, at most, between an answer read and a look at the kernel's count of the flow's dropped ones.
KERNEL_DROPS_INTERVAL = 1.0
#: Linux's value, not in Python's socket module: the socket's memory figures, the ninth its drop count (Linux 4.6+).
SO_MEMINFO = 55
_MEMINFO_SIZE = 9 * 4
COUNTS_KERNEL_DROPS = sys.platform == "linux"
#: A refusal fails a flow that has had no answer only within this of its start: one-way upstreams (syslog, statsd)
#: never answer, and a long-lived flow's ICMP error while such a collector restarts took the flow and marked the
#: client unreachable for the service.
REFUSAL_WINDOW = 2.0
#: Flows (in the process) whose socket takes bursts (raise_receive_buffer) at once: each may keep up to 8 MiB of
#: answers waiting to be read, so 64 MiB at most together; flows past these keep the kernel's default buffer.
BURST_FLOWS = 8


class UdpUpstream(asyncio.DatagramProtocol):
    """The client's side of one flow: a connected UDP socket to the upstream."""

    datagrams = True  # an empty DATA frame is a datagram of zero bytes, passed on (see Session)
    bursting = 0  #: flows with a burst's buffer now, of BURST_FLOWS
    early_bytes = 0  #: bytes of datagrams waiting for their flow's socket, in all flows, of EARLY_BYTES

    def __init__(self, channel: Channel, on_close: Callable[[], None] | None = None, where: str = "") -> None:
        self.channel = channel
        self.where = where  # the upstream, HOST:PORT, for the log
        self._failed = False  # its first error (ICMP) said, once per flow
        self.on_close = on_close  # told once, when the flow ends (TcpUpstreams counts the live ones)
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0
        self._unlogged = 0  # dropped since the last log line about it
        self._logged_at = float("-inf")
        self._log_later: asyncio.TimerHandle | None = None  # the line for drops the interval held back
        self._early: list[bytes | memoryview] = []  # datagrams that came before the socket did (EARLY_* bound them)
        self._early_bytes = 0
        self._sock: socket.socket | None = None  # an address's socket, made at once: used until the transport comes
        self._answered = False  # the upstream answered: an ICMP error after that does not fail the flow
        self._opened = time.monotonic()  # nor one past REFUSAL_WINDOW: a one-way upstream never answers
        self._closed = False
        self._kernel_drops = 0  # the kernel's count, as last read
        self._watch: asyncio.TimerHandle | None = None  # the next look at it, while answers come
        self._watches = False  # a socket to look at, on Linux
        self._bursts = False  # one of the BURST_FLOWS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sock = None  # the transport's now, closed with it
        self._watches = COUNTS_KERNEL_DROPS
        if self._closed:
            transport.close()
            return
        self.channel.acknowledge()  # the server's sign this client reaches its upstream, as a TCP dial's
        if UdpUpstream.bursting < BURST_FLOWS and raise_receive_buffer(transport.get_extra_info("socket")):
            UdpUpstream.bursting += 1
            self._bursts = True
        early = self._early
        self._release_early()
        for data in early:
            if self.transport is None:  # refused (ICMP) meanwhile: the flow failed
                break
            self._send(data)

    def datagram_received(self, data: bytes, address: tuple) -> None:
        self._answered = True
        if len(data) > MAX_DATAGRAM or not self.channel.write_whole(data):  # whole or not at all
            self._drop()
        if self._watch is None and self._watches:  # the kernel drops only while answers wait in the socket,
            # each read after it: a look scheduled from each read misses none
            self._watch = asyncio.get_running_loop().call_later(KERNEL_DROPS_INTERVAL, self._count_kernel_drops)

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable (nothing listens there), say. Before any answer, in the flow's first
        ``REFUSAL_WINDOW``, it fails the flow, as a refused TCP dial does: else the server, told the socket was made, kept sending this client its share of new sources
        (every other one lost, with two clients). After one, UDP carries on, as the upstream may be restarting:
        said once a flow, as a TCP dial's refusal is."""
        reason = getattr(exc, "strerror", None) or str(exc)
        if (not self._answered and getattr(exc, "errno", None) in UNREACHABLE
                and time.monotonic() - self._opened < REFUSAL_WINDOW):
            self._refused(reason)
            return
        if self._failed:
            log.debug("event=udp_upstream_error upstream=%s error=%s", logfmt(self.where), logfmt(reason))
            return
        self._failed = True
        log.info("event=upstream_failed upstream=%s proto=udp error=%s", logfmt(self.where), logfmt(reason),
                 extra={"cause": (self.where, reason)})  # per upstream and error, as a TCP dial's: one busy dead
        # upstream's flows took the kind's every line, and another's failure went unsaid

    def _refused(self, reason: str) -> None:
        """Fail the flow: the server counts its datagrams as ``upstream_failed`` and marks this client unreachable
        (``registry.unreachable``), so the source's next datagram opens a flow on another client first."""
        if self._closed:
            return
        # its flows fail one after another (a source's every datagram opens one): the log's RepeatLimit says it once
        # a window per upstream and cause, counting the rest (suppressed=N), as for a TCP dial's refusals
        log.info("event=upstream_failed upstream=%s proto=udp error=%s", logfmt(self.where), logfmt(reason),
                 extra={"cause": (self.where, reason)})
        self.close()
        self.channel.reset(ResetCode.REFUSED, f"upstream udp {self.where}: {reason}")

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
        elif self._closed:
            self._drop()
        elif self._sock is not None:  # an address: sent now, nothing waits for the transport
            self._send_now(self._sock, data)
        elif (self._early_bytes + (cost := len(data) + DATAGRAM_COST) <= EARLY_FLOW_BYTES
              and UdpUpstream.early_bytes + cost <= EARLY_BYTES):
            self._early.append(data)
            self._early_bytes += cost
            UdpUpstream.early_bytes += cost
        else:
            self._drop()
        self.channel.consumed(len(data))

    def _send_now(self, sock: socket.socket, data: bytes | memoryview) -> None:
        """A datagram on the connected socket before its transport comes (the same turn of the loop: a whole
        burst arrives in one websocket message); a full socket drops it, as the transport's would."""
        try:
            sock.send(data)  # b"" too: a plain socket sends an empty datagram
        except (BlockingIOError, InterruptedError):
            self._drop()
        except OSError as exc:  # an earlier datagram's ICMP error, given to this send
            self.error_received(exc)

    def on_eof(self) -> None:
        self.close()

    def on_reset(self, code: int, reason: str) -> None:
        self.close()

    def on_writable(self) -> None:
        pass

    def _count_kernel_drops(self) -> None:
        """Answers the kernel dropped on the flow's full socket since the last look: dropped as ours are."""
        self._watch = None
        if self.transport is None:
            return
        try:
            meminfo = self.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_SIZE)
        except OSError:  # not Linux's SO_MEMINFO after all: the flow carries on, those drops unseen as before
            return
        if len(meminfo) >= _MEMINFO_SIZE:
            count = int.from_bytes(meminfo[32:36], sys.byteorder)
            if count != self._kernel_drops:
                self._drop((count - self._kernel_drops) % 2**32)  # a 32-bit count, that may wrap
                self._kernel_drops = count

    def _drop(self, count: int = 1) -> None:
        """Datagrams lost here, on the client: said in the log (at once, then at most every DROP_LOG_INTERVAL
        seconds, and when the flow ends), as the server's udp_dataplane_dropped_total never sees them."""
        self.dropped += count
        self._unlogged += count
        now = time.monotonic()
        if now - self._logged_at >= DROP_LOG_INTERVAL:
            self._log_drops(now)
        elif self._log_later is None:  # said when the interval is up: a burst's drops, then a quiet or a busy flow
            # without more, waited for its end (60 s idle) or were never said
            delay = self._logged_at + DROP_LOG_INTERVAL - now
            self._log_later = asyncio.get_running_loop().call_later(delay, self._log_held_back)

    def _log_held_back(self) -> None:
        self._log_later = None
        if self._unlogged:
            self._log_drops(time.monotonic())

    def _log_drops(self, now: float) -> None:
        log.warning("event=udp_dropped service=%s dropped=%d flow_total=%d", logfmt(self.channel.target),
                    self._unlogged, self.dropped)
        self._unlogged = 0
        self._logged_at = now

    def _release_early(self) -> None:
        UdpUpstream.early_bytes -= self._early_bytes
        self._early, self._early_bytes = [], 0

    def close(self) -> None:
        if not self._closed:
            self._release_early()
            if self._watch is not None:
                self._watch.cancel()
            if self._watches:
                self._count_kernel_drops()
            if self.on_close is not None:
                self.on_close()
            if self._bursts:
                UdpUpstream.bursting -= 1
                self._bursts = False
            if self._log_later is not None:
                self._log_later.cancel()
                self._log_later = None
            if self._unlogged:
                self._log_drops(time.monotonic())
        self._closed = True
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def dial_udp(channel: Channel, host: str, port: int, on_close: Callable[[], None] | None = None) -> None:
    """Attach a flow to ``channel`` now (its first datagram may share the OPEN's message),
    then connect a UDP socket to the upstream; reset the stream if that fails. ``on_close``: when the flow ends.
    An address's socket is made now, so the datagrams that came with the OPEN go at once; a name's waits for it."""
    upstream = UdpUpstream(channel, on_close, authority(host, port))
    channel.handler = upstream
    sock = upstream._sock = _connected_now(host, port)
    asyncio.ensure_future(_connect(upstream, host, port, sock))


def _connected_now(host: str, port: int) -> socket.socket | None:
    """A UDP socket connected to ``host`` if it is an address (a UDP connect sends nothing: no wait); None for a
    name, or a connect that failed (said by _connect, which tries again)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                                             flags=socket.AI_NUMERICHOST)[0]
    except (OSError, UnicodeError):  # a name: never resolved here
        return None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    return sock


async def _connect(upstream: UdpUpstream, host: str, port: int, sock: socket.socket | None = None) -> None:
    loop = asyncio.get_running_loop()
    if sock is not None and upstream._closed:  # ended (refused, reset) before its transport: nothing else closes it
        sock.close()
        return
    try:
        if sock is not None:
            await loop.create_datagram_endpoint(lambda: upstream, sock=sock)
        else:
            await loop.create_datagram_endpoint(lambda: upstream, remote_addr=(host, port))
    except OSError as exc:  # said here, as a TCP dial says it: the server logs no reset, and datagrams vanished
        if sock is not None:
            sock.close()
        upstream._refused(exc.strerror or str(exc))
