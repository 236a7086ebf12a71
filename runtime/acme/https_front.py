"""The HTTP data plane with Let's Encrypt: HTTPS on one port, redirects and HTTP-01 on the other.

* The HTTPS port runs the ordinary reverse proxy (``http_proxy.FrontConnection``) over
  TLS, the certificate chosen by SNI (``letsencrypt.LetsEncrypt``); upstreams are told
  ``X-Forwarded-Proto: https``.
* The plain port answers ``/.well-known/acme-challenge/TOKEN`` from the challenges in
  flight and redirects requests for its domains to https (308 keeps the method and body), one
  request per connection, with a deadline for the request head.

Connections on the HTTPS port without a request head yet are capped as the control
port's are (``server.admission``): uncapped, 8,000 stalled partial ClientHellos took the
server from 31 MB to 449-513 MB, only the descriptor limit bounding it. Here at most
``PUBLIC_MAX_PER_SOURCE`` from one address and ``PUBLIC_MAX_TOTAL`` in all (``server.admission``), the oldest
closed at that cap; a connection stops counting at its first request head, as on the plain
data port (a browser sends it within milliseconds of its handshake). Counted only until the
handshake was done, 1,000 that completed TLS and sent nothing from one address were all held
until --idle-timeout (RSS 31 -> 79 MiB). A partial ClientHello holds no TLS layer (admission
starts TLS once the record is whole); a whole one that then stalls holds ~90 KiB until closed.

Connections to the plain port are capped the same way, by an admission of their own with --port's caps
(``plain_caps``: --max-pending-connections(-per-source); a flood of one port does not evict the other's), each counted until it closes: it lives for one request, a challenge answer or
a redirect. Uncapped, 3,000 idle connections from one address held 3,000 sockets (14,000, +38 MiB RSS, as
fast as one address connected within the 10 s deadline), towards the descriptor limit all ports share.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Collection, Protocol

from ..core.logs import logfmt
from ..core.ports import parse_port
from ..core.listen import listen_as
from ..http.front import FrontConnection, FrontServer
from ..http.messages import HttpError, RequestHead
from ..http.request_reader import RequestReader
from ..http.write import SimpleResponse
from ..server.admission import PUBLIC_MAX_PER_SOURCE, PUBLIC_MAX_TOTAL, Admission, Ticket, plain_http_answer
from .letsencrypt import LetsEncrypt

log = logging.getLogger("inlets.http")

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
HEAD_TIMEOUT = 10.0  # seconds a port-80 client gets to send its request head
MAX_REDIRECT_HEAD = 16 * 1024
#: Plain HTTP sent to the HTTPS port (``http://example.com:443/``, a load balancer's check set to HTTP): curl
#: said "Empty reply from server", a browser "connection reset". Go's servers (Caddy, Traefik) answer 400
#: "Client sent an HTTP request to an HTTPS server.", nginx 400 "The plain HTTP request was sent to HTTPS port".
PLAIN_HTTP_ON_HTTPS = plain_http_answer(b"This is an HTTPS port: use https://, not http://\n")


class HttpsServer(FrontServer, Protocol):
    """The HTTP server as its HTTPS front sees it (``http.server.HttpTunnelServer`` is one)."""

    data_addr: str | None
    port: int


class TlsFrontConnection(FrontConnection):
    """The reverse proxy over TLS: ``X-Forwarded-Proto: https``, and no half-open connections."""

    def __init__(self, server: FrontServer) -> None:
        super().__init__(server, scheme=b"https")

    def eof_received(self) -> bool:
        super().eof_received()
        return False  # TLS closes on the peer's close_notify anyway; True only makes asyncio warn per connection


def plain_answer(head: RequestHead, challenges: dict[str, str], https_port: int,
                 domains: Collection[str]) -> tuple[int, bytes, list]:
    """(status, body, extra headers) for a request on the plain port: no I/O, so tests call it directly.

    Only ``domains`` (the --letsencrypt-domain names, the only ones with a certificate) are redirected, as Caddy
    and Traefik redirect only the sites they serve: any other Host got ``Location: https://THAT-HOST/``, an open
    redirect for whatever could set the Host (a shared cache, a page's fetch through a proxy)."""
    path = head.target.split(b"?", 1)[0]
    if path.startswith(CHALLENGE_PREFIX):
        token = path[len(CHALLENGE_PREFIX):].decode("ascii", "replace")
        answer = challenges.get(token)
        if answer is None or head.method not in (b"GET", b"HEAD"):
            return 404, b"no such challenge\n", []
        return 200, answer.encode(), []
    if not head.host:
        return 400, b"a Host header is needed to redirect to https\n", []
    port = head.noted.get(b"host", [b""])[0].strip(b" \t").rpartition(b"]")[2].partition(b":")[2]
    if port and parse_port(port.decode("ascii", "replace")) is None:
        return 400, b"invalid Host header: its port is not 1-65535\n", []
    if head.host not in domains:
        return 404, b"not a domain of this server: only its Let's Encrypt domains are redirected to https\n", []
    port_part = "" if https_port == 443 else f":{https_port}"
    target = head.target if head.target.startswith(b"/") else b"/"
    return 308, b"", [(b"Location", f"https://{head.host}{port_part}".encode() + target)]


class PlainFront(asyncio.Protocol):
    """One connection on the plain HTTP port: a challenge answer or a redirect, then close."""

    ticket: Ticket | None = None  # its place in the plain port's admission, given back when it closes

    def __init__(self, letsencrypt: LetsEncrypt, https_port: int) -> None:
        self.letsencrypt = letsencrypt
        self.https_port = https_port
        self.reader = RequestReader(max_header_bytes=MAX_REDIRECT_HEAD, max_headers=50)
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            events = self.reader.feed(data)
        except HttpError as exc:
            self._answer(exc.status, (str(exc) + "\n").encode(), [], False)
            return
        head = next((e for e in events if isinstance(e, RequestHead)), None)
        if head is not None:
            status, body, extra = plain_answer(head, self.letsencrypt.challenges, self.https_port,
                                               self.letsencrypt.domain_set)
            if status == 200:
                log.info("event=acme_challenge_answered host=%s", logfmt(head.host or "-"))
            self._answer(status, body, extra, head.method == b"HEAD")

    def _answer(self, status: int, body: bytes, extra: list, head_only: bool) -> None:
        assert self.transport is not None
        self.transport.write(SimpleResponse(status, body, extra).encode(True, head_only))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.ticket is not None:
            self.ticket.release()
        self.transport = None


class HttpsFront:
    """Both listeners and the certificate manager, started and stopped with the tunnel server."""

    def __init__(self, letsencrypt: LetsEncrypt, https_port: int = 443, max_handshakes: int = PUBLIC_MAX_TOTAL,
                 max_handshakes_per_source: int = PUBLIC_MAX_PER_SOURCE, *,
                 plain_caps: tuple[int, int] = (PUBLIC_MAX_TOTAL, PUBLIC_MAX_PER_SOURCE)) -> None:
        self.letsencrypt = letsencrypt
        self.https_port = https_port
        # No trusted proxies: --lb-proxy-protocol cannot be combined with --letsencrypt-domain. Plain HTTP on the
        # HTTPS port is told so in words, not logged (a visitor's typo, not the operator's)
        # a connection's place passes to its TlsFrontConnection once TLS is up, given back at its first request head
        self.admission = Admission(max_handshakes, max_handshakes_per_source, listener="https",
                                   answer_plain_http=PLAIN_HTTP_ON_HTTPS)
        self.plain_admission = Admission(*plain_caps, listener="http")  # --max-pending-connections(-per-source)
        self._plain: asyncio.base_events.Server | None = None
        self._tls: asyncio.base_events.Server | None = None

    async def start(self, server: HttpsServer) -> asyncio.base_events.Server:
        """Listen on ``server.port`` (plain) and ``https_port`` (TLS); returns the TLS listener.

        ``OSError`` (a port taken) leaves nothing listening.
        """
        self.letsencrypt.load()
        self._plain = await listen_as(
            "data", lambda: self.plain_admission.connection(lambda: PlainFront(self.letsencrypt, self.https_port), None),
            server.data_addr, server.port)
        try:
            # no ssl_context: admission starts TLS itself (letsencrypt.context: the certificate by SNI), once a
            # connection is within the caps
            self._tls = await listen_as(
                "https", lambda: self.admission.connection(lambda: TlsFrontConnection(server), self.letsencrypt.context),
                server.data_addr, self.https_port)
        except OSError:
            self._plain.close()
            raise
        await self.letsencrypt.start()
        return self._tls

    async def stop(self) -> None:
        await self.letsencrypt.stop()
        for listener in (self._plain, self._tls):
            if listener is not None:
                listener.close()
        self.admission.abort_handshakes()
