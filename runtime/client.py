"""The tunnel client: dial out, authenticate, advertise services, serve streams; forever.

Transient failures (network, server restart) reconnect with exponential backoff and
jitter. Failures that retrying cannot fix (wrong token, untrusted certificate, a
refused handshake) raise ``FatalClientError`` so the command exits with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI, ProxyError

from .control import CONNECT_PATH
from .handshake import FATAL_CLOSE_CODES, HandshakeError, Hello, parse_welcome
from .mux import DEFAULT_MAX_FRAME, DEFAULT_WINDOW, Multiplexer
from .proxy import ProxyConfigError, choose as choose_proxy, explain as explain_proxy_failure
from .session import Channel, Session

log = logging.getLogger("inlets.client")


class FatalClientError(Exception):
    """Retrying cannot help; the message says what to fix."""


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
    proxy: str | None = None  # http://[user:pass@]host:port or socks5://...; "none": direct; None: HTTPS_PROXY etc.


def connect_url(url: str) -> str:
    """The websocket URL for ``url``: its path is a prefix (reverse proxies), ``/connect`` appended."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise FatalClientError(f"--url must be ws://HOST[:PORT] or wss://HOST[:PORT], got {url!r}")
    path = parts.path.rstrip("/") + CONNECT_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


class TunnelClient:
    def __init__(self, config: ClientConfig, on_stream: Callable[[Channel], None]) -> None:
        self.config = config
        self.on_stream = on_stream
        self.client_id = config.client_id or uuid.uuid4().hex[:12]
        self.session: Session | None = None
        self.connected = asyncio.Event()
        self.ws_url = connect_url(config.url)
        try:
            self.proxy = choose_proxy(config.proxy, self.ws_url)
        except ProxyConfigError as exc:
            raise FatalClientError(str(exc)) from None

    async def run_forever(self) -> None:
        delay = self.config.backoff_initial
        if self.proxy.url:
            log.info("event=proxy proxy=%s source=%s", self.proxy.shown, self.proxy.source)
        while True:
            try:
                await self.run_once()
                delay = self.config.backoff_initial  # it was up: start over
                log.warning("event=disconnected url=%s", self.config.url)
            except FatalClientError:
                raise
            except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                log.warning("event=connect_failed url=%s error=%r retry_in=%.1fs", self.config.url, _describe(exc), delay)
            sleep = delay * random.uniform(0.5, 1.0)  # jitter: reconnecting clients do not stampede
            delay = min(delay * 2, self.config.backoff_max)
            await asyncio.sleep(sleep)

    async def run_once(self) -> None:
        """One connection: returns when it closes; raises on failure to connect."""
        websocket = await self._connect()
        try:
            welcome = await self._handshake(websocket)
            mux = Multiplexer(
                client=True,
                recv_window=self.config.window,
                send_window=welcome.window,
                max_frame=welcome.max_frame,
            )
            self.session = Session(websocket, mux, on_stream=self.on_stream, name="server", keepalive=self.config.keepalive)
            log.info("event=connected url=%s services=%s", self.config.url, ",".join(welcome.services))
            self.connected.set()
            await self.session.run()
        finally:
            self.connected.clear()
            self.session = None
            await websocket.close()

    async def _connect(self) -> ClientConnection:
        cfg = self.config
        kwargs: dict = {}
        if self.ws_url.startswith("wss://"):
            kwargs["ssl"] = cfg.ssl_context or ssl.create_default_context()
            if cfg.server_name:
                kwargs["server_hostname"] = cfg.server_name
        try:
            websocket = await connect(
                self.ws_url,
                additional_headers={"Authorization": f"Bearer {cfg.token}"},
                compression=None,
                max_size=16 * 1024 * 1024,
                max_queue=64,
                write_limit=512 * 1024,
                ping_interval=None,  # Session runs its own keepalive
                close_timeout=5,
                open_timeout=15,
                user_agent_header="inlets-py",
                logger=logging.getLogger("inlets.websockets"),
                proxy=self.proxy.url,
                **kwargs,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise FatalClientError("the server refused the token (HTTP 401): check --token/--token-file") from None
            if status == 404:
                raise FatalClientError(f"no tunnel endpoint at {self.ws_url} (HTTP 404): check --url") from None
            raise
        except ssl.SSLCertVerificationError as exc:
            raise FatalClientError(f"{self.config.url}: {_describe(exc)} (check --tls-ca / --tls-server-name)") from None
        except InvalidURI as exc:
            raise FatalClientError(str(exc)) from None
        except (ProxyError, OSError) as exc:
            if not self.proxy.url:
                raise
            parts = urlsplit(self.ws_url)  # say which proxy answered what; run_forever retries
            target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
            raise explain_proxy_failure(exc, self.proxy.url, target) from None
        sock = websocket.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return websocket

    async def _handshake(self, websocket: ClientConnection):
        hello = Hello(self.config.mode, self.config.services, self.client_id, self.config.window,
                      extra=self.config.extra)
        await websocket.send(hello.encode())
        try:
            return parse_welcome(await asyncio.wait_for(websocket.recv(), 15))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is not None and rcvd.code in FATAL_CLOSE_CODES:
                raise FatalClientError(f"the server refused this client: {rcvd.reason}") from None
            raise
        except HandshakeError as exc:
            raise FatalClientError(f"bad handshake from server: {exc}") from None

    def stop(self) -> None:
        if self.session is not None:
            asyncio.ensure_future(self.session.close())
