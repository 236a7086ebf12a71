"""UDP socket helpers both sides use: a datagram of zero bytes, and a receive buffer for bursts.

A zero-length datagram is a valid one (some protocols use it as a keep-alive or a probe), so the
tunnel carries it; asyncio's and uvloop's ``sendto`` drop it without a word: its last step, out of
the socket, needs the socket itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

from .borrow import borrowed
from .logs import logfmt

log = logging.getLogger("inlets.udp")


def send_empty(transport: asyncio.DatagramTransport, address: tuple | None = None) -> None:
    """Send b"" on the transport's socket (connected when ``address`` is None)."""
    fd = transport.get_extra_info("socket").fileno()
    try:
        if address is None:
            os.write(fd, b"")  # a connected UDP socket sends a zero-length write as an empty datagram
        else:
            with borrowed(fd) as sock:
                sock.sendto(b"", address)
    except OSError:  # as sendto's own errors: the datagram is lost, as UDP may lose it
        pass


#: SO_RCVBUF asked for a socket that takes bursts (the kernel allows twice this for its own accounting): 3,640
#: datagrams of 1 KB wait in it, where the usual default (212,992, Linux's rmem_default) holds 92.
BURST_RECEIVE_BUFFER = 4 * 1024 * 1024
#: Linux's value, not in Python's socket module: SO_RCVBUF past ``net.core.rmem_max``, for CAP_NET_ADMIN.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)
RMEM_MAX = "/proc/sys/net/core/rmem_max"
_warned = False  # the short buffer said once a process: every port and flow after it gets the same cap


def raise_receive_buffer(sock: socket.socket, size: int = BURST_RECEIVE_BUFFER) -> int:
    """Let ``sock`` hold a burst the loop has not read yet, rather than the kernel drop it; the size it got.

    Memory is taken only while datagrams wait. The kernel caps SO_RCVBUF at ``net.core.rmem_max``; a root
    process (CAP_NET_ADMIN) passes that cap with SO_RCVBUFFORCE, as quic-go does. Never lowers the buffer."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 2 * size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            if SO_RCVBUFFORCE is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 2 * size:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                except PermissionError:  # not root: rmem_max's cap stands
                    pass
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:  # a platform without these options: its default buffer, as before
        return 0
    if got < size and sys.platform == "linux":  # under half the 2 * size a granted one reports: said once
        _warn_short(size, got)
    return got


def _warn_short(size: int, got: int) -> None:
    """Say once, with the fix, that the kernel's cap left the buffer short: a non-root server (a systemd unit's
    user) got 425,984 bytes where it asked 4 MiB, and a burst of 500 requests lost 243 with no word in the log."""
    global _warned
    if _warned:
        return
    _warned = True
    try:
        with open(RMEM_MAX) as file:
            cap = file.read().strip()
    except OSError:
        cap = "?"
    log.warning("event=udp_receive_buffer_small asked=%d got=%d rmem_max=%s fix=%s", size, got, logfmt(cap),
                logfmt(f"bursts past it are dropped: as root, sysctl -w net.core.rmem_max={size}, and the line "
                       f"net.core.rmem_max={size} in /etc/sysctl.d/30-inlets-udp.conf keeps it (README: UDP)"))
