"""Local forwarding, the client's side: ``--local`` listeners, one stream per accepted connection.

Each stream targets ``forward:HOST:REMOTE_PORT``; the server decides whether it may dial
that target (server/forwarding.py).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import logging
from dataclasses import dataclass
from typing import Callable

from ..core.logs import logfmt
from ..core.bridge import TcpBridge
from ..core.hosts import authority, is_ip
from ..core.listen import listen
from ..core.mux import ResetCode, StreamError, StreamLimit
from ..core.ports import parse_port
from ..core.services import FORWARD_PREFIX, format_target, parse_target
from ..core.session import Session

log = logging.getLogger("inlets.forward")


@dataclass(frozen=True)
class LocalForward:
    local_port: int
    host: str
    remote_port: int

    @property
    def target(self) -> str:
        return format_target(self.host, self.remote_port)


def parse_local_forward(text: str) -> LocalForward:
    """``5432:127.0.0.1:5432`` or ``6379:[::1]:6379`` (LOCAL_PORT:HOST:REMOTE_PORT). A port out of range is named:
    "must be LOCAL_PORT:HOST:REMOTE_PORT" alone, for ``70000:127.0.0.1:5432``, blamed a shape the user had given.
    A HOST with a colon must be an IPv6 address in brackets, as --upstream's: ``foo:bar`` or ``127.0.0.1:42200``
    (a port too many) was sent to the server as ``forward:[foo:bar]:5432``, which only a live server refused."""
    shape = f"--local must be LOCAL_PORT:HOST:REMOTE_PORT, got {text!r}"
    local, sep, rest = text.partition(":")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        colon, remote = tail[:1] == ":", tail[1:]
        ipv6 = ":" in host and is_ip(host)
    else:
        host, colon, remote = rest.rpartition(":")
        bracket, ipv6 = "-", ":" not in host
    if not ipv6:
        raise ValueError(f"--local must be LOCAL_PORT:HOST:REMOTE_PORT (an IPv6 HOST in brackets: [::1]), got {text!r}")
    if not (sep and local and host and bracket and colon and remote):
        raise ValueError(shape)
    for name, port in (("LOCAL_PORT", local), ("REMOTE_PORT", remote)):
        if parse_port(port) is None:
            raise ValueError(f"{shape}: {name} {port!r} is not a port between 1 and 65535")
    try:
        host, number = parse_target(FORWARD_PREFIX + rest)
    except ValueError:
        raise ValueError(shape) from None
    return LocalForward(int(local), host, number)


#: How long a local connection made while the tunnel is down (starting, reconnecting) waits for it before it is
#: reset: the listeners open first, so a user who connected a moment too soon was reset though the tunnel was near.
TUNNEL_WAIT = 10.0
#: How often the forwarder looks for the tunnel while connections wait: one timer for all of them.
TUNNEL_POLL = 0.05
#: Connections that may wait at once, all --local ports together (the client passes its --max-streams: it opens no
#: more streams at once when the tunnel is back). The rest are reset at once: each waiting one holds a descriptor.
MAX_WAITING = 1024
#: While connections wait, the client is asked to connect now (``wake``) at most this often: its backoff grows to
#: 30 s, so a user who came when the server was back waited out TUNNEL_WAIT and was reset; a user who connects in
#: a loop makes it dial once a second at most.
WAKE_EVERY = 1.0


#: What a stream limit's "limit of N open streams" leaves out: whose limit it is, and the flag that moves it.
OWN_LIMIT = "this client's --max-streams: raise it, or wait for open local connections to end"
SERVER_LIMIT = "the server's --max-client-streams: raise it there, or wait for this client's connections to end"


def _next(step: str) -> str:
    """`` next=STEP`` (quoted) for a log line, or nothing."""
    return f" next={logfmt(step)}" if step else ""


class _LocalConnection(TcpBridge):
    accepted = True  # from ``listen``: TCP_NOTSENT_LOWAT came with the socket

    def __init__(self, forward: LocalForward, forwarder: LocalForwarder) -> None:
        super().__init__()
        self.forward = forward
        self.forwarder = forwarder
        self.deadline = 0.0  # loop time at which waiting for the tunnel ends
        self._paused = False  # reading paused while waiting (resumed once attached)
        self._held: list[bytes] = []  # what the user sent before reading paused: one read at most
        self._held_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.forwarder.arrived(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.forwarder.waiting.pop(self, None)  # the user left while waiting
        super().connection_lost(exc)

    def hold(self) -> None:
        """Read nothing while the tunnel is down. Called soon after ``connection_made``: uvloop starts reading
        after it, so a pause there is undone; one read that came first is kept (``data_received``)."""
        if self.channel is None and not self._done and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.channel is None and not self._done:  # waiting for the tunnel: keep it, and read no more until then
            self._held.append(data)
            self.hold()
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.channel is None and not self._done:  # the user half-closed while waiting: passed on once attached
            self._held_eof = True
            return True
        return super().eof_received()

    def open(self, session: Session) -> None:
        """Open the stream through the tunnel and pass on what the user sent while waiting."""
        if self._done or self.transport is None:  # the user left
            return
        try:
            self.attach(session.open_stream(self.forward.target, self))
        except StreamError as exc:  # the server drains (GOAWAY) or the session is closing: said, not a silent reset
            next_step = _next(OWN_LIMIT if isinstance(exc, StreamLimit) else "")
            log.warning("event=forward_refused local_port=%d remote=%s reason=%s%s", self.forward.local_port,
                        logfmt(self.forward.target), logfmt(exc), next_step)
            self.abort()
            return
        held, self._held = self._held, []
        for data in held:
            super().data_received(data)
        if self._held_eof:
            super().eof_received()
        elif self._paused and self._pending is None:  # else on_writable resumes once the stream takes the rest
            self.transport.resume_reading()  # type: ignore[attr-defined]
        self._paused = False

    def on_reset(self, code: int, reason: str) -> None:
        """The server refused the stream (its service down, its --max-client-streams, its allow-list): the user
        only sees a reset, so the server's reason is logged here; the server's log is not the user's to read."""
        if code != ResetCode.CANCEL:
            next_step = _next(SERVER_LIMIT if code == ResetCode.TOO_MANY_STREAMS else "")
            log.warning("event=forward_failed local_port=%d remote=%s reason=%s%s", self.forward.local_port,
                        logfmt(self.forward.target), logfmt(reason), next_step)
        super().on_reset(code, reason)


