"""The control port's plain HTTP answers: ``/healthz``, the authenticated routes (``/metrics``, ``/status``) built
off the loop and gzipped, 404/405, the 400/401 refusals of a missing, repeated or wrong token, and the 429 to every
login from a source that sent too many wrong ones.

Apart from ``control.py`` (websocket admission, the hello/welcome handshake, the registry of connected clients)
because this is the request-by-request HTTP side of the port, which ends where the websocket upgrade begins.
``ControlPlane`` takes it as a mixin, so the library calls the same methods as before.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import logging
from http import HTTPStatus
from typing import Awaitable, Callable, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..core.allowlist import SourceAllowList
from ..core.auth import TokenSet
from ..core.handshake import CONNECT_PATH
from ..core.hosts import unmapped
from ..core.logs import logfmt
from .control_connection import ControlConnection
from .ratelimit import FailedLoginLimiter

log = logging.getLogger("inlets.server")

#: An authenticated GET route on the control port (``/metrics``, ``/status``), given the request's headers (a
#: scrape's Accept names its format): (status, content type, body).
Route = Callable[[Headers], tuple[int, str, bytes]]
#: Answers from this size on go gzipped to a client that takes it (Prometheus asks so at every scrape): 10,500 HTTP
#: series were 21.5 MB of text, 0.6 MB gzipped, for 0.16 s of a thread.
GZIP_FROM = 1024
#: What the control port answers besides ``ControlConfig.routes``.
BUILTIN_PATHS = frozenset((CONNECT_PATH, "/healthz"))


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status, HTTPStatus(status).phrase, headers, body)


def _rendered(route: Route, headers: Headers) -> tuple[int, str, bytes, bool]:
    """``route``'s answer, gzipped (True) when large and the client takes gzip (``q=0`` refuses it)."""
    status, content_type, body = route(headers)
    gzipped = len(body) >= GZIP_FROM and _takes_gzip(headers)
    return status, content_type, gzip.compress(body, 6) if gzipped else body, gzipped


def _takes_gzip(headers: Headers) -> bool:
    """Whether Accept-Encoding lists gzip with a weight above 0 (a header repeated counts as one list)."""
    for coding in ",".join(headers.get_all("Accept-Encoding")).split(","):
        name, _, weight = coding.partition(";")
        if name.strip().lower() == "gzip":
            weight = weight.strip().lower().removeprefix("q=")
            try:
                return not weight or float(weight) > 0
            except ValueError:
                return False
    return False


def client_address(peer: object, headers: Headers, trusted: SourceAllowList | None) -> str:
    """Who is asking: the peer, or, when the peer is a trusted reverse proxy, the address the
    proxies recorded in X-Forwarded-For: the rightmost entry not itself a trusted proxy (the
    entries left of it are whatever the client sent, and prove nothing)."""
    host = unmapped(str(peer[0])) if isinstance(peer, tuple) and peer else "?"
    if trusted is None or not trusted.allows(host):
        return host
    return forwarded_client(host, headers.get_all("X-Forwarded-For"), trusted)


def forwarded_client(host: str, values: list[str], trusted: SourceAllowList) -> str:
    """``client_address`` for a trusted proxy at ``host`` that sent these X-Forwarded-For ``values``; the HTTP data
    port's failed-login limit asks it too, with the values its parser noted."""
    hops = [hop.strip() for value in values for hop in value.split(",")]
    for hop in reversed(hops):
        address = _forwarded_ip(hop)
        if address is None:  # not an address: the chain says nothing more that can be used, in logs or as a key
            return host
        if not trusted.allows(address):
            return address
        host = address
    return host


def _forwarded_ip(hop: str) -> str | None:
    """An X-Forwarded-For entry as an IP address (some proxies add a port: ``203.0.113.9:4711``,
    ``[2001:db8::1]:4711``), or None."""
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = unmapped(str(address[0]))
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


class HTTPConfig(Protocol):
    """What of ``ControlConfig`` the HTTP side reads (a protocol: importing ``control`` here made a cycle)."""

    tokens: TokenSet
    routes: dict[str, Route]
    on_request: Callable[[str, int], None] | None
    trusted_proxies: SourceAllowList | None
    login_limit_exempt: SourceAllowList | None


