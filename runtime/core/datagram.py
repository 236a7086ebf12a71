"""Send a UDP datagram of zero bytes, which asyncio's and uvloop's ``sendto`` drop without a word.

A zero-length datagram is a valid one (some protocols use it as a keep-alive or a probe), so the
tunnel carries it; only its last step, out of the socket, needs the socket itself.
"""

from __future__ import annotations

import asyncio
import os

from .borrow import borrowed


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
