"""The control plane every tunnel server shares: TLS websocket, auth, health, handshake.

Mode-specific servers (TCP, HTTP) plug in through ``admit``/``release``: the control
plane authenticates and shakes hands, then asks the mode whether it will serve
what the client advertised. The port's plain HTTP answers (``/healthz``, the
authenticated routes, the 401/429 refusals) are in ``control_http.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..core.hosts import unmapped
from ..core.listen import BindError, bind_address
from ..core.logs import logfmt
from ..core.services import shown_service
from .admission import DEFAULT_MAX_PER_SOURCE, DEFAULT_MAX_TOTAL, Admission
from .control_connection import ControlConnection
from ..core.allowlist import SourceAllowList
from ..core.auth import TokenSet
from .control_http import ControlHTTP, Route, client_address, format_address
from .ratelimit import FailedLoginLimiter
from ..core.handshake import (
    CLOSE_BAD_HELLO, CLOSE_SERVICE_REFUSED, CLOSE_TOKEN_REVOKED, CLOSE_WRONG_MODE, HandshakeError, Hello, Welcome,
    client_max_streams, parse_hello,
)
from ..core.mux import DEFAULT_INITIAL_WINDOW, DEFAULT_MAX_FRAME, DEFAULT_MAX_STREAMS, DEFAULT_WINDOW, Multiplexer
from ..core.muxqueue import max_message
from ..core.session import Session
from ..core.wsflow import BinaryFirst, first_message

if TYPE_CHECKING:  # a type only: the HTTP server, which offers no local forwarding, never loads it
    from .forwarding import ForwardingPolicy

log = logging.getLogger("inlets.server")

HELLO_TIMEOUT = 10.0
#: What a connection not yet a client is told when the server starts draining (SIGTERM): 1001, going away, which a
#: client takes as "try again" (a 4xxx code would end it).
SHUTTING_DOWN = "server shutting down"
#: A client that takes no welcome within this is dropped: admitted, its ports open, it was not yet a client
#: (unlisted, unrevocable, no keepalive), and one that stopped reading held that state, and its users, for ever.
WELCOME_TIMEOUT = 10.0


@dataclass
class ServingCertificate:
    """The control port's certificate as loaded (--tls-cert or --auto-tls): a server runs for months, so its end
    is warned of every day and exposed as a metric to alert on, not only said at start."""

    path: Path
    end: datetime.datetime | None  # None: a certificate the expiry reader cannot parse (OpenSSL loaded it)
    hint: str  # what to do before it ends, in the warning


@dataclass
class ControlConfig:
    tokens: TokenSet
    host: str | None = None  # None: every interface, IPv4 and IPv6
    port: int = 8123
    ssl_context: ssl.SSLContext | None = None
    keepalive: float = 20.0  # a dead client is detected within this many seconds
    window: int = DEFAULT_WINDOW
    max_frame: int = DEFAULT_MAX_FRAME
    max_streams: int = DEFAULT_MAX_STREAMS
    #: What one client may make the server hold for users that have not taken it yet: each stream's first
    #: 256 KiB, and how far streams grow beyond it towards ``window``, all together (``--max-client-buffer``).
    #: Without it a client filled every stream's 2 MiB: 600 users that never read took the server to 1.2 GiB.
    max_buffer: int = 32 * 1024 * 1024
    routes: dict[str, Route] = field(default_factory=dict)
    #: Called with (path, status) for every HTTP request to the control port (metrics).
    on_request: Callable[[str, int], None] | None = None
    #: Local forwarding (client-opened streams); None: refused.
    forwarding: ForwardingPolicy | None = None
    #: Failed logins a source may make per window before every login from it, a right token's too, gets 429.
    login_limit: int = 10
    login_window: float = 60.0
    #: Connections not yet authenticated, in total and from one source (see admission.py).
    max_handshakes: int = DEFAULT_MAX_TOTAL
    max_handshakes_per_source: int = DEFAULT_MAX_PER_SOURCE
    #: Reverse proxies whose X-Forwarded-For names the client (login limits, logs); None: trust none.
    trusted_proxies: SourceAllowList | None = None
    #: Sources the failed-login limit spares (--login-limit-exempt), as OpenSSH's PerSourcePenaltyExemptList: never
    #: 429, their wrong tokens logged but not counted. None: every source is limited.
    login_limit_exempt: SourceAllowList | None = None
    #: The certificate serving now (None: --plaintext): replaced by a SIGHUP reload.
    certificate: ServingCertificate | None = None

    def certificate_end(self) -> datetime.datetime | None:
        """When the certificate serving now ends (the servers' metric); None with --plaintext."""
        return self.certificate.end if self.certificate is not None else None


@dataclass
class ClientInfo:
    """What the server knows of one connected client (for status and logs)."""

    session: Session
    client_id: str
    remote: str
    services: list[str]
    authorization: str = field(default="", repr=False)  # to re-check on token rotation; never shown
    connected_at: float = field(default_factory=time.time)
    forwards: list[str] = field(default_factory=list)  # the server-side targets it brings to its side (--local)
    revoked: bool = False  # its token was removed; it finishes its open streams, if its client already drains it


def _close_reason(text: str) -> str:
    """A websocket close reason fits in 123 bytes of UTF-8: a longer one is cut after a word, marked '...'."""
    if len(text.encode()) <= 123:
        return text
    cut = text.encode()[:120].decode(errors="ignore")
    return (cut[: cut.rfind(" ")] if " " in cut else cut) + "..."


async def _going_away(websocket: ServerConnection, timeout: float) -> None:
    """Close a connection not yet a client with 1001 (``drain``); one that does not answer within ``timeout`` is cut,
    so the drain ends in time."""
    try:
        await asyncio.wait_for(websocket.close(1001, SHUTTING_DOWN), timeout)
    except asyncio.TimeoutError:
        websocket.transport.abort()


def _how_closed(websocket: ServerConnection) -> str:
    """How a session's connection ended, for its log line: the close this end sent when it was not a plain one
    (a protocol error, a message too big: the library's reason says which), else the peer's."""
    protocol = websocket.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    frame = sent if sent is not None and sent.code not in (1000, 1001) else received or sent
    return f"{frame.code} {frame.reason}".strip() if frame is not None else "connection lost without a close"


class ControlPlane(ControlHTTP):
    config: ControlConfig

    def __init__(
        self,
        mode: str,
        config: ControlConfig,
        admit: Callable[[Session, Hello], Awaitable[list[str]]],
        release: Callable[[Session], None],
    ) -> None:
        self.mode = mode
        self.config = config
        self._admit = admit
        self._release = release
        self.clients: dict[Session, ClientInfo] = {}
        self._probes: set[asyncio.Task] = set()  # pings to sessions whose client id connected again
        self.started_at = time.time()
        self.logins = FailedLoginLimiter(config.login_limit, config.login_window)
        self.admission = Admission(config.max_handshakes, config.max_handshakes_per_source, config.trusted_proxies)
        self._server: Server | None = None
        self.draining = False  # SIGTERM: a hello is refused (1001), so no client is admitted, no port opened

    @property
    def initial_window(self) -> int:
        """Each stream's first credit (the welcome's window); it grows to ``window`` within ``max_buffer``."""
        return min(DEFAULT_INITIAL_WINDOW, self.config.window)

    async def start(self) -> None:
        cfg = self.config
        try:
            self._server = await self._serve(cfg)
        except OSError as exc:
            raise BindError(exc, "control", cfg.host, cfg.port) from exc

    async def _serve(self, cfg: ControlConfig) -> Server:
        return await serve(
            self._handle,
            **bind_address(cfg.host, cfg.port),  # "::" takes IPv4 too, as the data ports' does
            # no ssl=: admission starts TLS itself, once a connection is within the caps
            process_request=self._process_request,
            process_response=self._process_response,
            compression=None,
            max_size=max_message(cfg.max_frame),  # the client caps what it reads from us alike
            max_queue=64,
            write_limit=512 * 1024,
            ping_interval=None,  # Session runs its own keepalive
            close_timeout=5,
            server_header=None,
            logger=logging.getLogger("inlets.websockets"),
            create_connection=lambda *args, **kwargs: self.admission.connection(
                lambda: self._connection(*args, **kwargs), cfg.ssl_context
            ),
        )

    def _connection(self, *args, **kwargs) -> ControlConnection:  # type: ignore[no-untyped-def]
        connection = ControlConnection(*args, **kwargs)
        connection.on_refused = self._refused
        return connection

    @property
    def addresses(self) -> list[tuple]:
        assert self._server is not None
        return [sock.getsockname() for sock in self._server.sockets]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.admission.abort_handshakes()
            await self._server.wait_closed()

    async def drain(self, timeout: float) -> None:
        """Graceful stop: accept no new clients, let open streams finish within ``timeout``.

        A connection upgraded but not yet a client (its hello not in, or being admitted) is closed at once, 1001:
        left open, its hello was welcomed, opened data ports and held the exit until it left, and a silent one
        held it for the hello timeout (``stop`` closes nothing: the library's ``close`` runs once)."""
        self.draining = True
        if self._server is not None:
            self._server.close(close_connections=False)
        sessions = list(self.clients)
        admitted = {session.websocket for session in sessions}
        pending = [ws for ws in self._server.connections if ws not in admitted] if self._server is not None else []
        await asyncio.gather(*(s.drain(timeout, SHUTTING_DOWN) for s in sessions),
                             *(_going_away(ws, timeout) for ws in pending), return_exceptions=True)
        await self.stop()

    def _refused_now(self, authorization: str) -> HandshakeError | None:
        """Why a connection whose hello came is not admitted after all, though its upgrade was: the server began
        draining, or its token was removed (SIGHUP) since the upgrade checked it. Asked with no await between it
        and the registration in ``clients``, which ``revoke_stale_tokens`` walks: no connection escapes both."""
        if self.draining:
            return HandshakeError(1001, f"{SHUTTING_DOWN}: connect again in a moment")
        if not self.config.tokens.check_header(authorization):
            return HandshakeError(CLOSE_TOKEN_REVOKED, "token revoked")
        return None

    def revoke_stale_tokens(self, grace: float) -> int:
        """After the token set changed: disconnect clients whose token is no longer accepted.

        A connection its client already drains (it reconnected with the new token: a rotation's second step) is
        let finish its open streams within ``grace`` (--drain-timeout), opening none; cutting it reset users'
        downloads when the old token was removed a moment too soon. Any other closes now."""
        revoked = 0
        for session, info in list(self.clients.items()):
            if info.revoked or self.config.tokens.check_header(info.authorization):
                continue
            info.revoked, draining = True, session.mux.peer_going_away
            log.warning("event=token_revoked client=%s remote=%s open_streams=%d then=%s", logfmt(info.client_id),
                        logfmt(info.remote), len(session.channels), "drain" if draining else "close")
            if draining:
                session.on_stream = None  # a stream it opens now is refused ("this side accepts no streams")
                asyncio.ensure_future(session.drain(grace, "token revoked"))
            else:
                asyncio.ensure_future(session.close(CLOSE_TOKEN_REVOKED, "token revoked"))
            revoked += 1
        return revoked

    # ------------------------------------------------------------- tunnel clients

    def _probe_earlier(self, session: Session, client_id: str) -> None:
        """``session`` came with the id of live sessions: most likely their client gave them up (its own keepalive
        found the path dead) and reconnected, while this side's keepalive would take up to --keepalive to notice, and
        new users sent there hung. Each is pinged now and takes no new users until it answers (``Keepalive.probe``).
        The id is the client's word, not proof: so a live session only misses new users for a round trip; one that
        cannot answer within ``PROBE_TIMEOUT`` is dropped as a keepalive timeout (its client, if alive, reconnects)."""
        if not client_id:
            return
        for other, info in self.clients.items():
            if other is not session and info.client_id == client_id and (probe := other.probe()) is not None:
                self._probes.add(probe)  # held until done: the loop keeps only a weak reference to a task
                probe.add_done_callback(self._probes.discard)

    def _remote(self, websocket: ServerConnection) -> str:
        """Who the client is, for logs and /status: behind a trusted reverse proxy, the address it forwarded for
        (as failed logins are counted), then the proxy's (every client read as the proxy's address before)."""
        peer = format_address(websocket.remote_address)
        trusted = self.config.trusted_proxies
        if trusted is None or websocket.request is None:
            return peer
        source = client_address(websocket.remote_address, websocket.request.headers, trusted)
        host = unmapped(str(websocket.remote_address[0])) if isinstance(websocket.remote_address, tuple) else None
        return peer if source == host else f"{source} via {peer}"

    async def _receive_hello(self, websocket: ServerConnection) -> Hello:
        """The client's hello, a text message, within ``HELLO_TIMEOUT``; a binary message first is refused at
        once (``wsflow.first_message``), and silence is refused in words when the time is up."""
        try:
            message = await first_message(websocket, HELLO_TIMEOUT)
        except BinaryFirst:
            raise HandshakeError(CLOSE_BAD_HELLO, "expected a text hello message, got a binary one") from None
        if message is None:
            raise HandshakeError(CLOSE_BAD_HELLO, f"no hello within {HELLO_TIMEOUT:g}s")
        return parse_hello(message)

    async def _handle(self, websocket: ServerConnection) -> None:
        remote = self._remote(websocket)
        authorization = websocket.request.headers.get("Authorization", "")  # one: a repeated one was refused
        try:
            hello = await self._receive_hello(websocket)
            if refused := self._refused_now(authorization):
                raise refused
            if hello.mode != self.mode:
                raise HandshakeError(
                    CLOSE_WRONG_MODE, f"this server serves {self.mode} tunnels; use 'inlets {self.mode} client'"
                )
            if hello.extra.get("forwards"):
                if self.config.forwarding is None:
                    raise HandshakeError(CLOSE_SERVICE_REFUSED, "this server does not offer client forwarding: start it with "
                                         "--client-forwarding --client-forwarding-allow HOST:PORT")
                self.config.forwarding.check_hello(hello)
            mux = Multiplexer(
                client=False,
                recv_window=self.config.window,
                send_window=hello.window,
                max_frame=self.config.max_frame,
                max_streams=self.config.max_streams,
                initial_recv_window=self.initial_window,
                recv_budget=self.config.max_buffer,
            )
            mux.peer_max_streams = client_max_streams(hello, self.config.max_streams)  # open_on_first tries it last
            on_stream = None
            if self.config.forwarding is not None:  # only what this client declared (check_hello checked the list)
                on_stream = partial(self.config.forwarding.on_stream, declared=frozenset(hello.extra.get("forwards") or ()))
            session = Session(
                websocket, mux, on_stream=on_stream, name=logfmt(hello.client_id or remote),  # as its log lines show it
                keepalive=self.config.keepalive,
            )
            services = await self._admit(session, hello)
            if refused := self._refused_now(authorization):  # it awaited (ports opening): asked again
                session.teardown(str(refused))
                self._release(session)
                raise refused
        except HandshakeError as exc:
            log.warning("event=handshake_refused remote=%s reason=%s", logfmt(remote), logfmt(exc))
            websocket.discard_messages()  # binary ones held for a session read on: the closing handshake completes
            await websocket.close(exc.code, _close_reason(str(exc)))
            return
        except (asyncio.TimeoutError, ConnectionClosed):
            sent = websocket.protocol.close_sent
            if sent is not None and sent.code not in (1000, 1001):  # this end closed on a protocol error: said once
                log.warning("event=handshake_refused remote=%s reason=%s close=%s", logfmt(remote),
                            logfmt("the client broke the websocket protocol before its hello"),
                            logfmt(_how_closed(websocket)))
            return
        session.on_goaway = self._release  # a draining client gets no new connections
        info = ClientInfo(session, hello.client_id, remote, services, authorization,
                          forwards=list(hello.extra.get("forwards") or ()))
        self.clients[session] = info  # from admission on: its ports are open, so it is listed, and a token reload sees it
        try:
            await asyncio.wait_for(websocket.send(Welcome(services, self.initial_window, self.config.max_frame).encode()),
                                   WELCOME_TIMEOUT)
        except (ConnectionClosed, asyncio.TimeoutError):
            self.clients.pop(session, None)
            session.teardown("the client took no welcome")  # users routed to it meanwhile: reset, not left hanging
            self._release(session)
            if not websocket.transport.is_closing():
                log.warning("event=handshake_refused remote=%s reason=%s", logfmt(remote),
                            logfmt(f"the client took no welcome within {WELCOME_TIMEOUT:g}s"))
                websocket.transport.abort()
            return
        log.info("event=client_connected client=%s remote=%s services=%s", logfmt(info.client_id), logfmt(remote),
                 logfmt(",".join(map(shown_service, services))))
        self._probe_earlier(session, info.client_id)
        try:
            await session.run()
        finally:
            self.clients.pop(session, None)
            self._release(session)
            log.info("event=client_disconnected client=%s remote=%s close=%s", logfmt(info.client_id), logfmt(remote),
                     logfmt(_how_closed(websocket)))
