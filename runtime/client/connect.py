"""One connection to the tunnel server: dial, TLS, websocket upgrade, hello/welcome, and the words for each way
that fails.

Apart from ``dialer.py`` (which decides when to connect, and runs and replaces sessions) because this is the
part that talks to the network once and explains its failures: retrying cannot fix a wrong token, an untrusted
certificate, a ws:// URL for a TLS port or a refused handshake, so those raise ``FatalClientError`` here.
``ClientConfig`` lives here, as most of it is what a connection reads; ``dialer`` re-exports both.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus, InvalidURI, ProxyError,
)

from ..core import retry_after as retry_after_header
from ..core.auth import logins_refused, token_refused
from ..core.eyeballs import connect_socket, failure_words, is_name
from ..core.handshake import (
    CLOSE_BAD_HELLO, CONNECT_PATH, FATAL_CLOSE_CODES, HandshakeError, Hello, Welcome, parse_welcome,
)
from ..core.hosts import HostError, authority, split_url, tls_name
from ..core.mux import DEFAULT_MAX_FRAME, DEFAULT_WINDOW, max_message
from ..core.ports import url_port
from ..core.tls import verify_failure
from ..core.wsflow import BinaryFirst, BoundedReplies, first_message
from .diagnose import printable, speaks_plain_http, speaks_tls
from .outbound_proxy import (
    ProxyChoice, certificate_failure as proxy_certificate_failure, explain as explain_proxy_failure,
)


class BoundedClientConnection(BoundedReplies, ClientConnection):
    def connection_lost(self, exc: Exception | None) -> None:
        """Through an HTTP proxy websockets makes this the transport's protocol before TLS starts; when TLS
        fails (the proxy closed the tunnel it granted) the loss comes to a connection never made, and
        websockets' handler raised AttributeError (no ``recv_messages``): a traceback in the log per attempt."""
        if hasattr(self, "recv_messages"):  # set by connection_made
            super().connection_lost(exc)


class FatalClientError(Exception):
    """Retrying cannot help; the message says what to fix."""


#: How long the server may take to answer the hello with its welcome, the websocket up.
WELCOME_TIMEOUT = 15.0
#: The longest Retry-After a client waits for: the server's window is a minute; a longer one (a proxy's, a wrong
#: clock) would leave the tunnel down for as long as it said. SIGHUP still ends the wait at once.
LOGINS_WAIT_MAX = 600.0


