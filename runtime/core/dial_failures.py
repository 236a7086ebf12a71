"""The words for a name's failed dials (``Connection refused on 127.0.0.1:80, [::1]:80``), apart from eyeballs.py.

The bridge says them when a dial to a name times out. Kept out of eyeballs.py, which imports aiohappyeyeballs:
the HTTP exit server, which never dials a name, would otherwise carry that module and its package in its wheel.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from .hosts import authority

#: What a dial's (or an ICMP error's) errno reads as when nothing at that address could be reached: a port nothing
#: listens on, a host or network with no way there.
UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})

#: At most this many addresses named per failure in ``AddressesFailed``: a name may have dozens.
SHOWN = 4


def failure_words(failures: list[tuple[Any, OSError]]) -> str:
    """``Connection refused on 127.0.0.1:80, [::1]:80; Network is unreachable on [2001:db8::1]:80``: each failure's
    words, in the order they first came, with at most ``SHOWN`` of their addresses."""
    where: dict[str, list[str]] = {}
    for address, exc in failures:
        words = (exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else os.strerror(exc.errno)) or (
            str(exc) or "the connection failed")  # a resolver's code (uvloop resolves an address again) is no errno
        where.setdefault(words, []).append(authority(address[0], address[1]))
    return "; ".join(f"{words} on {', '.join(named[:SHOWN])}" + (f" and {len(named) - SHOWN} more" if len(named) > SHOWN
                                                                  else "") for words, named in where.items())