class ControlHTTP:
    """``ControlPlane``'s HTTP side: the library's ``process_request``/``process_response`` hooks and the
    oversized-request hook of its connections."""

    config: HTTPConfig
    logins: FailedLoginLimiter

    def _refused(self, connection: ControlConnection, status: int, reason: str) -> None:
        """A request too large or too malformed to parse, which the library answered: logged and counted as ours
        are."""
        log.warning("event=request_refused remote=%s status=%d reason=%s", logfmt(format_address(connection.peer)),
                    status, logfmt(reason))
        if self.config.on_request is not None:
            self.config.on_request("", status)  # no path was read: the metrics' _other

    def serves(self, path: str) -> bool:
        """Whether the control port answers ``path``: asked per request, so a route added after the metrics
        were made (``/status``) is its own label, not ``_other``, and no list of paths is kept apart."""
        return path in BUILTIN_PATHS or path in self.config.routes

    # ------------------------------------------------------------- HTTP requests

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None | Awaitable:
        return self._answer(connection, request)

    def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        """Count every answer by its real status, the library's own too: a /connect it refused (426 without
        Upgrade, 400 for a bad Sec-WebSocket-Key) was counted as a 101 when counted before the handshake."""
        if self.config.on_request is not None:
            self.config.on_request(request.path.split("?", 1)[0], response.status_code)

    def _answer(self, connection: ServerConnection, request: Request) -> Response | None | Awaitable:
        response = self._route(connection, request)
        if callable(response):
            return self._built(response, request)
        if response is not None and request.method == "HEAD":
            response.body = b""  # answered as its GET would be, Content-Length included, without the body
        return response

    async def _built(self, route: Route, request: Request) -> Response:
        """An authenticated route's answer, made in a thread: built on the loop, a scrape of 21,000 HTTP series
        (3,000 hosts, 7 methods) stopped every tunnel for 3.7 s. The routes read the counters as they are."""
        status, content_type, body, gzipped = await asyncio.to_thread(_rendered, route, request.headers)
        response = _response(status, body, content_type)
        response.headers["Vary"] = "Accept, Accept-Encoding"
        if gzipped:
            response.headers["Content-Encoding"] = "gzip"
        if request.method == "HEAD":
            response.body = b""
        return response

    def _route(self, connection: ServerConnection, request: Request) -> Response | Route | None:
        path = request.path.split("?", 1)[0]
        route = self.config.routes.get(path)
        if not self.serves(path):
            return _response(404, b"not found\n")
        if path != CONNECT_PATH and request.method not in ("GET", "HEAD"):  # the library answers /connect's
            response = _response(405, f"method not allowed: {path} answers GET and HEAD\n".encode())
            response.headers["Allow"] = "GET, HEAD"
            return response
        if path == "/healthz":
            return _response(200, b"OK\n")
        if path == CONNECT_PATH and len(request.headers.get_all("Host")) != 1:  # RFC 6455 4.2.1: refused, not upgraded
            log.warning("event=request_refused remote=%s status=400 reason=%s",
                        logfmt(format_address(connection.remote_address)), logfmt("no Host header, or more than one"))
            return _response(400, b"bad request: a websocket upgrade needs one Host header\n")
        source = client_address(connection.remote_address, request.headers, self.config.trusted_proxies)
        # get_all, not get: Headers.get raises on a repeated header, which the library answered 500, unlogged
        # and uncounted. A repeated Authorization fails like a wrong token: counted, logged, refused.
        authorization = request.headers.get_all("Authorization")
        repeated = len(authorization) > 1
        # A limited source first, its token not even compared: when the right one still got in, the one answer
        # that was not 429 told a guesser which token was right, at full speed (as the data plane's passwords).
        # A --login-limit-exempt source is never limited, nor counted: a guesser sharing its NAT cannot keep it out.
        exempt = self.config.login_limit_exempt is not None and self.config.login_limit_exempt.allows(source)
        if not exempt and self.logins.blocked(source):
            wait = self.logins.retry_after(source)
            response = _response(429, f"too many failed logins from this address: try again in {wait} s\n".encode())
            response.headers["Retry-After"] = str(wait)
            return response
        if repeated or not self.config.tokens.check_header(authorization[0] if authorization else None):
            if not exempt and self.logins.failed(source):  # once per window per source, not once per attempt
                log.warning("event=auth_rate_limited remote=%s failures=%d window=%.0fs",
                            logfmt(source), self.logins.limit, self.logins.window)
            elif repeated:
                log.info("event=bad_request remote=%s path=%s reason=%s", logfmt(source), logfmt(path),
                         logfmt(f"{len(authorization)} Authorization headers"))
            else:
                log.info("event=unauthorized remote=%s path=%s", logfmt(source), logfmt(path))
            if repeated:
                return _response(400, b"bad request: more than one Authorization header\n")
            response = _response(401, b"unauthorized: missing or wrong bearer token\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="inlets"'  # a 401 must say which scheme (RFC 9110)
            return response
        if isinstance(connection, ControlConnection):
            connection.authenticated()
        if route is not None:
            return route  # built off the loop (``_built``)
        return None  # carry on with the websocket upgrade