class LoginsRefused(InvalidHandshake):
    """The server answered 429: no login from this address until ``retry_after`` seconds have passed (its
    Retry-After, at most ``LOGINS_WAIT_MAX``; None when it gave none). Not fatal: the client retries after it."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(logins_refused(retry_after))
        self.retry_after = retry_after


class _NoRedirects(connect):
    """``connect`` that follows no redirect: websockets followed up to 10, so the server (or anything on a ws://
    path) made the client dial any host:port it named, on the client's own network. A tunnel server never
    redirects: a 3xx comes back as the ``InvalidStatus`` it is (``open_websocket`` says where it pointed)."""

    def process_redirect(self, exc: Exception) -> Exception:
        return exc


@dataclass
class ClientConfig:
    url: str
    token: str
    mode: str
    services: list[str]
    ssl_context: ssl.SSLContext | None = None
    tls_ca: Path | None = None  # the file ssl_context pins: re-read when it changes (CA rotation)
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


async def open_websocket(cfg: ClientConfig, ws_url: str, proxy: ProxyChoice, token: str,
                         first_of: tuple[int, Path] | None = None) -> ClientConnection:
    """The websocket to the server at ``ws_url`` (``connect_url``), through ``proxy`` when it names one, with
    ``token``; what retrying cannot fix raises ``FatalClientError``, its message saying what to fix. ``first_of``:
    (tokens, file) when the token is the first of a file holding several, which a refusal says (``token_refused``)."""
    kwargs: dict = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.open_timeout
    parts = urlsplit(ws_url)
    host, port = parts.hostname or "", url_port(parts, 443 if parts.scheme == "wss" else 80)
    if ws_url.startswith("wss://"):
        kwargs["ssl"] = cfg.ssl_context or ssl.create_default_context()
        kwargs["server_hostname"] = tls_name(cfg.server_name or host)
    try:
        if not proxy.url:  # dialled here, an address too: a timeout then says which step got no answer
            kwargs["sock"] = await _dial(host, port, cfg.open_timeout)
        websocket = await _NoRedirects(
            ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            max_size=max_message(DEFAULT_MAX_FRAME),  # the welcome's max_frame sets it anew (``handshake``)
            max_queue=64,
            write_limit=512 * 1024,
            ping_interval=None,  # Session runs its own keepalive
            close_timeout=5,
            open_timeout=max(deadline - loop.time(), 0.001),  # what the dial to a name left of it
            user_agent_header="inlets-py",
            logger=logging.getLogger("inlets.websockets"),
            proxy=proxy.url,
            create_connection=BoundedClientConnection,
            **kwargs,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            raise FatalClientError(token_refused(first_of)) from None
        if status == 429:  # the token may be right: retried once the server's window has passed
            given = exc.response.headers.get_all("Retry-After")  # get() raised on a repeated one
            asked = retry_after_header.parse(given[0] if given else None, datetime.datetime.now(datetime.timezone.utc))
            raise LoginsRefused(None if asked is None else min(asked, LOGINS_WAIT_MAX)) from None
        if status == 404:
            hint = "check --url"
            if urlsplit(ws_url).path.endswith(CONNECT_PATH + CONNECT_PATH):  # the user gave the endpoint's own path
                hint = f"give --url without {CONNECT_PATH}: the client adds it"
            raise FatalClientError(f"no tunnel endpoint at {ws_url} (HTTP 404): {hint}") from None
        if 300 <= status < 400:
            locations = exc.response.headers.get_all("Location")  # get() raised on a repeated one
            where = f" to {printable(locations[0], 300)}" if locations else ""
            raise FatalClientError(f"{ws_url} answers a redirect (HTTP {status}){where}, which a tunnel "
                                   "server never sends and this client does not follow: check --url") from None
        if status == 400 and (wrong := await _tls_port(cfg.url, ws_url, proxy)) is not None:  # nginx: "plain HTTP ... to HTTPS port"
            raise wrong from None
        raise
    except ssl.SSLCertVerificationError as exc:
        if proxy.url and (why := await proxy_certificate_failure(proxy.url)):
            raise FatalClientError(f"proxy {proxy.shown}: its TLS certificate could not be verified: {why} "
                                   "(an https:// proxy is checked against the system's trust store)") from None
        via = f"through proxy {proxy.shown}: " if proxy.url else ""  # which may be inspecting TLS with its own
        why = verify_failure(exc, cfg.server_name, ca_given=cfg.tls_ca is not None)
        raise FatalClientError(f"{via}{cfg.url}: {why}") from None
    except InvalidURI as exc:
        raise FatalClientError(str(exc)) from None
    except InvalidMessage:  # no HTTP answer: a ws:// URL for a TLS server closes without one
        if (wrong := await _tls_port(cfg.url, ws_url, proxy)) is not None:
            raise wrong from None
        raise
    except (ProxyError, OSError) as exc:
        if isinstance(exc, TimeoutError) and "sock" in kwargs:  # connected (_dial): the server said nothing
            raise TimeoutError(f"{authority(printable(host), port)} accepted the connection but did not complete the TLS "
                               f"and websocket handshake within {cfg.open_timeout:g}s: check --url names the "
                               "server's control port (8123 unless set) and that the server is not stopped or "
                               "overloaded") from None
        parts = urlsplit(ws_url)
        if (not proxy.url and parts.scheme == "wss" and isinstance(exc, (ConnectionResetError, ssl.SSLError))
                and await speaks_plain_http(parts.hostname or "", parts.port or 443)):
            fixed = urlunsplit(("ws",) + urlsplit(cfg.url)[1:])
            raise FatalClientError(f"{cfg.url} answers plain HTTP, not TLS: for a server run with "
                                   f"--plaintext use --url {fixed} (or give it --tls-cert/--tls-key); else give "
                                   "its control port (8123 unless set), not a data port") from None
        if not proxy.url:
            raise
        parts = urlsplit(ws_url)  # say which proxy answered what; run_forever retries
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname  # CONNECT [::1]:8123
        target = f"{host}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
        raise explain_proxy_failure(exc, proxy.url, target, proxy.source,
                                    cfg.proxy_password_from) from None
    sock = websocket.transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return websocket



async def _dial(host: str, port: int, open_timeout: float) -> socket.socket:
    """A socket to the server, the first of its addresses to answer: websockets (through the loop) tried a name's
    addresses in turn, each until --open-timeout, so a dead AAAA record (or A) kept the client from a server
    that answered on its other address, forever. An address is dialled here too, so that a timeout says
    whether TCP got no answer (here) or the server accepted and then said nothing (``open_websocket``)."""
    failures: list = []  # said with the timeout: an address that refused, while another dropped SYNs
    try:
        return await asyncio.wait_for(connect_socket(host, port, failures=failures), open_timeout)
    except asyncio.TimeoutError:
        if not is_name(host):  # an address: SYNs dropped (a firewall), or no host there
            raise TimeoutError(f"nothing answered at {authority(printable(host), port)} within {open_timeout:g}s: "
                               "check the server runs and that its firewall (a cloud's security group too) "
                               "lets that port in") from None
        raise TimeoutError(f"no address of {host} answered within {open_timeout:g}s"
                           + (f"; {failure_words(failures)}" if failures else "")) from None



async def _tls_port(url: str, ws_url: str, proxy: ProxyChoice) -> FatalClientError | None:
    """The error for a ws:// --url whose port speaks TLS (the server, or a reverse proxy terminating TLS,
    which answers plain HTTP with 400), else None: retrying the same URL can never work."""
    parts = urlsplit(ws_url)
    if parts.scheme == "ws" and not proxy.url and await speaks_tls(parts.hostname or "", parts.port or 80):
        fixed = urlunsplit(("wss",) + urlsplit(url)[1:])
        return FatalClientError(f"{url}: the server speaks TLS: use --url {fixed}")
    return None



async def handshake(websocket: ClientConnection, config: ClientConfig, client_id: str, initial_window: int) -> Welcome:
    """Send the hello, return the server's welcome; a refusal or a welcome this client cannot read is fatal. From then
    on the server's messages are capped as it caps ours (``max_message`` of its ``max_frame``): a 16 MiB message of
    OPENs held the client's loop for seconds."""
    hello = Hello(config.mode, config.services, client_id, initial_window,
                  extra={**config.extra, "max_streams": config.max_streams})  # the server skips us when full
    await websocket.send(hello.encode())
    try:
        welcome = parse_welcome(await _welcome_message(websocket))
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        if rcvd is not None and rcvd.code in FATAL_CLOSE_CODES:
            raise FatalClientError(f"the server refused this client: {printable(rcvd.reason)}") from None
        raise
    except HandshakeError as exc:
        raise FatalClientError(f"bad handshake from server: {printable(str(exc), 300)}") from None  # its version
    websocket.limit_messages(max_message(welcome.max_frame))  # type: ignore[attr-defined]
    return welcome


async def _welcome_message(websocket: ClientConnection) -> str | bytes:
    """The server's first message, a text one, within ``WELCOME_TIMEOUT``: a binary one first is refused at once
    (``wsflow.first_message``), and silence says what the server may be."""
    try:
        message = await first_message(websocket, WELCOME_TIMEOUT)
    except BinaryFirst:
        websocket.discard_messages()  # type: ignore[attr-defined]  # read on: the closing handshake completes
        raise HandshakeError(CLOSE_BAD_HELLO, "expected a text welcome message, got a binary one") from None
    if message is None:
        raise TimeoutError(f"the server accepted the websocket but sent no welcome within {WELCOME_TIMEOUT:g}s: "
                           "is --url an inlets server's control port (8123 unless set)?")
    return message
