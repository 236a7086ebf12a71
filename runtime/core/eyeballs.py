"""Connecting to a host name with several addresses: Happy Eyeballs (RFC 8305), on asyncio and uvloop alike: the
client's server and upstreams, and the server's local-forwarding targets.

The event loops try a name's addresses one after another, each until it fails: an address that drops
SYNs (``localhost`` as ::1 and 127.0.0.1 where only one listens behind a firewall, a dead A or AAAA
record) took the whole dial timeout, every time, and the next address was never tried. asyncio's own
``happy_eyeballs_delay`` is not in uvloop, so the race is aiohappyeyeballs' (aio-libs, what aiohttp
dials with): each next address ``DELAY`` after the one before, or at once when it fails, IPv6 and IPv4
interleaved. The name is resolved at every dial: a record that changes is followed without a restart.
"""

from __future__ import annotations

import asyncio
import functools
import socket

from aiohappyeyeballs import start_connection

from .hosts import is_ip

#: RFC 8305's recommended Connection Attempt Delay.
DELAY = 0.25


@functools.lru_cache(maxsize=64)
def is_name(host: str) -> bool:
    """Whether ``host`` is a name, which ``connect_socket`` dials (an address the loop dials at once); cached: an
    upstream's host is asked at every stream."""
    return bool(host) and not is_ip(host)


async def connect_socket(host: str, port: int, delay: float = DELAY) -> socket.socket:
    """A connected non-blocking TCP socket to ``host``:``port``, the first of its addresses to answer. When none
    does: one OSError whose errno all the failures shared (refused, as a rule), so the log names it."""
    addresses = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    sock = await start_connection(addresses, happy_eyeballs_delay=delay)
    sock.setblocking(False)
    return sock
