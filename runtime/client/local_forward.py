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
from ..core.hosts import authority
from ..core.listen import listen
from ..core.mux import ResetCode, StreamError
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
    """``5432:127.0.0.1:5432`` or ``6379:[::1]:6379`` (LOCAL_PORT:HOST:REMOTE_PORT)."""
    local, sep, rest = text.partition(":")
    local_port = parse_port(local)
    if not sep or local_port is None:
        raise ValueError(f"--local must be LOCAL_PORT:HOST:REMOTE_PORT, got {text!r}")
    try:
        host, port = parse_target(FORWARD_PREFIX + rest)
    except ValueError:
        raise ValueError(f"--local must be LOCAL_PORT:HOST:REMOTE_PORT, got {text!r}") from None
    return LocalForward(local_port, host, port)


#: How long a local connection made while the tunnel is down (starting, reconnecting) waits for it before it is
#: reset: the listeners open first, so a user who connected a moment too soon was reset though the tunnel was near.
TUNNEL_WAIT = 10.0
#: How often a waiting connection looks for the tunnel.
TUNNEL_POLL = 0.05


class _LocalConnection(TcpBridge):
    accepted = True  # from ``listen``: TCP_NOTSENT_LOWAT came with the socket

    def __init__(self, forward: LocalForward, session: Callable[[], Session | None],
                 waiting: set[_LocalConnection]) -> None:
        super().__init__()
        self.forward = forward
        self.session = session
        self.waiting = waiting  # connections waiting for the tunnel, reset at shutdown (LocalForwarder.stop)
        self._deadline = 0.0
        self._held: list[bytes] = []  # what the user sent while waiting: one read, then reading pauses
        self._held_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._deadline = asyncio.get_running_loop().time() + TUNNEL_WAIT
        self._open()

    def data_received(self, data: bytes) -> None:
        if self.channel is None and not self._done:  # waiting for the tunnel: keep it, and read no more until then
            self._held.append(data)
            if self.transport is not None:
                self.transport.pause_reading()  # type: ignore[attr-defined]  # uvloop: not yet in connection_made
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.channel is None and not self._done:  # the user half-closed while waiting: passed on once attached
            self._held_eof = True
            return True
        return super().eof_received()

    def _open(self) -> None:
        """Open the stream through the tunnel, or wait for the tunnel until TUNNEL_WAIT has passed."""
        if self._done or self.transport is None:  # the user left while waiting
            self.waiting.discard(self)
            return
        session = self.session()
        if session is None or session.closed.is_set():
            loop = asyncio.get_running_loop()
            if loop.time() < self._deadline:
                self.waiting.add(self)
                loop.call_later(TUNNEL_POLL, self._open)
                return
            self.waiting.discard(self)
            log.warning("event=forward_unavailable local_port=%d reason=tunnel_down waited=%gs",
                        self.forward.local_port, TUNNEL_WAIT)
            self.abort()
            return
        self.waiting.discard(self)
        try:
            self.attach(session.open_stream(self.forward.target, self))
        except StreamError as exc:  # the server drains (GOAWAY) or the session is closing: said, not a silent reset
            log.warning("event=forward_refused local_port=%d remote=%s reason=%s", self.forward.local_port,
                        logfmt(self.forward.target), logfmt(exc))
            self.abort()
            return
        held, self._held = self._held, []
        for data in held:
            super().data_received(data)
        if self._held_eof:
            super().eof_received()
        elif held and self._pending is None:  # paused above; else on_writable resumes once the stream takes the rest
            self.transport.resume_reading()  # type: ignore[attr-defined]

    def on_reset(self, code: int, reason: str) -> None:
        """The server refused the stream (its service down, its --max-client-streams, its allow-list): the user
        only sees a reset, so the server's reason is logged here; the server's log is not the user's to read."""
        if code != ResetCode.CANCEL:
            log.warning("event=forward_failed local_port=%d remote=%s reason=%s", self.forward.local_port,
                        logfmt(self.forward.target), logfmt(reason))
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
    """The client's side: local listeners, one stream per accepted connection."""

    def __init__(self, forwards: list[LocalForward], local_addr: str, session: Callable[[], Session | None]) -> None:
        self.forwards = forwards
        self.local_addr = local_addr
        self.session = session
        self.listeners: list[asyncio.base_events.Server] = []
        self.waiting: set[_LocalConnection] = set()

    @property
    def targets(self) -> list[str]:
        return [f.target for f in self.forwards]

    async def start(self) -> None:
        for forward in self.forwards:
            try:
                listener = await listen(functools.partial(_LocalConnection, forward, self.session, self.waiting),
                                        self.local_addr, forward.local_port)
            except OSError as exc:  # the OS's reason and the next step, not asyncio's wrapper with its Python tuple
                raise ForwardListenError(self.local_addr, forward.local_port, exc) from None
            self.listeners.append(listener)
            log.info("event=forwarding local=%s remote=%s", logfmt(authority(self.local_addr, forward.local_port)),
                     logfmt(forward.target))

    def stop(self) -> None:
        """Close the listeners, and reset the users still waiting for the tunnel: no stream drains for them."""
        for listener in self.listeners:
            listener.close()
        for connection in list(self.waiting):
            connection.fail()
            connection.abort()
        self.waiting.clear()