class ForwardListenError(OSError):
    """A --local port cannot be opened; str() says which, why, and what to do."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        where = authority(host, port)
        reason = os.strerror(exc.errno) if exc.errno else "the address cannot be used here"
        step = ("another program uses it: stop it, or pick another LOCAL_PORT" if exc.errno == errno.EADDRINUSE
                else "check --local-addr")
        super().__init__(exc.errno, f"cannot listen on {where} for --local: {reason}: {step}")


class LocalForwarder:
    """The client's side: local listeners, one stream per accepted connection. While the tunnel is down, accepted
    connections wait for it in arrival order (at most ``max_waiting``), all looked after by one timer."""

    def __init__(self, forwards: list[LocalForward], local_addr: str, session: Callable[[], Session | None],
                 max_waiting: int = MAX_WAITING, wake: Callable[[], None] | None = None) -> None:
        self.forwards = forwards
        self.local_addr = local_addr
        self.session = session
        self.max_waiting = max_waiting
        self.wake = wake  # the client's ``reconnect_now``: connect now, not at the end of its backoff
        self._woken = float("-inf")  # loop time ``wake`` was last called
        self.listeners: list[asyncio.base_events.Server] = []
        self.waiting: dict[_LocalConnection, None] = {}  # oldest first; reset at shutdown (``stop``)
        self._timer: asyncio.TimerHandle | None = None
        self._turned_away = 0  # users reset at once since the queue last emptied: said once

    @property
    def targets(self) -> list[str]:
        return [f.target for f in self.forwards]

    async def start(self) -> None:
        for forward in self.forwards:
            try:
                listener = await listen(functools.partial(_LocalConnection, forward, self),
                                        self.local_addr, forward.local_port)
            except OSError as exc:  # the OS's reason and the next step, not asyncio's wrapper with its Python tuple
                raise ForwardListenError(self.local_addr, forward.local_port, exc) from None
            self.listeners.append(listener)
            log.info("event=forwarding local=%s remote=%s", logfmt(authority(self.local_addr, forward.local_port)),
                     logfmt(forward.target))

    def _up(self) -> Session | None:
        """The session new users go through, or None while they wait. One the server drains (GOAWAY: restarting)
        counts as down: it refused them at once, while the client was already dialling its replacement. Our own
        GOAWAY (this client stopping) does not: no replacement comes, so they are refused and it is said."""
        session = self.session()
        if session is None or session.closed.is_set() or session.mux.peer_going_away:
            return None
        return session

    def arrived(self, connection: _LocalConnection) -> None:
        """A user connected: through the tunnel if it is up (after those waiting), else it waits, if there is room."""
        session = self._up()
        if session is not None:
            self._release(session)
            connection.open(session)
            return
        if len(self.waiting) >= self.max_waiting:
            self._turned_away += 1
            if self._turned_away == 1:  # once while the queue stays full, not a line per user
                log.warning("event=forward_unavailable local_port=%d reason=too_many_waiting waiting=%d next=%s",
                            connection.forward.local_port, len(self.waiting),
                            logfmt("further local connections are reset until the tunnel is back; at most "
                                   "--max-streams wait for it"))
            connection.abort()
            return
        loop = asyncio.get_running_loop()
        connection.deadline = loop.time() + TUNNEL_WAIT
        self.waiting[connection] = None
        loop.call_soon(connection.hold)
        self._wake(loop)
        if self._timer is None:
            self._timer = loop.call_later(TUNNEL_POLL, self._poll)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """Users wait: have the client connect now (at most every WAKE_EVERY), not when its backoff ends."""
        if self.wake is not None and loop.time() - self._woken >= WAKE_EVERY:
            self._woken = loop.time()
            self.wake()

    def _poll(self) -> None:
        """Every TUNNEL_POLL while connections wait: all go through if the tunnel is back; those past their wait
        are reset (the oldest first: a line per port, not per user)."""
        self._timer = None
        session = self._up()
        if session is not None:
            self._release(session)
            return
        loop = asyncio.get_running_loop()
        expired: dict[int, int] = {}
        while self.waiting:
            oldest = next(iter(self.waiting))
            if oldest.deadline > loop.time():
                break
            del self.waiting[oldest]
            expired[oldest.forward.local_port] = expired.get(oldest.forward.local_port, 0) + 1
            oldest.abort()
        for port, users in expired.items():
            log.warning("event=forward_unavailable local_port=%d reason=tunnel_down waited=%gs users=%d", port,
                        TUNNEL_WAIT, users)
        if self.waiting:
            self._wake(loop)  # the last try failed (the server still down): another, while they still wait
            self._timer = loop.call_later(TUNNEL_POLL, self._poll)
        else:
            self._turned_away = 0

    def _release(self, session: Session) -> None:
        """The tunnel is up: those waiting go through, in the order they came."""
        waiting, self.waiting = self.waiting, {}
        self._turned_away = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for connection in waiting:
            connection.open(session)

    def stop(self) -> None:
        """Close the listeners, and reset the users still waiting for the tunnel: no stream drains for them."""
        for listener in self.listeners:
            listener.close()
        waiting, self.waiting = self.waiting, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for connection in waiting:
            connection.fail()
            connection.abort()
