"""A public UDP port's socket, answering from the address each datagram came to.

A socket bound to every interface (``::``, ``0.0.0.0``: no ``--data-addr``) sends with the source address
the kernel prefers, not the one the user wrote to. On a host with two addresses (a second IPv4
address, IPv6 with SLAAC and a static one) the answers to the second come from the first, and
clients on a connected socket (dig, DNS resolvers, WireGuard) drop them. So each datagram is read
with the address it came to (``IP_PKTINFO``, ``IPV6_PKTINFO``), and its flow's answers name that
address as their source, as unbound and dnsmasq do. asyncio's datagram transport reads with
``recvfrom``, which cannot return it: this reads with ``recvmsg`` from the loop's reader callback.
UDP has no backpressure: an answer the socket has no room for is dropped and counted, and so is a datagram
the kernel dropped because the socket's receive buffer was full (a burst faster than the loop reads):
``SO_RXQ_OVFL`` makes each read carry the socket's count of those, else they were lost unseen. The socket's
receive buffer takes a burst (core/datagram's raise_receive_buffer): with the kernel's default, 500 requests
at once lost 243 there.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import sys
from typing import Protocol

from ..core.datagram import raise_receive_buffer

#: Linux's value: Python's socket module does not export it.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
#: Linux's value, not exported either: each read then carries the socket's count of datagrams it dropped.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
#: Datagrams read per wake-up at most, so that a flood cannot hold the loop.
READ_BATCH = 64
#: Larger than any UDP payload: nothing is ever cut short.
READ_SIZE = 65536
_ANCILLARY = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4)  # one in6_pktinfo (20 bytes) or in_pktinfo (12), a count


class DatagramSink(Protocol):
    def connection_made(self, transport: UdpSocket) -> None: ...

    def datagram_received(self, data: bytes, address: tuple, local: bytes | None) -> None: ...

    def send_failed(self) -> None: ...

    def overflowed(self, count: int) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class UdpSocket:
    """One bound UDP socket on the loop; ``local`` values are what ``sendto`` needs to answer from there."""

    def __init__(self, sock: socket.socket, sink: DatagramSink) -> None:
        self.sock = sock
        self.sink = sink
        self.loop = asyncio.get_running_loop()
        self.family = sock.family
        self.pktinfo = _wildcard(sock) and sys.platform == "linux"
        if self.pktinfo:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.overflows = 0  # the kernel's count of datagrams it dropped here, as last read
        self.counts_overflows = sys.platform == "linux"
        if self.counts_overflows:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self.closed = False
        sink.connection_made(self)
        self.loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def bind(cls, host: str | None, port: int, sink: DatagramSink) -> UdpSocket:
        """``host`` None: every interface, both IPv6 and IPv4 where the host has IPv6. ``OSError`` as a bind's."""
        if host is None:
            try:
                return cls(_bound(socket.AF_INET6, ("::", port), dual_stack=True), sink)
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                return cls(_bound(socket.AF_INET, ("0.0.0.0", port)), sink)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                                               flags=socket.AI_PASSIVE)
        error: OSError | None = None
        for family, _, _, _, address in infos:
            try:
                return cls(_bound(family, address), sink)
            except OSError as exc:
                error = exc
        raise error or OSError(errno.EADDRNOTAVAIL, f"no address for {host}")

    def _readable(self) -> None:
        sock, sink = self.sock, self.sink
        for _ in range(READ_BATCH):
            try:
                if self.pktinfo or self.counts_overflows:
                    data, ancillary, _, address = sock.recvmsg(READ_SIZE, _ANCILLARY)
                    local = _answer_from(ancillary) if self.pktinfo else None
                    self._count_overflows(ancillary)
                else:
                    data, address = sock.recvfrom(READ_SIZE)
                    local = None
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket: that datagram is gone, the next ones are not
                continue
            sink.datagram_received(data, address, local)
            if self.closed:
                return

    def _count_overflows(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                count = int.from_bytes(data[:4], sys.byteorder)
                if count != self.overflows:
                    self.sink.overflowed((count - self.overflows) % 2**32)  # a 32-bit count, that may wrap
                    self.overflows = count

    def sendto(self, data: bytes | memoryview, address: tuple, local: bytes | None = None) -> None:
        """Send now or drop (counted): ``local`` makes the datagram leave from the address its flow wrote to."""
        try:
            if local is not None:
                level = socket.IPPROTO_IPV6 if self.family == socket.AF_INET6 else socket.IPPROTO_IP
                kind = socket.IPV6_PKTINFO if self.family == socket.AF_INET6 else IP_PKTINFO
                self.sock.sendmsg([data], [(level, kind, local)], 0, address)
            else:
                self.sock.sendto(data, address)
        except OSError as exc:
            if local is not None and exc.errno == errno.EINVAL:  # came to a multicast address: no source to answer from
                self.sendto(data, address)
                return
            self.sink.send_failed()  # a full socket buffer, an address gone from the host: lost, as UDP may lose it

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "socket":
            return self.sock
        if name == "sockname":
            return self.sock.getsockname()
        return default

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.loop.call_soon(self.sink.connection_lost, None)  # as a transport's close: later, not from inside


def _bound(family: int, address: tuple, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        sock.bind(address)
        raise_receive_buffer(sock)  # one per public port: bounded by the server's ports
    except OSError:
        sock.close()
        raise
    return sock


def _wildcard(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_unspecified


def _answer_from(ancillary: list[tuple[int, int, bytes]]) -> bytes | None:
    """The pktinfo to send an answer with, from a datagram's: its local address, the interface left to routing
    (a reply may leave by another interface than the request came in) except for a link-local address,
    which means something only on its own link."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            link_local = data[0] == 0xFE and data[1] & 0xC0 == 0x80
            return data[:16] + (data[16:20] if link_local else b"\0\0\0\0")
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return b"\0\0\0\0" + data[4:8] + b"\0\0\0\0"  # ipi_spec_dst: the local address (for a broadcast, the interface's)
    return None
