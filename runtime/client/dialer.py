"""The tunnel client: dial out, authenticate, advertise services, serve streams; forever.

Transient failures (network, server restart) reconnect with exponential backoff and
jitter. Failures that retrying cannot fix (wrong token, untrusted certificate, a
refused handshake) raise ``FatalClientError`` so the command exits with the reason.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus, InvalidURI, ProxyError,
)

from ..core.auth import OPEN_PIPES, TokenError, read_tokens
from ..core.cert_expiry import peer_not_after, warn_if_ending
from ..core.handshake import CONNECT_PATH, FATAL_CLOSE_CODES, HandshakeError, Hello, parse_welcome
from ..core.hosts import HostError, authority, split_url
from ..core.logs import logfmt
from ..core.mux import DEFAULT_INITIAL_WINDOW, DEFAULT_WINDOW, Multiplexer
from ..core.ports import url_port
from ..core.services import shown_service
from ..core.session import Channel, Session
from ..core.wsflow import BoundedReplies
from .diagnose import describe as _describe, how_closed, printable, speaks_plain_http, speaks_tls
from ..core.eyeballs import connect_socket, failure_words, is_name
from .outbound_proxy import (
    ProxyConfigError, certificate_failure as proxy_certificate_failure, choose as choose_proxy,
    explain as explain_proxy_failure,
)

log = logging.getLogger("inlets.client")

#: A session up this long was no failed attempt: the backoff starts over after it.
STEADY_AFTER = 10.0


class Backoff:
    """Waits between attempts: ``initial`` doubling to ``most``, each a random half to all of its step (jitter:
    reconnecting clients do not stampede)."""

    def __init__(self, initial: float, most: float) -> None:
        self.initial, self.most = initial, most
        self.step = initial

    def next_wait(self) -> float:
        wait = self.step * random.uniform(0.5, 1.0)
        self.step = min(self.step * 2, self.most)
        return wait

    def reset(self) -> None:
        self.step = self.initial


class BoundedClientConnection(BoundedReplies, ClientConnection):
    def connection_lost(self, exc: Exception | None) -> None:
        """Through an HTTP proxy websockets makes this the transport's protocol before TLS starts; when TLS
        fails (the proxy closed the tunnel it granted) the loss comes to a connection never made, and
        websockets' handler raised AttributeError (no ``recv_messages``): a traceback in the log per attempt."""
        if hasattr(self, "recv_messages"):  # set by connection_made
            super().connection_lost(exc)


class FatalClientError(Exception):
    """Retrying cannot help; the message says what to fix."""


class _NoRedirects(connect):
    """``connect`` that follows no redirect: websockets followed up to 10, so the server (or anything on a ws://
    path) made the client dial any host:port it named, on the client's own network. A tunnel server never
    redirects: a 3xx comes back as the ``InvalidStatus`` it is (``_connect`` says where it pointed)."""

    def process_redirect(self, exc: Exception) -> Exception:
        return exc


@dataclass
class ClientConfig:
    url: str
    token: str
    mode: str
    services: list[str]
    ssl_context: ssl.SSLContext | None = None
    server_name: str | None = None  # verify the certificate for this name instead of the URL's host
    keepalive: float = 20.0
    window: int = DEFAULT_WINDOW
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    client_id: str = ""
    extra: dict = field(default_factory=dict)  # mode options sent in the hello (HTTP: http_options)
    token_file: Path | None = None  # when given, re-read at every connection (rotation)
    drain_timeout: float = 30.0
    open_timeout: float = 15.0  # seconds one connection attempt (proxy, TCP, TLS, websocket handshake) may take
    proxy: str | None = None  # http://[user:pass@]host:port or socks5://...; "none": direct; None: HTTPS_PROXY etc.
    proxy_password_from: str | None = None  # "--proxy-password-file PATH" or "$INLETS_PROXY_PASSWORD": what a 407 names
    #: What one server may make this client hold: streams open at once, and how far their windows
    #: grow beyond the first 256 KiB, all together (mux.py: at most max_streams * 256 KiB + max_buffer).
    max_streams: int = 1024
    max_buffer: int = 64 * 1024 * 1024


