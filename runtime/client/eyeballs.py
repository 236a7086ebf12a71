"""Connecting to a host name with several addresses: Happy Eyeballs (RFC 8305), on asyncio and uvloop alike.

The event loops try a name's addresses one after another, each until it fails: an address that drops
SYNs (``localhost`` as ::1 and 127.0.0.1 where only one listens behind a firewall, a dead A or AAAA
record) took the whole dial timeout, every time, and the next address was never tried. asyncio's own
``happy_eyeballs_delay`` is not in uvloop. Here each next address is tried ``DELAY`` after the one
before, or at once when it fails; the first connected socket wins, in getaddrinfo's order of preference.
The name is resolved at every dial: a record that changes is followed without a restart.
"""

from __future__ import annotations

import asyncio
import functools
import socket

from ..core.hosts import is_ip

#: RFC 8305's recommended Connection Attempt Delay.
DELAY = 0.25


@functools.lru_cache(maxsize=64)
def is_name(host: str) -> bool:
    """Whether ``host`` is a name, which ``connect_socket`` dials (an address the loop dials at once); cached: an
    upstream's host is asked at every stream."""
    return bool(host) and not is_ip(host)


async def _attempt(info: tuple) -> socket.socket:
    sock = socket.socket(*info[:3])
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, info[4])
    except BaseException:
        sock.close()
        raise
    return sock


def _close(task: asyncio.Future) -> None:
    """A socket that connected as its attempt was cancelled (another won meanwhile) is closed, not leaked."""
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def connect_socket(host: str, port: int, delay: float = DELAY) -> socket.socket:
    """A connected non-blocking TCP socket to ``host``:``port``, the first of its addresses to answer; when none
    does, the first error (all alike, as a rule: refused)."""
    waiting = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    running: set[asyncio.Future] = set()
    failures: list[BaseException] = []
    try:
        while waiting or running:
            if waiting:
                running.add(asyncio.ensure_future(_attempt(waiting.pop(0))))
            done, running = await asyncio.wait(running, timeout=delay if waiting else None,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failures += [task.exception()] if task.exception() else []
            won = [task.result() for task in done if not task.exception()]
            for sock in won[1:]:  # two answered in the same turn
                sock.close()
            if won:
                return won[0]
    finally:
        for task in running:
            task.cancel()
            task.add_done_callback(_close)
    raise failures[0]
