"""`inlets http client`: which hosts it serves, and dialling their upstreams on demand.

The server does all of HTTP (it parses every message anyway); a stream that
reaches the client is bridged byte for byte to the upstream of its host, over TLS
for ``https://`` upstreams (verified unless told otherwise). As with TCP, a stream
for a host this client did not advertise is reset.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from pathlib import Path

from ..core.logs import logfmt
from ..core.bridge import dial
from ..core.services import http_service, parse_http_service
from ..core.handshake import HandshakeError
from ..core.hosts import HostError, canonical_ipv6, is_ip, split_url
from ..core.mux import ResetCode
from ..core.ports import url_port
from ..core.channel import Channel
from ..core.tls import load_ca
from ..core.eyeballs import connect_socket, is_name

log = logging.getLogger("inlets.http")


class UpstreamError(ValueError):
    """A malformed --upstream value; the message names it."""


@dataclass(frozen=True)
class HttpUpstream:
    scheme: str
    host: str
    port: int

    @functools.cached_property
    def opener(self) -> Callable[[str, int], Awaitable[socket.socket]] | None:
        """How a stream's connection is made: the Happy Eyeballs race for a name, the loop's own for an http://
        address (asked once per upstream, not at every stream). An https:// one's socket is made apart from its TLS
        too, so a handshake that times out is told from a connect that did (``bridge.dial``)."""
        return connect_socket if is_name(self.host) or self.scheme == "https" else None

    @functools.cached_property
    def unanswered(self) -> Callable[[bool], None] | None:
        """What a connection to an http:// upstream calls when it closed before a word of an answer (``dial``'s
        ``unanswered``): one that serves TLS does so, and users got 502 with nothing in this client's log."""
        if self.scheme != "http":
            return None
        return UnansweredHint(str(self), str(HttpUpstream("https", self.host, self.port)))

    @property
    def host_header(self) -> str:
        """What ``--rewrite-host`` puts in Host: the upstream's authority."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}"


#: One ``upstream_closed_without_answer`` line per upstream per this many seconds: its users' every request fails
#: alike, and one line says what to change.
HINT_WINDOW = 60.0


class UnansweredHint:
    """Says, once per ``HINT_WINDOW`` for one upstream, that it closed connections before answering (how a TLS
    server answers plain HTTP: a FIN from OpenSSL, a reset from Python's ssl); the next line counts those left out
    (``suppressed=N``, as ``logs.RepeatLimit`` writes it). Not when the user had left first: its FIN, passed on
    (``TcpBridge.unanswered``'s ``user_left``), is what an upstream still silent (a long poll, a slow report) closed
    at. A TLS server closes at the plain request, long before the server passes on a FIN (a second after the whole
    request): a user that sent its request and half-closed at once still gets the hint said."""

    __slots__ = ("url", "https", "said", "left_out")

    def __init__(self, url: str, https: str) -> None:
        self.url, self.https = url, https  # the same host and port as https:// (port 80 stays said)
        self.said: float | None = None
        self.left_out = 0

    def __call__(self, user_left: bool) -> None:
        if user_left:
            log.info("event=upstream_unanswered upstream=%s reason=user_left note=%s", logfmt(self.url),
                     logfmt("the user closed its side before the upstream answered; the upstream then closed"),
                     extra={"cause": (self.url, "user_left")})
            return
        now = time.monotonic()
        if self.said is not None and now - self.said < HINT_WINDOW:
            self.left_out += 1
            return
        self.said, left_out, self.left_out = now, self.left_out, 0
        log.warning("event=upstream_closed_without_answer upstream=%s hint=%s%s", logfmt(self.url),
                    logfmt(f"it closed the connection before answering: if it serves TLS, use {self.https}"),
                    f" suppressed={left_out}" if left_out else "")  # as RepeatLimit says it


def parse_upstream_url(text: str) -> HttpUpstream:
    """``http[s]://HOST[:PORT]``, the host checked now: a bad one would leave each user's request hanging."""
    if "," in text:  # no part of such a URL holds one: a list, as Go's inlets takes, said as a path was
        raise UpstreamError(f"--upstream takes one HOST=URL (or one URL): repeat --upstream for each, got {text!r}")
    try:
        parts = split_url(text.strip(), "--upstream")
    except HostError as exc:
        raise UpstreamError(str(exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"upstream must be http://HOST[:PORT] or https://HOST[:PORT], got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UpstreamError(f"upstream URL takes no path, query or credentials: {text!r}")
    try:
        port = url_port(parts, 443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UpstreamError(f"bad port in upstream {text!r}") from None
    return HttpUpstream(parts.scheme, parts.hostname, port)


def _a_label(name: str) -> str:
    """An IDN as browsers send it in Host, its A-label (``bücher.de`` -> ``xn--bcher-kva.de``), as the server's
    --letsencrypt-domain and --auto-tls-san take it; it was refused as an "invalid host name"."""
    return name if name.isascii() else name.encode("idna").decode("ascii")


def _unbracketed(name: str) -> str:
    """``[2001:db8::1]`` as the address it writes; anything else as given."""
    return name[1:-1] if name.startswith("[") and name.endswith("]") and is_ip(name[1:-1]) else name


def parse_upstreams(items: list[str]) -> dict[str, HttpUpstream]:
    """``NAME=URL`` (exact host) or a bare ``URL`` (catch-all) -> {service: upstream}."""
    mapping: dict[str, HttpUpstream] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep:
            name, url = "*", item
        elif "://" in name:
            raise UpstreamError(f"expected HOSTNAME=URL or URL, got {item!r}")
        try:
            name = canonical_ipv6(_unbracketed(name.strip()))  # [::1] as Host writes it, 0:0::1 too: the host ::1
            service = http_service(parse_http_service("http:" + _a_label(name.lower().rstrip("."))))
        except (HandshakeError, UnicodeError):
            raise UpstreamError(f"invalid host name {name!r} in --upstream {item!r}") from None
        if service in mapping:
            what = "catch-all URL" if service.endswith("*") else f"upstream for {name}"
            raise UpstreamError(f"more than one {what}")
        mapping[service] = parse_upstream_url(url)
    if not mapping:
        raise UpstreamError("nothing to serve: give --upstream HOSTNAME=URL and/or --upstream URL")
    return mapping


def upstream_tls(ca: Path | None = None, insecure: bool = False) -> ssl.SSLContext:
    """The context for https:// upstreams; a bad ``--upstream-ca`` raises TlsConfigError in words."""
    if ca is None:
        context = ssl.create_default_context()
    else:  # that CA alone, as create_default_context(cafile=) trusts it, with worded errors
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        load_ca(context, ca, "--upstream-ca file")
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def warn_unverified(mapping: dict[str, HttpUpstream]) -> None:
    """Say once, at start, which upstreams ``--upstream-insecure`` leaves unverified: it was silent, so a client
    left running with it (from a test, say) gave no sign of it."""
    unverified = [str(upstream) for upstream in mapping.values() if upstream.scheme == "https"]
    if unverified:
        log.warning("event=upstream_tls_unverified upstreams=%s reason=%s", logfmt(",".join(unverified)),
                    logfmt("--upstream-insecure: their certificates are not checked, so whoever is on the way to "
                           "them can read and change what they are sent; give --upstream-ca FILE instead"))


class HttpUpstreams:
    """Handles streams the server opens: dial the host's upstream and bridge bytes."""

    def __init__(self, mapping: dict[str, HttpUpstream], tls: ssl.SSLContext | None = None) -> None:
        self.by_service = mapping
        self.tls = tls or upstream_tls()

    @property
    def services(self) -> list[str]:
        return list(self.by_service)

    def host_headers(self) -> dict[str, str]:
        return {service: upstream.host_header for service, upstream in self.by_service.items()}

    def on_stream(self, channel: Channel) -> None:
        upstream = self.by_service.get(channel.target)
        if upstream is None:
            log.warning("event=refused_stream target=%s reason=not_advertised", logfmt(channel.target))
            channel.reset(ResetCode.NOT_ALLOWED, f"{channel.target} is not served by this client")
            return
        tls = self.tls if upstream.scheme == "https" else None
        dial(channel, upstream.host, upstream.port, tls=tls, label=str(upstream), logger=log, opener=upstream.opener,
             unanswered=upstream.unanswered)
