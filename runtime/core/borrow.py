"""A socket object over a descriptor an event loop owns, for a call its transport does not offer.

The loop keeps the descriptor, so the object is detached, never closed, when the call is done. It is
made non-blocking whatever the interpreter's constructor did: PyPy's makes the descriptor blocking
(CPython's leaves it as the loop set it), and a borrowed listener's next ``accept`` then held the whole
loop until someone connected.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator


@contextlib.contextmanager
def borrowed(fd: int, family: int = -1, kind: int = -1, proto: int = -1) -> Iterator[socket.socket]:
    """``socket.socket`` over ``fd`` (-1: asked of the descriptor), non-blocking, detached afterwards."""
    sock = socket.socket(family, kind, proto, fd)
    try:
        sock.setblocking(False)
        yield sock
    finally:
        sock.detach()
