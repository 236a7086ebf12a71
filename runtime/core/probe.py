"""Small authenticated GETs to a tunnel server's control port (``/status``, ``/healthz``).

Blocking on purpose: used by one-shot commands (``inlets status``, inletsctl's waiter).
"""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import retry_after
from .hosts import HostError, authority, split_url, tls_name
from .ports import url_port
from .tls import client_context, too_old, too_old_words, verify_failure


#: How to reach (host, port) within a timeout: ``socket.create_connection``'s shape, or a proxy's
#: (``client/proxy_dial.py``). A ProbeError from it is the answer's; an OSError means unreachable.
Dial = Callable[[str, int, float], socket.socket]


def _direct(host: str, port: int, timeout: float) -> socket.socket:
    return nodelay(socket.create_connection((host, port), timeout=timeout))


def nodelay(sock: socket.socket) -> socket.socket:
    """``sock`` with TCP_NODELAY, as the event loop sets it on its own sockets: without it the last small segment of
    a write (a TLS flight, a request's tail) waits on Nagle for the peer's delayed ACK, up to 40 ms each time."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class ProbeError(Exception):
    """The server could not be asked; the message says why, in one line."""


class Unreachable(ProbeError):
    """Nothing accepted the connection (refused, no route, timed out): maybe not started yet."""


class CertificateRefused(ProbeError):
    """The server's certificate did not verify; the message names the client's flag that fixes it, which a caller
    with no such flag (inletsctl's waits) says in its own words. ``verify_code``: OpenSSL's reason."""

    def __init__(self, message: str, verify_code: int | None = None) -> None:
        super().__init__(message)
        self.verify_code = verify_code


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    location: str | None = None  # a redirect's, to say where it pointed
    retry_after: float | None = None  # seconds its Retry-After asks to wait (a 429's), read as the client reads it


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    prefix: str  # path prefix, for a server behind a reverse proxy

    @property
    def where(self) -> str:
        """``host:port`` for messages, an IPv6 address in brackets (``[::1]:8123``)."""
        return authority(self.host, self.port)


def parse_url(url: str) -> Endpoint:
    """``wss://host:8123``, or ``ws://`` for a --plaintext server: the client's --url, so one message says what is
    taken and every command that probes a server takes the same."""
    try:
        parts = split_url(url)
    except HostError as exc:
        raise ProbeError(str(exc)) from None
    if parts.scheme not in ("wss", "ws") or not parts.hostname:
        raise ProbeError(f"--url must be wss://HOST[:PORT] (or ws://HOST[:PORT] for a --plaintext server), "
                         f"as the client's is, got {url!r}")
    tls = parts.scheme == "wss"
    try:
        port = url_port(parts, 443 if tls else 80)  # as the client's --url means it
    except ValueError:
        raise ProbeError(f"bad port in {url!r}") from None
    return Endpoint(parts.hostname, port, tls, parts.path.rstrip("/"))


def _speaks_plain_http(endpoint: Endpoint, timeout: float, dial: Dial) -> bool:
    """Whether the port answers plain HTTP; only to name a wrong ``wss://`` (a --plaintext server)."""
    try:
        with dial(endpoint.host, endpoint.port, timeout) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {authority(endpoint.host, endpoint.port)}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(5) == b"HTTP/"
    except (OSError, ProbeError):
        return False


def _speaks_tls(endpoint: Endpoint, timeout: float, dial: Dial) -> bool:
    """Whether the port completes a TLS handshake; only to name a wrong ``ws://``, so nothing is verified or sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with dial(endpoint.host, endpoint.port, timeout) as raw:
            context.wrap_socket(raw).close()
        return True
    except (OSError, ProbeError):
        return False


def get(
    endpoint: Endpoint,
    path: str,
    *,
    ca_file: Path | None = None,
    server_name: str | None = None,
    token: str | None = None,
    timeout: float = 5.0,
    method: str = "GET",
    body: bytes = b"",
    deadline: float | None = None,
    dial: Dial | None = None,
) -> Answer:
    """GET (or ``method`` with ``body``) ``path``; TLS verified against ``ca_file`` (pinned) or the system store, for ``server_name``.

    ``timeout`` bounds each wait for the server; ``deadline`` (seconds), when given, the whole exchange, which a
    server sending its answer a byte at a time would otherwise stretch without end. ``dial``: through a proxy."""
    name = server_name or endpoint.host
    dial = dial or _direct
    try:
        raw = dial(endpoint.host, endpoint.port, timeout)
    except OSError as exc:
        raise Unreachable(f"cannot reach {endpoint.where}: {exc.strerror or exc}") from None
    sock: socket.socket = raw
    expired = threading.Event()

    def expire() -> None:  # the blocked read then sees the connection end
        expired.set()
        try:  # the descriptor's shutdown, not SSLSocket's, which drops the TLS state under the reading thread
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(deadline, expire) if deadline is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    late = f"{endpoint.where}: no complete answer within {deadline:g}s" if deadline is not None else ""
    try:
        try:
            if endpoint.tls:
                sock = client_context(ca_file).wrap_socket(raw, server_hostname=tls_name(name))
            host_header = f"[{name}]" if ":" in name else name
            request = f"{method} {endpoint.prefix}{path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\nUser-Agent: inlets\r\n"
            if token:
                request += f"Authorization: Bearer {token}\r\n"
            if body or method != "GET":
                request += f"Content-Length: {len(body)}\r\n"
            sock.sendall((request + "\r\n").encode() + body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            if response.status == 400 and not endpoint.tls and _speaks_tls(endpoint, timeout, dial):  # nginx's answer to that
                raise ProbeError(f"{endpoint.where} speaks TLS: use wss:// in --url")
            waits = response.msg.get_all("Retry-After")  # the first, as the client takes it: getheader joins repeats
            wait = retry_after.parse(waits[0], datetime.datetime.now(datetime.timezone.utc)) if waits else None
            answer = Answer(response.status, response.read(4 * 1024 * 1024).decode(errors="replace"),
                            response.getheader("Location"), wait)
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise ProbeError(late) from None
            raise
        if expired.is_set():  # the body was cut short
            raise ProbeError(late)
        return answer
    except ssl.SSLCertVerificationError as exc:
        raise CertificateRefused(verify_failure(exc, server_name, ca_given=ca_file is not None), exc.verify_code) from None
    except ssl.SSLError as exc:  # OpenSSL's words (WRONG_VERSION_NUMBER, _ssl.c:NNNN) mean nothing to a user
        if too_old(exc):  # a TLS port, not an inlets server's (1.2 and 1.3): another port, or a proxy in front
            raise ProbeError(f"{too_old_words(endpoint.where)}: upgrade what serves it, or check that {endpoint.port} "
                             "is the server's control port (an inlets server speaks TLS 1.2 and 1.3)") from None
        if _speaks_plain_http(endpoint, timeout, dial):
            raise ProbeError(f"{endpoint.where} answers plain HTTP, not TLS: for a server run with "
                             "--plaintext use ws:// in --url; else give its control port (8123 unless set), "
                             "not a data port") from None
        raise ProbeError(f"{endpoint.where}: the TLS handshake failed: is {endpoint.port} the "
                         "server's control port?") from None
    except http.client.RemoteDisconnected:  # no HTTP answer: ws:// to a TLS port closes without one
        if not endpoint.tls and _speaks_tls(endpoint, timeout, dial):
            raise ProbeError(f"{endpoint.where} speaks TLS: use wss:// in --url") from None
        raise ProbeError(f"{endpoint.where} closed the connection without an answer: is "
                         f"{endpoint.port} the server's control port?") from None
    except http.client.BadStatusLine:  # (RemoteDisconnected, above, is one too) an echo, a database: not HTTP
        raise ProbeError(f"{endpoint.where} does not answer HTTP: is {endpoint.port} the server's "
                         "control port?") from None
    except TimeoutError:  # in the TLS handshake its words are OpenSSL's: "_ssl.c:989: The handshake operation timed out"
        raise ProbeError(f"{endpoint.where} accepted the connection but gave no answer within "
                         f"{timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
        raise ProbeError(f"{endpoint.where}: {detail}") from None
    finally:
        if timer is not None:
            timer.cancel()
        sock.close()
        raw.close()