def connect_url(url: str) -> str:
    """The websocket URL for ``url``: its path is a prefix (reverse proxies), ``/connect`` appended."""
    try:
        parts = split_url(url)
    except HostError as exc:
        raise FatalClientError(str(exc)) from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise FatalClientError(f"--url must be ws://HOST[:PORT] or wss://HOST[:PORT], got {url!r}")
    try:
        url_port(parts, 0)
    except ValueError as exc:
        raise FatalClientError(f"--url {url!r}: {exc}") from None
    path = parts.path.rstrip("/") + CONNECT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class TunnelClient:
    def __init__(self, config: ClientConfig, on_stream: Callable[[Channel], None]) -> None:
        self.config = config
        self.on_stream = on_stream
        self.client_id = config.client_id or uuid.uuid4().hex[:12]
        self.session: Session | None = None
        self.connected = asyncio.Event()
        self.ws_url = connect_url(config.url)
        self._changed = asyncio.Event()  # self.session was replaced (rotation)
        #: One rotation at a time: two SIGHUPs at once both read the same old session, each drained it, and the
        #: first one's new session, replaced by the second's, was never drained (an orphan the server kept).
        self._rotating = asyncio.Lock()
        self._reconnecting: asyncio.Future | None = None  # a reconnection the server's GOAWAY asked for
        self._session_since = 0.0  # when the current session began (loop time)
        #: reconnections a GOAWAY asks for soon after connecting wait as failed connects do (_replace_if_current)
        self._goaway_backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._stopping = False
        self._stopped = asyncio.Event()  # ends a backoff wait at once on shutdown
        self._retry_now = asyncio.Event()  # SIGHUP while disconnected: end the backoff wait, connect now
        #: Replaced sessions still finishing their streams (``_replace``): SIGTERM waits for them too, else a
        #: request in flight on the session a SIGHUP or a GOAWAY had just replaced was cut at exit.
        self._draining: set[asyncio.Task] = set()
        self._token_file_unreadable = False  # said once, until the file can be read again
        self._ending_said: datetime.datetime | None = None  # the server certificate's notAfter, once warned of (once per certificate)
        self.on_change: Callable[[], None] | None = None  # told when connected is set or cleared (ClientGroup)
        try:
            self.proxy = choose_proxy(config.proxy, self.ws_url)
        except ProxyConfigError as exc:
            raise FatalClientError(str(exc)) from None

    @property
    def initial_window(self) -> int:
        """Each stream's first credit (the hello's window); it grows to ``window`` within ``max_buffer``."""
        return min(DEFAULT_INITIAL_WINDOW, self.config.window)

    def current_token(self) -> str:
        """The token for the next connection: re-read from its file, so rotation needs no restart.

        A token file that cannot be read any more (deleted with its exit server, or caught
        mid-rotation) does not end the client: it keeps the token it read last, says so
        once, and goes on retrying as it does while a server restarts.
        """
        if self.config.token_file is None or str(self.config.token_file).startswith(OPEN_PIPES):
            return self.config.token  # a pipe (``<(pass show inlets)``) gave its token once, at start
        try:
            token = read_tokens(None, self.config.token_file)[0]
        except TokenError as exc:
            if not self._token_file_unreadable:
                self._token_file_unreadable = True
                log.warning("event=token_file_unreadable error=%s using=last_token_read note=%s", logfmt(exc),
                            logfmt("an exit server deleted with inletsctl takes its token file along: stop this "
                                   "client then"))
            return self.config.token
        if self._token_file_unreadable:
            self._token_file_unreadable = False
            log.info("event=token_file_readable path=%s", logfmt(self.config.token_file))
        self.config.token = token
        return token

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        if self.proxy.url:
            log.info("event=proxy proxy=%s source=%s", logfmt(self.proxy.shown), logfmt(self.proxy.source))
        while not self._stopping:
            self._retry_now.clear()  # a SIGHUP from now on cuts the wait after this attempt short
            try:
                session = await self.open_session()
            except FatalClientError:
                raise
            except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                sleep = backoff.next_wait()  # the wait the line names is the one taken (jitter included)
                log.warning("event=connect_failed url=%s error=%s retry_in=%.1fs", logfmt(self.config.url),
                            logfmt(_describe(exc)), sleep)
            else:
                started = loop.time()
                session = await self._follow(session)
                if self._stopping:
                    return
                if loop.time() - started > STEADY_AFTER:
                    backoff.reset()  # it was up for a while: start over
                sleep = backoff.next_wait()
                log.warning("event=disconnected url=%s close=%s retry_in=%.1fs", logfmt(self.config.url),
                            logfmt(how_closed(session.websocket.protocol)), sleep)
            try:
                await asyncio.wait_for(self._retry_now.wait(), sleep)
            except asyncio.TimeoutError:
                pass

    async def run_once(self) -> None:
        """One connection: returns when it closes; raises on failure to connect."""
        await self._follow(await self.open_session())

    async def open_session(self) -> Session:
        """Connect, authenticate and shake hands; the session then runs in the background."""
        websocket = await self._connect()
        try:
            welcome = await self._handshake(websocket)
        except BaseException:
            await websocket.close()
            raise
        cfg = self.config
        mux = Multiplexer(client=True, recv_window=cfg.window, send_window=welcome.window, max_frame=welcome.max_frame,
                          max_streams=cfg.max_streams, initial_recv_window=self.initial_window, recv_budget=cfg.max_buffer)
        session = Session(websocket, mux, on_stream=self.on_stream, name="server", keepalive=self.config.keepalive)
        session.on_goaway = session.on_retire = self._reconnect_now
        asyncio.ensure_future(self._run(session))
        log.info("event=connected url=%s services=%s", logfmt(self.config.url),
                 logfmt(",".join(map(shown_service, welcome.services))))
        self._warn_if_certificate_ending(websocket)
        return session

    def _warn_if_certificate_ending(self, websocket: ClientConnection) -> None:
        """Once per server certificate: a warning when the one just verified ends within 30 days
        (cert_expiry.WARN_WITHIN); past its end, this client (and every other) will refuse the server."""
        not_after = peer_not_after(websocket.transport.get_extra_info("peercert"))  # {} when not verified
        if not_after is None or not_after == self._ending_said:
            return
        if warn_if_ending(log, f"url={logfmt(self.config.url)}", not_after,
                          "this client refuses the server from then on: the server needs a new certificate from the "
                          "CA --tls-ca pins (an exit server inletsctl made: create a new one)"):
            self._ending_said = not_after

    async def _run(self, session: Session) -> None:
        try:
            await session.run()
        finally:
            await session.websocket.close()

    async def _follow(self, session: Session) -> Session:
        """Serve until the current session closes, following replacements made by ``rotate``; returns the one that
        closed (its close is the one the log names)."""
        self.session = session
        self._session_since = asyncio.get_running_loop().time()
        self.connected.set()
        if self.on_change is not None:
            self.on_change()
        try:
            while True:
                self._changed.clear()
                current = self.session
                assert current is not None
                closed = asyncio.ensure_future(current.closed.wait())
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({closed, changed}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                changed.cancel()
                if not self._changed.is_set():
                    return current
        except asyncio.CancelledError:  # the owner stopped us: drop the connection now
            if self.session is not None:
                self.session.websocket.transport.abort()
            raise
        finally:
            self.connected.clear()
            self.session = None
            if self.on_change is not None:
                self.on_change()

    async def rotate(self) -> None:
        """Make before break: connect again (re-reading the token), then drain the old connection.

        New connections go to the new session from the moment the server admits it; the
        old one gets GOAWAY and closes once its streams finish. Rotations queue up (``_rotating``).
        While disconnected (waiting to retry), the next attempt starts at once instead.
        """
        if self._stopping:  # SIGHUP while draining: a new connection would take new streams the exit then cuts
            return
        async with self._rotating:
            if self.session is None:  # disconnected: connect now rather than at the end of the backoff (a
                self._retry_now.set()  # connection made here was closed as "not needed", its log said connected)
                return
            await self._replace()

    @property
    def serving(self) -> bool:
        """Whether new streams can go through this server now: connected, and neither end draining (GOAWAY)."""
        session = self.session
        return (session is not None and not session.closed.is_set() and not session.mux.peer_going_away
                and not session.mux.going_away)

    def _reconnect_now(self, session: Session) -> None:
        """The server sent GOAWAY (it drains, or its stream ids for us run out), or ours run out: connect again now,
        make before break, as ``rotate`` does; the old session's streams finish on it. Until then it stayed, and
        refused what it could not open. Nothing is done for a session already replaced, nor while stopping."""
        if session is self.session and not self._stopping:
            if self.on_change is not None:  # no longer serving (a ClientGroup says so, and routes elsewhere)
                self.on_change()
            self._reconnecting = asyncio.ensure_future(self._replace_if_current(session))

    async def _replace_if_current(self, session: Session) -> None:
        """Replace ``session``, at once if it lived a while. A GOAWAY soon after connecting, again and again (a
        server that drains every connection, or a hostile one), had this client reconnect 500 times a second
        with its log silenced by the repeat limit: such reconnections back off as failed connects do."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._session_since < STEADY_AFTER:
            wait = self._goaway_backoff.next_wait()
            log.warning("event=goaway_soon_after_connect url=%s lived=%.1fs retry_in=%.1fs", logfmt(self.config.url),
                        loop.time() - self._session_since, wait)
            try:
                await asyncio.wait_for(self._stopped.wait(), wait)
            except asyncio.TimeoutError:
                pass
        else:
            self._goaway_backoff.reset()
        # A server restarting (SIGTERM, then started again) refuses the first try: tried once, the client kept the
        # draining session, which refuses every new stream, until its last stream ended (up to --drain-timeout).
        retry = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while True:
            async with self._rotating:
                if session is not self.session or self._stopping or session.closed.is_set() or await self._replace():
                    return
            waits = {asyncio.ensure_future(session.closed.wait()), asyncio.ensure_future(self._stopped.wait())}
            await asyncio.wait(waits, timeout=retry.next_wait(), return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()

    async def _replace(self) -> bool:
        """Whether the session was replaced (or need not be any more)."""
        old = self.session
        try:
            new = await self.open_session()
        except (FatalClientError, OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            log.warning("event=reconnect_failed error=%s keeping=current_connection", logfmt(_describe(exc)))
            return False
        if old is None or self.session is not old or self._stopping:  # closed meanwhile (the reconnect loop has
            await new.close(1000, "not needed")  # it), or SIGTERM came while connecting: ``shutdown`` drains old
            return True
        self.session = new
        self._session_since = asyncio.get_running_loop().time()
        self._changed.set()
        if self.on_change is not None:
            self.on_change()
        draining = asyncio.ensure_future(old.drain(self.config.drain_timeout, "client reconnected"))
        self._draining.add(draining)
        draining.add_done_callback(self._draining.discard)
        return True

    async def shutdown(self) -> None:
        """Graceful stop: no new streams, open ones finish within the drain timeout, on the current session and on
        those it replaced that are still draining (each within its own drain timeout)."""
        self._stopping = True
        self._stopped.set()
        draining = list(self._draining)
        streams = sum(len(session.channels) for session in [self.session] if session is not None)
        if streams:  # said, as the server says it: else a stop that waits up to --drain-timeout looks like a hang
            log.info("event=draining url=%s open_streams=%d timeout=%.1fs", logfmt(self.config.url), streams,
                     self.config.drain_timeout)
        if self.session is not None:
            draining.append(asyncio.ensure_future(self.session.drain(self.config.drain_timeout, "client shutting down")))
        await asyncio.gather(*draining, return_exceptions=True)

    async def _connect(self) -> ClientConnection:
        cfg = self.config
        kwargs: dict = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.open_timeout
        parts = urlsplit(self.ws_url)
        host, port = parts.hostname or "", url_port(parts, 443 if parts.scheme == "wss" else 80)
        if self.ws_url.startswith("wss://"):
            kwargs["ssl"] = cfg.ssl_context or ssl.create_default_context()
            if cfg.server_name:
                kwargs["server_hostname"] = cfg.server_name
            elif "%" in host:  # fe80::1%eth0: the zone names this host's link, which no certificate can; curl drops it too
                kwargs["server_hostname"] = host.partition("%")[0]
        token = self.current_token()  # read before dialling: an unreadable file is said while the server is down too
        try:
            if not self.proxy.url:  # dialled here, an address too: a timeout then says which step got no answer
                kwargs["sock"] = await self._dial(host, port)
            websocket = await _NoRedirects(
                self.ws_url,
                additional_headers={"Authorization": f"Bearer {token}"},
                compression=None,
                max_size=16 * 1024 * 1024,
                max_queue=64,
                write_limit=512 * 1024,
                ping_interval=None,  # Session runs its own keepalive
                close_timeout=5,
                open_timeout=max(deadline - loop.time(), 0.001),  # what the dial to a name left of it
                user_agent_header="inlets-py",
                logger=logging.getLogger("inlets.websockets"),
                proxy=self.proxy.url,
                create_connection=BoundedClientConnection,
                **kwargs,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise FatalClientError("the server refused the token (HTTP 401): check --token/--token-file") from None
            if status == 404:
                raise FatalClientError(f"no tunnel endpoint at {self.ws_url} (HTTP 404): check --url") from None
            if 300 <= status < 400:
                locations = exc.response.headers.get_all("Location")  # get() raised on a repeated one
                where = f" to {printable(locations[0], 300)}" if locations else ""
                raise FatalClientError(f"{self.ws_url} answers a redirect (HTTP {status}){where}, which a tunnel "
                                       "server never sends and this client does not follow: check --url") from None
            if status == 400 and (wrong := await self._tls_port()) is not None:  # nginx: "plain HTTP ... to HTTPS port"
                raise wrong from None
            raise
        except ssl.SSLCertVerificationError as exc:
            if self.proxy.url and (why := await proxy_certificate_failure(self.proxy.url)):
                raise FatalClientError(f"proxy {self.proxy.shown}: its TLS certificate could not be verified: {why} "
                                       "(an https:// proxy is checked against the system's trust store)") from None
            raise FatalClientError(f"{self.config.url}: {_describe(exc)}") from None
        except InvalidURI as exc:
            raise FatalClientError(str(exc)) from None
        except InvalidMessage:  # no HTTP answer: a ws:// URL for a TLS server closes without one
            if (wrong := await self._tls_port()) is not None:
                raise wrong from None
            raise
        except (ProxyError, OSError) as exc:
            if isinstance(exc, TimeoutError) and "sock" in kwargs:  # connected (_dial): the server said nothing
                raise TimeoutError(f"{authority(printable(host), port)} accepted the connection but did not complete the TLS "
                                   f"and websocket handshake within {cfg.open_timeout:g}s: check --url names the "
                                   "server's control port (8123 unless set) and that the server is not stopped or "
                                   "overloaded") from None
            parts = urlsplit(self.ws_url)
            if (not self.proxy.url and parts.scheme == "wss" and isinstance(exc, (ConnectionResetError, ssl.SSLError))
                    and await speaks_plain_http(parts.hostname or "", parts.port or 443)):
                fixed = urlunsplit(("ws",) + urlsplit(self.config.url)[1:])
                raise FatalClientError(f"{self.config.url} answers plain HTTP, not TLS: for a server run with "
                                       f"--plaintext use --url {fixed} (or give it --tls-cert/--tls-key); else give "
                                       "its control port (8123 unless set), not a data port") from None
            if not self.proxy.url:
                raise
            parts = urlsplit(self.ws_url)  # say which proxy answered what; run_forever retries
            host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname  # CONNECT [::1]:8123
            target = f"{host}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
            raise explain_proxy_failure(exc, self.proxy.url, target, self.proxy.source,
                                        cfg.proxy_password_from) from None
        sock = websocket.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return websocket

    async def _dial(self, host: str, port: int) -> socket.socket:
        """A socket to the server, the first of its addresses to answer: websockets (through the loop) tried a name's
        addresses in turn, each until --open-timeout, so a dead AAAA record (or A) kept the client from a server
        that answered on its other address, forever. An address is dialled here too, so that a timeout says
        whether TCP got no answer (here) or the server accepted and then said nothing (``_connect``)."""
        failures: list = []  # said with the timeout: an address that refused, while another dropped SYNs
        try:
            return await asyncio.wait_for(connect_socket(host, port, failures=failures), self.config.open_timeout)
        except asyncio.TimeoutError:
            if not is_name(host):  # an address: SYNs dropped (a firewall), or no host there
                raise TimeoutError(f"nothing answered at {authority(printable(host), port)} within {self.config.open_timeout:g}s: "
                                   "check the server runs and that its firewall (a cloud's security group too) "
                                   "lets that port in") from None
            raise TimeoutError(f"no address of {host} answered within {self.config.open_timeout:g}s"
                               + (f"; {failure_words(failures)}" if failures else "")) from None

    async def _tls_port(self) -> FatalClientError | None:
        """The error for a ws:// --url whose port speaks TLS (the server, or a reverse proxy terminating TLS,
        which answers plain HTTP with 400), else None: retrying the same URL can never work."""
        parts = urlsplit(self.ws_url)
        if parts.scheme == "ws" and not self.proxy.url and await speaks_tls(parts.hostname or "", parts.port or 80):
            fixed = urlunsplit(("wss",) + urlsplit(self.config.url)[1:])
            return FatalClientError(f"{self.config.url}: the server speaks TLS: use --url {fixed}")
        return None

    async def _handshake(self, websocket: ClientConnection):
        hello = Hello(self.config.mode, self.config.services, self.client_id, self.initial_window,
                      extra={**self.config.extra, "max_streams": self.config.max_streams})  # the server skips us when full
        await websocket.send(hello.encode())
        try:
            return parse_welcome(await asyncio.wait_for(websocket.recv(), 15))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is not None and rcvd.code in FATAL_CLOSE_CODES:
                raise FatalClientError(f"the server refused this client: {printable(rcvd.reason)}") from None
            raise
        except HandshakeError as exc:
            raise FatalClientError(f"bad handshake from server: {printable(str(exc), 300)}") from None  # its version
