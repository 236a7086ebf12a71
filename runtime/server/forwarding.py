"""Local forwarding: a service on the server's side brought to the client's localhost.

The client listens on ``--local LOCAL_PORT:HOST:REMOTE_PORT`` and opens a stream
``forward:HOST:REMOTE_PORT`` per connection; the server dials HOST:REMOTE_PORT only
when started with ``--client-forwarding`` and only if ``--client-forwarding-allow``
permits that target, because otherwise a client could reach anything on the
server's network. The server checks every stream, whatever the handshake said.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from .allowlist import TargetRule
from .bridge import TcpBridge, dial
from .handshake import CLOSE_SERVICE_REFUSED, HandshakeError, Hello
from .mux import ResetCode, StreamError
from .ports import parse_port
from .session import Channel, Session

log = logging.getLogger("inlets.forward")

PREFIX = "forward:"


def format_target(host: str, port: int) -> str:
    return f"{PREFIX}[{host}]:{port}" if ":" in host else f"{PREFIX}{host}:{port}"


def parse_target(target: str) -> tuple[str, int]:
    """``forward:HOST:PORT`` -> (HOST, PORT); ValueError for anything else."""
    if not target.startswith(PREFIX):
        raise ValueError(f"not a forwarding target: {target!r}")
    rest = target[len(PREFIX) :]
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        port = tail[1:] if sep and tail.startswith(":") else ""
    else:
        host, _, port = rest.rpartition(":")
    number = parse_port(port)
    if not host or number is None:
        raise ValueError(f"malformed forwarding target: {target!r}")
    return host, number


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
        host, port = parse_target(PREFIX + rest)
    except ValueError:
        raise ValueError(f"--local must be LOCAL_PORT:HOST:REMOTE_PORT, got {text!r}") from None
    return LocalForward(local_port, host, port)


class ForwardingPolicy:
    """The server's side: may this client reach that target?"""

    def __init__(self, enabled: bool, rules: list[TargetRule]) -> None:
        self.enabled = enabled
        self.rules = rules

    def refusal(self, target: str) -> str | None:
        """Why ``target`` is refused, or None when it is allowed."""
        if not self.enabled:
            return "client forwarding is disabled on this server (start it with --client-forwarding)"
        try:
            host, port = parse_target(target)
        except ValueError as exc:
            return str(exc)
        if not any(rule.matches(host, port) for rule in self.rules):
            return f"{host}:{port} is not in the server's --client-forwarding-allow list"
        return None

    def check_hello(self, hello: Hello) -> None:
        forwards = hello.extra.get("forwards", [])
        if not isinstance(forwards, list) or not all(isinstance(f, str) for f in forwards):
            raise HandshakeError(CLOSE_SERVICE_REFUSED, "forwards must be a list of targets")
        for target in forwards:
            reason = self.refusal(target)
            if reason is not None:
                raise HandshakeError(CLOSE_SERVICE_REFUSED, reason)

    def on_stream(self, channel: Channel) -> None:
        reason = self.refusal(channel.target)
        if reason is not None:
            log.warning("event=forward_refused target=%r reason=%r", channel.target, reason)
            channel.reset(ResetCode.NOT_ALLOWED, reason)
            return
        host, port = parse_target(channel.target)
        dial(channel, host, port)


class _LocalConnection(TcpBridge):
    def __init__(self, forward: LocalForward, session: Callable[[], Session | None]) -> None:
        super().__init__()
        self.forward = forward
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        session = self.session()
        if session is None or session.closed.is_set():
            log.info("event=forward_unavailable local_port=%d reason=tunnel_down", self.forward.local_port)
            self.abort()
            return
        try:
            self.attach(session.open_stream(self.forward.target, self))
        except StreamError:
            self.abort()


class LocalForwarder:
    """The client's side: local listeners, one stream per accepted connection."""

    def __init__(self, forwards: list[LocalForward], local_addr: str, session: Callable[[], Session | None]) -> None:
        self.forwards = forwards
        self.local_addr = local_addr
        self.session = session
        self.listeners: list[asyncio.base_events.Server] = []

    @property
    def targets(self) -> list[str]:
        return [f.target for f in self.forwards]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for forward in self.forwards:
            listener = await loop.create_server(
                lambda forward=forward: _LocalConnection(forward, self.session), self.local_addr, forward.local_port
            )
            self.listeners.append(listener)
            log.info("event=forwarding local=%s:%d remote=%s", self.local_addr, forward.local_port, forward.target)

    def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
