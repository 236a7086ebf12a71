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
import errno
import functools
import os
import socket
from typing import Any

from aiohappyeyeballs import start_connection

from .dial_failures import failure_words
from .hosts import is_ip

#: RFC 8305's recommended Connection Attempt Delay.
DELAY = 0.25


class AddressesFailed(OSError):
    """Every address of a name failed, not all alike (refused on one, unreachable on another): no errno, the words
    of each failure with its addresses as ``strerror``."""

    def __str__(self) -> str:
        return self.strerror or ""


class _Noting:
    """The running loop, noting each address's failed connect: aiohappyeyeballs keeps them to itself, and when
    their errnos differ it raises one OSError without errno ("Multiple exceptions: ..."), logged as "dial failed"."""

    def __init__(self, loop: asyncio.AbstractEventLoop, failures: list[tuple[Any, OSError]]) -> None:
        self._loop, self._failures = loop, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        try:
            if len(address) == 4 and address[3]:  # fe80::1%eth0: uvloop's sock_connect drops the zone (scope 0)
                await _connect_scoped(self._loop, sock, address)
            else:
                await self._loop.sock_connect(sock, address)
        except OSError as exc:
            self._failures.append((address, exc))
            raise


async def _connect_scoped(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple) -> None:
    """Connect the non-blocking ``sock`` to an IPv6 address with its scope id, as asyncio's ``sock_connect`` does:
    uvloop's resolves the address again and dials it with scope 0, so a link-local server failed with "Invalid
    argument" (or timed out) where the system says "Network is unreachable" or connects."""
    error = sock.connect_ex(address)
    if error == errno.EINPROGRESS:
        writable = loop.create_future()
        loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
        try:
            await writable
        finally:
            loop.remove_writer(sock.fileno())
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


@functools.lru_cache(maxsize=64)
def is_name(host: str) -> bool:
    """Whether ``host`` is a name, which ``connect_socket`` dials (an address the loop dials at once); cached: a
    ``--local`` target's host is asked at every stream (a client's upstreams ask once, ``Upstream.opener``)."""
    return bool(host) and not is_ip(host)


async def connect_socket(host: str, port: int, delay: float = DELAY,
                         failures: list[tuple[Any, OSError]] | None = None) -> socket.socket:
    """A connected non-blocking TCP socket to ``host``:``port``, the first of its addresses to answer. When none
    does: one OSError whose errno all the failures shared (refused, as a rule), so the log names it, or, when they
    differ, ``AddressesFailed`` saying each. ``failures``, when given, gets each address's failure as it comes: a
    caller whose timeout cancels the dial (one address refused, another dropping SYNs) can still say them."""
    loop = asyncio.get_running_loop()
    if "%" in host:  # fe80::1%eth0: uvloop's getaddrinfo drops the zone (scope 0: "Invalid argument", or a timeout
        # where the system says "Network is unreachable"); numeric, so this lookup cannot block
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    else:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if failures is None:
        failures = []
    try:
        sock = await start_connection(addresses, happy_eyeballs_delay=delay, loop=_Noting(loop, failures))  # type: ignore[arg-type]
    except OSError as exc:
        if exc.errno is not None or len(failures) < 2:
            raise
        raise AddressesFailed(None, failure_words(failures)) from None
    sock.setblocking(False)
    return sock
