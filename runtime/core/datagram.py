"""Send a UDP datagram of zero bytes, which asyncio's and uvloop's ``sendto`` drop without a word.

A zero-length datagram is a valid one (some protocols use it as a keep-alive or a probe), so the
tunnel carries it; only its last step, out of the socket, needs the socket itself.
"""

from __future__ import annotations

import asyncio
import os
import socket


def send_empty(transport: asyncio.DatagramTransport, address: tuple | None = None) -> None:
    """Send b"" on the transport's socket (connected when ``address`` is None)."""
    fd = transport.get_extra_info("socket").fileno()
    try:
        if address is None:
            os.write(fd, b"")  # a connected UDP socket sends a zero-length write as an empty datagram
        else:
            sock = socket.socket(fileno=fd)  # a socket object on the transport's descriptor, given back below
            sock.setblocking(False)  # as the loop keeps it (PyPy's constructor makes it blocking)
            try:
                sock.sendto(b"", address)
            finally:
                sock.detach()
    except OSError:  # as sendto's own errors: the datagram is lost, as UDP may lose it
        pass
