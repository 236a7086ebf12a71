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
import uuid
import weakref
from typing import Callable

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ..core.auth import OPEN_PIPES, TokenError, read_token_lines
from ..core.cert_expiry import peer_not_after, warn_if_ending
from ..core.handshake import CLOSE_TOKEN_REVOKED
from ..core.logs import logfmt
from ..core.mux import DEFAULT_INITIAL_WINDOW, Multiplexer
from ..core.services import shown_service
from ..core.channel import Channel
from ..core.session import Session
from ..core.tls import PinnedCa, TlsConfigError
from .connect import ClientConfig, FatalClientError, LoginsRefused, connect_url, handshake, open_websocket
from .diagnose import describe as _describe, how_closed
from .outbound_proxy import ProxyConfigError, choose as choose_proxy

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
        self._woken_by = ""  # who set _retry_now (local_connection, sighup): named by the line of its attempt
        #: Until when (loop time) the server refuses every login from this address (its 429's Retry-After): a
        #: --local user's wake does not bring a try forward before it, as each would only get 429 again.
        self._logins_refused_until = 0.0
        self._replace_now = asyncio.Event()  # a --local user waits while the server drains: try its replacement now
        #: Replaced sessions still finishing their streams (``_replace``): SIGTERM waits for them too, else a
        #: request in flight on the session a SIGHUP or a GOAWAY had just replaced was cut at exit.
        self._draining: set[asyncio.Task] = set()
        #: the token each session was opened with: after a revocation, whether the file holds another one now
        self._opened_with: weakref.WeakKeyDictionary[Session, str] = weakref.WeakKeyDictionary()
        self._token_file_unreadable = False  # said once, until the file can be read again
        self._tokens_in_file = 1  # at the last read: when several, only the first is sent (said once, and by a 401)
        self._pinned = PinnedCa(config.tls_ca, config.ssl_context) if config.tls_ca and config.ssl_context else None
        self._ca_unusable = False  # said once, until the --tls-ca file can be used again
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
            tokens = read_token_lines(self.config.token_file)
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
        if len(tokens) > 1 and self._tokens_in_file < 2:  # a server's rotation file: which one goes, said once
            log.warning("event=token_file_several url=%s file=%s tokens=%d sent_line=%d hint=%s",
                        logfmt(self.config.url), logfmt(self.config.token_file), len(tokens), tokens[0][0],
                        logfmt("only the first token is sent: give a file holding the one the server takes"))
        self._tokens_in_file = len(tokens)
        self.config.token = token = tokens[0][1]
        return token

    def refresh_ca(self) -> None:
        """Verify the next connection against --tls-ca as the file is now (``PinnedCa``); one it cannot use now
        keeps the CA read last, said once, as an unreadable token file keeps the token."""
        if self._pinned is None:
            return
        try:
            self.config.ssl_context, loaded = self._pinned.current()
        except TlsConfigError as exc:
            if not self._ca_unusable:
                self._ca_unusable = True
                log.warning("event=tls_ca_unreadable url=%s error=%s using=last_ca_read", logfmt(self.config.url),
                            logfmt(exc))
            return
        if loaded:
            self._ca_unusable = False
            log.info("event=tls_ca_reloaded url=%s path=%s", logfmt(self.config.url), logfmt(self._pinned.path))

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        if self.proxy.url:
            log.info("event=proxy proxy=%s source=%s", logfmt(self.proxy.shown), logfmt(self.proxy.source))
        #: When the backoff's next attempt is due. One made sooner (a --local user or SIGHUP woke the client) that
        #: fails leaves the backoff as it was and waits out the rest: each one doubled it, a waiting user's wake
        #: each second took it to 30 s within seconds, and the line named a wait the next wake cut short.
        due = loop.time()
        while not self._stopping:
            self._retry_now.clear()  # a SIGHUP from now on cuts the wait after this attempt short
            woken, self._woken_by = self._woken_by, ""
            try:
                session = await self.open_session()
            except FatalClientError:
                raise
            except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                due = max(due, self._refused_until(exc))  # a 429's Retry-After, whichever try met it
                if woken and loop.time() < due:  # said once per RepeatLimit window: a user's wake comes each second
                    sleep = due - loop.time()
                    log.warning("event=connect_failed url=%s error=%s woken_by=%s retry_in=%.1fs",
                                logfmt(self.config.url), logfmt(_describe(exc)), logfmt(woken), sleep,
                                extra={"cause": (self.config.url, woken)})
                else:  # the wait the line names is the one taken (jitter included)
                    sleep = max(backoff.next_wait(), due - loop.time())
                    log.warning("event=connect_failed url=%s error=%s retry_in=%.1fs", logfmt(self.config.url),
                                logfmt(_describe(exc)), sleep)
                    due = loop.time() + sleep
            else:
                started = loop.time()
                session = await self._follow(session)
                if self._stopping:
                    return
                if self._revoked_for_a_new_token(session):
                    sleep = 0.0  # its wait doubled at each quick rotation (to 30 s) though the file had the new token
                else:
                    if loop.time() - started > STEADY_AFTER:
                        backoff.reset()  # it was up for a while: start over
                    sleep = backoff.next_wait()
                log.warning("event=disconnected url=%s close=%s retry_in=%.1fs", logfmt(self.config.url),
                            logfmt(how_closed(session.websocket.protocol)), sleep)
                due = loop.time() + sleep
            try:
                await asyncio.wait_for(self._retry_now.wait(), sleep)
            except asyncio.TimeoutError:
                pass

    def _refused_until(self, exc: BaseException) -> float:
        """When (loop time) the server takes logins from this address again: after a 429's Retry-After (every login
        refused, the right token too), noted so that no try, woken by a --local user or not, comes before it."""
        if isinstance(exc, LoginsRefused) and exc.retry_after:
            until = asyncio.get_running_loop().time() + exc.retry_after
            self._logins_refused_until = max(self._logins_refused_until, until)
        return self._logins_refused_until

    def _revoked_for_a_new_token(self, session: Session) -> bool:
        """Whether the server revoked ``session``'s token and the token file holds another one now (a rotation whose
        client SIGHUP was missed): that one is tried at once. The same token again waits, and its 401 ends the client."""
        frame = session.websocket.protocol.close_rcvd
        return (frame is not None and frame.code == CLOSE_TOKEN_REVOKED
                and self.current_token() != self._opened_with.get(session))

    async def run_once(self) -> None:
        """One connection: returns when it closes; raises on failure to connect."""
        await self._follow(await self.open_session())

    async def open_session(self) -> Session:
        """Connect, authenticate and shake hands; the session then runs in the background."""
        token = self.current_token()  # read before dialling: an unreadable file is said while the server is down too
        self.refresh_ca()
        first_of = (self._tokens_in_file, self.config.token_file) if self.config.token_file is not None else None
        websocket = await open_websocket(self.config, self.ws_url, self.proxy, token, first_of)
        try:
            welcome = await handshake(websocket, self.config, self.client_id, self.initial_window)
        except BaseException:
            await websocket.close()
            raise
        cfg = self.config
        mux = Multiplexer(client=True, recv_window=cfg.window, send_window=welcome.window, max_frame=welcome.max_frame,
                          max_streams=cfg.max_streams, initial_recv_window=self.initial_window, recv_budget=cfg.max_buffer)
        session = Session(websocket, mux, on_stream=self.on_stream, name="server", keepalive=self.config.keepalive)
        session.on_goaway = session.on_retire = self._reconnect_now
        self._opened_with[session] = token
        asyncio.ensure_future(self._run(session))
        # What this client serves, not what the welcome claims: a server's list went into the line as it came.
        log.info("event=connected url=%s services=%s", logfmt(self.config.url),
                 logfmt(",".join(map(shown_service, cfg.services))))
        asked = set(cfg.services)
        if unasked := [service for service in welcome.services if service not in asked]:
            log.warning("event=welcome_lists_unasked_services url=%s count=%d services=%s", logfmt(self.config.url),
                        len(unasked), logfmt(",".join(map(shown_service, unasked[:10]))))
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

    def reconnect_now(self) -> None:
        """A --local user waits for the tunnel: end the backoff wait (up to ``backoff_max``, 30 s) and connect now, as
        SIGHUP does; the user, reset after 10 s, was reset though the server had been back for most of them. While
        the server drains (GOAWAY) the wait cut short is that between attempts to replace its session."""
        if self._stopping:
            return
        if asyncio.get_running_loop().time() < self._logins_refused_until:
            return  # the server refuses every login from here until then: a try would only get 429 again
        if self.session is None:
            self._woken_by = self._woken_by or "local_connection"
            self._retry_now.set()
        else:
            self._replace_now.set()

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
                self._woken_by = "sighup"  # connection made here was closed as "not needed", its log said connected)
                self._retry_now.set()
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
            self._replace_now.clear()  # a user's wake from now on is for this replacement
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
            await self._until_stopped_or_woken(session, wait)
        else:
            self._goaway_backoff.reset()
        # A server restarting (SIGTERM, then started again) refuses the first try: tried once, the client kept the
        # draining session, which refuses every new stream, until its last stream ended (up to --drain-timeout).
        retry = Backoff(self.config.backoff_initial, self.config.backoff_max)
        due = loop.time()  # as in run_forever: a try a waiting user woke sooner leaves the backoff as it was
        while True:
            async with self._rotating:
                if session is not self.session or self._stopping or session.closed.is_set():
                    return
                self._replace_now.clear()  # a user's wake from now on cuts the wait after this attempt short
                if await self._replace():
                    return
            if loop.time() >= due:
                due = loop.time() + retry.next_wait()
            due = max(due, self._logins_refused_until)  # a 429's Retry-After (``_replace`` notes it)
            await self._until_stopped_or_woken(session, due - loop.time())

    async def _until_stopped_or_woken(self, session: Session, timeout: float) -> None:
        """Wait ``timeout`` between replacement attempts, less if ``session`` closes, the client stops, or a --local
        user waits (``reconnect_now``, at most each second): the backoff, up to 30 s, outlasted the user's 10 s."""
        waits = {asyncio.ensure_future(event.wait()) for event in (session.closed, self._stopped, self._replace_now)}
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()

    async def _replace(self) -> bool:
        """Whether the session was replaced (or need not be any more)."""
        old = self.session
        try:
            new = await self.open_session()
        except (FatalClientError, OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            self._refused_until(exc)
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
