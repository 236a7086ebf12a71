"""Listeners that take every waiting connection when the loop wakes them, not one per turn of the loop.

Since libuv 1.45 (uvloop 0.18 on), a listener accepts one connection per turn of the event loop
(libuv pull request 3696: a second ``accept`` mostly fails with EAGAIN). A turn of a busy tunnel
server lasts 10-50 ms, as it passes on hundreds of requests, so users who connect together queue in
the kernel's accept queue: wrk's 1,000 connections through the HTTP tunnel took 2-3 s to be all
accepted, and their first requests made the run's p99 6-7 s (measured; asyncio's own loop accepts up
to the backlog per wake). Here uvloop's accept of one connection also takes the rest of the queue:
the protocol factory, which uvloop calls for the connection it accepted, accepts up to
``ACCEPT_BATCH`` more on the listening sockets where more wait and hands each to ``connect_accepted_socket``.
When nothing else waits, that costs one ``poll`` per connection.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import select
import socket
import ssl
import weakref
from typing import Callable, Iterable

from .borrow import borrowed
from .bridge import tune_socket
from .hosts import authority
from .logs import logfmt

log = logging.getLogger("inlets.listen")

#: Connections a listener queues before accepting: a thousand users arriving at once overflowed asyncio's
#: default of 100, and a dropped SYN is retried only after 1 s, then 3.
LISTEN_BACKLOG = 1024
#: Connections taken from the queue per connection the loop accepts: bounds the work of one wake-up.
ACCEPT_BATCH = 128


class BindError(OSError):
    """A listener of the server's own that could not be opened (a port taken, say), and which one: ``role`` is
    "control", "data" or "https", for an error that names the port and the flag that moves it."""

    def __init__(self, cause: OSError, role: str, host: str | None, port: int) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.cause, self.role, self.host = cause, role, host
        self.where = authority(host or "*", port)


async def listen_as(role: str, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None, port: int,
                    **kwargs) -> asyncio.Server:
    """``listen``, its failure a ``BindError`` that says which of the server's listeners it was."""
    try:
        return await listen(protocol_factory, host, port, **kwargs)
    except OSError as exc:
        raise BindError(exc, role, host, port) from exc


class _Drain:
    """The protocol factory handed to ``create_server``: each call first takes what else waits."""

    def __init__(self, protocol_factory: Callable[[], asyncio.BaseProtocol], ssl_context: ssl.SSLContext | None,
                 ssl_handshake_timeout: float | None) -> None:
        self.protocol_factory = protocol_factory
        self.ssl = ssl_context
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.families: dict[int, int] = {}  # the server's listening sockets: descriptor -> address family
        #: Asks the kernel which of them has connections waiting: one system call, where trying an ``accept``
        #: on each costs a socket object and an exception apiece (7% more instructions per connection, measured).
        self.waiting = select.poll()
        self.pending: set[asyncio.Task] = set()

    def listen_on(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self.families[sock.fileno()] = sock.family
            self.waiting.register(sock.fileno(), select.POLLIN)

    def __call__(self) -> asyncio.BaseProtocol:
        for fd, events in self.waiting.poll(0):
            if events & select.POLLIN:
                self._take(self.families[fd], fd)
        return self.protocol_factory()

    def _take(self, family: int, fd: int) -> None:
        # The listener's descriptor, borrowed for the length of the call: the server owns it, and while it
        # calls this factory the descriptor is open.
        with borrowed(fd, family, socket.SOCK_STREAM, 0) as listener:
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:  # EMFILE and the like: the rest waits for the loop's own accept
                    log.warning("event=accept_failed error=%s", logfmt(exc.strerror or exc))
                    return
                self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        loop = asyncio.get_running_loop()
        kwargs = {} if self.ssl is None else {"ssl": self.ssl, "ssl_handshake_timeout": self.ssl_handshake_timeout}
        task = loop.create_task(loop.connect_accepted_socket(self.protocol_factory, conn, **kwargs))
        self.pending.add(task)
        task.add_done_callback(lambda done: self._started(done, conn))

    def _started(self, task: asyncio.Task, conn: socket.socket) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a TLS handshake that failed, say: as the loop's own
            conn.close()


_watched: weakref.WeakSet = weakref.WeakSet()  # loops whose descriptors are watched


def _watch_descriptors(loop: asyncio.AbstractEventLoop, said: float = -60.0) -> None:
    """Out of descriptors, uvloop (libuv's EMFILE trick) closes waiting users unlogged: checked each second."""
    _watched.add(loop)
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:  # only these say descriptors ran out: no /dev/null (a bare chroot) is ENOENT
        if exc.errno in (errno.EMFILE, errno.ENFILE) and loop.time() - said >= 60:
            said = loop.time()
            log.warning("event=out_of_descriptors error=%s next=%s", logfmt(exc.strerror),
                        logfmt("raise the open-files limit (ulimit -n; LimitNOFILE=)"))
    loop.call_later(1.0, _watch_descriptors, loop, said)


def _no_socket() -> OSError:
    """Why ``create_server`` made no socket: asyncio and uvloop skip an address whose ``socket()`` fails, as if
    its family were unsupported, and return a server listening nowhere. Out of descriptors (EMFILE), a TCP server
    logged event=listening and welcomed a client to ports nobody could reach: the error, made again, says so."""
    try:
        socket.socket().close()
    except OSError as exc:
        return exc
    return OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))


def _any_ipv6(host: str) -> bool:
    """``::`` (however written): every address, as Linux and Go read it, so IPv4 too."""
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def _dual_stack(port: int) -> socket.socket:
    """A socket bound to ``[::]:port`` that takes IPv4 users too: asyncio and uvloop set IPV6_V6ONLY on every
    IPv6 listener, so ``--data-addr ::`` refused IPv4 on a TCP port, while a UDP port on ``::`` took it."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as create_server does
        sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_address(host: str | None, port: int) -> dict:
    """``create_server``'s address arguments (``serve``'s too): ``::`` as a socket of its own that takes IPv4 too."""
    if host is not None and _any_ipv6(host):
        return {"host": None, "port": None, "sock": _dual_stack(port)}
    return {"host": host, "port": port}


async def listen(protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None, port: int, *,
                 ssl_context: ssl.SSLContext | None = None, ssl_handshake_timeout: float | None = None) -> asyncio.Server:
    """``loop.create_server`` with ``LISTEN_BACKLOG``, whose every accept also takes the rest of the queue, and
    whose sockets are all accepted with TCP_NOTSENT_LOWAT (``bridge.tune_socket``)."""
    drain = _Drain(protocol_factory, ssl_context, ssl_handshake_timeout)
    kwargs = {} if ssl_context is None else {"ssl": ssl_context, "ssl_handshake_timeout": ssl_handshake_timeout}
    server = await asyncio.get_running_loop().create_server(drain, **bind_address(host, port), backlog=LISTEN_BACKLOG,
                                                            **kwargs)
    if not server.sockets:
        server.close()
        raise _no_socket()
    for sock in server.sockets:
        tune_socket(sock)  # every socket it accepts inherits TCP_NOTSENT_LOWAT: none is tuned one by one
    drain.listen_on(server.sockets)
    if (loop := asyncio.get_running_loop()) not in _watched:
        _watch_descriptors(loop)
    return server
