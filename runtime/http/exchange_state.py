"""What one exchange is: its state (``Exchange``), and what it sees of the server (``Gateway``) and of the user's
connection (``Front``).

Apart from ``exchange.py`` (the state machine that moves an exchange on, in the stream's callbacks) because these
are the contracts the other parts meet: ``server.HttpTunnelServer`` is a ``Gateway``, ``front.FrontConnection``
a ``Front`` (tests bring their own), and ``routing`` starts exchanges the state machine ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from ..core.session import Session
from .guard import Guards
from .leg import Leg
from .options import HttpOptions
from .messages import RequestHead, ResponseHead


class Gateway(Protocol):
    """The HTTP server as an exchange sees it (``server.HttpTunnelServer`` is one)."""

    guards: Guards
    exchanges: set[Leg]  # legs with an exchange in flight (timed out by the server's sweep)
    @property
    def connections(self) -> Iterable[Front]: ...  # the users' connections (scanned when a client refuses a stream)
    upstream_timeout: float
    draining: bool  # the server stops (SIGTERM): answers close their connection

    def route(self, host: str) -> tuple[str | None, str]: ...  # (service or None, metrics label)

    def options_for(self, session: Session) -> HttpOptions: ...

    def observe(self, status: int, label: str, method: bytes, started: float, own: bool = False) -> None: ...


class Front(Protocol):
    """The user's connection as an exchange sees it (``front.FrontConnection`` is one; tests bring their own).

    The exchange writes to ``transport``, sets ``exchange``/``parked``/``idle_since`` as it starts
    and ends, and hands the connection back with ``resume_requests`` (fast path) or ``wake`` (the
    connection's coroutine). ``drain`` is set while the user's socket is full; ``eof`` once the user closed its side.
    """

    @property
    def server(self) -> Gateway: ...
    transport: asyncio.Transport | None
    loop: asyncio.AbstractEventLoop
    peer: bytes
    scheme: bytes
    trusted: bool  # ``peer`` is in --trusted-proxies
    exchange: Exchange | None
    leg: Leg | None
    parked: bool
    idle_since: float | None
    drain: asyncio.Future | None
    eof: bool
    pipelined: int  # request heads read and waiting behind the one in flight

    def guard_source(self, head: RequestHead) -> bytes: ...  # whose credential: the failed-login limit's key

    def pick(self, service: str, avoid: list[Session] | None = None) -> Leg | None: ...  # a leg to a client of ``service``

    def on_leg(self) -> None: ...  # the leg's listener while the exchange runs: calls ``progress``

    def resume_requests(self) -> None: ...

    def wake(self) -> None: ...


class Exchange:
    __slots__ = ("head", "leg", "options", "label", "started", "request", "response", "chunked", "close",
                 "out", "retried", "reused", "unreleased", "waiter", "body_pending", "awaiting_body", "refusals",
                 "unreachable_on", "continued")

    def __init__(self, head: RequestHead, leg: Leg, options: HttpOptions, label: str, started: float,
                 request: bytes | None, reused: bool, waiter: asyncio.Future | None) -> None:
        self.head = head
        self.leg = leg
        self.options = options
        self.label = label
        self.started = started
        #: kept to send once more on a fresh stream (a bytearray once body pieces join it; None: too much went)
        self.request: bytes | bytearray | None = request
        self.response: ResponseHead | None = None
        self.chunked = False
        self.close = False
        self.out: list[bytes | memoryview] = []
        self.retried = False
        self.reused = reused
        self.unreleased = False  # credit held back while the user's socket drains
        self.waiter = waiter  # the coroutine's: result True (keep the connection), False, or a 101 head
        self.body_pending = False  # the coroutine is still sending the request body
        self.awaiting_body = False  # ... and waits for the user's next piece of it (not for the upstream to read)
        self.refusals = 0  # streams the client refused for this request (its --max-streams)
        self.unreachable_on: list[Session] = []  # clients that could not dial their upstream for it
        self.continued = False  # the upstream's 100 Continue went to the user: the body is the user's to send now
