"""Outbound proxies for the client: which one applies, and why one refused, in one line.

Tunnelling through the proxy is websockets' own job (HTTP CONNECT, and SOCKS through
python-socks). This module only decides which proxy applies (``--proxy``, else the
standard environment variables), rejects a malformed one before the first attempt,
keeps proxy passwords out of every message, and turns the library's proxy exceptions
into a line that says which proxy answered what, so a user behind a corporate proxy
can tell a wrong password (407) from a blocked port (403) from a proxy that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import sys
import urllib.request
from collections.abc import Generator
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from websockets.asyncio import client as websockets_client
from websockets.exceptions import InvalidProxy, InvalidProxyMessage, InvalidProxyStatus, ProxyError
from websockets.http11 import Response
from websockets.proxy import parse_proxy

from ..core.dial_failures import UNREACHABLE
from ..core.hosts import HostError, check_host
from ..core.ports import url_port
from ..core.tls import too_old, too_old_words
from .no_proxy import no_proxy_covers, no_proxy_setting

SCHEMES = ("http", "https", "socks5", "socks5h", "socks4", "socks4a")
DIRECT = ("none", "direct")  # --proxy none: ignore the environment, connect directly

STATUS_HINTS = {
    403: "the proxy does not allow a tunnel to this host and port",
}
#: python-socks' words for a SOCKS5 proxy's refusal of the credentials: read as an HTTP proxy's 407 and 401 are
SOCKS_AUTH_REFUSALS = {"No acceptable authentication methods were offered": 407,
                       "Username and password authentication failure": 401}
#: what to fix after a SOCKS5 proxy's reply (RFC 1928's REP, python-socks' ``error_code``): python-socks' words
#: alone ("Host unreachable") said what happened, not what to do
SOCKS_REPLY_HINTS = {
    2: STATUS_HINTS[403],
    3: "the proxy has no route to that network: check that --url names an address the proxy can reach",
    4: "the proxy cannot reach that host: check that the server is up and that --url names an address the proxy "
       "can reach",
    5: "the server's host refused the proxy: check that the server runs and that --url names its control port "
       "(8123 unless set)",
}
_SOCKS_CANNOT_REACH = (3, 4)  # said as "cannot reach": no refusal of the proxy's own
#: CONNECT without an HTTP answer, said alike by the client and ``inlets status``: the proxy closed, or spoke no HTTP
CONNECT_UNANSWERED = "proxy {shown} closed the connection without answering CONNECT {target}"
CONNECT_NOT_HTTP = "proxy {shown} sent no valid HTTP answer to CONNECT {target} (is it an HTTP proxy?)"


#: a proxy's status line answering CONNECT, as websockets reads it (HTTP/1.0 or 1.1, a code, a reason phrase of
#: these bytes), except that the space before an empty reason may be missing: RFC 9112 lets the reason be empty, and
#: curl, Go and Python take "HTTP/1.1 200", which websockets refused ("sent no valid HTTP answer") and status took
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]+)(?: ([\t\x20-\x7e\x80-\xff]*))?")


def connect_status(line: bytes) -> tuple[int, str] | None:
    """A proxy's answer to CONNECT, its status line without CRLF, as (code, reason); None if not HTTP. 2xx grants
    the tunnel (RFC 9110 9.3.6). The client's and ``inlets status``'s one reading."""
    match = _STATUS_LINE.fullmatch(line)
    if match is None or not 100 <= int(match[1]) < 600:
        return None
    return int(match[1]), (match[2] or b"").decode("latin-1")


class _ConnectProtocol(websockets_client.HTTPProxyConnection):
    """websockets' CONNECT exchange (17.4), except that a proxy closing without an answer ends it once: its
    ``connection_lost`` fed the end of the stream again after ``eof_received`` had, and the EOFError that
    raised reached the log as a traceback at every attempt (the attempt itself failed cleanly already). And its
    status line is read by ``connect_status``: "HTTP/1.1 200" without a reason's space is given one."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.status_read = False
        self.parser = Response.parse(self.read_line, self.reader.read_exact, self.reader.read_to_eof, proxy=True)

    def read_line(self, limit: int, *too_long: type[Exception]) -> Generator[None, None, bytes]:
        line = yield from self.reader.read_line(limit, *too_long)
        if not self.status_read:
            self.status_read = True
            if line.endswith(b"\r\n") and line.count(b" ") == 1 and connect_status(line[:-2]) is not None:
                line = line[:-2] + b" \r\n"
        return line

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(EOFError):
            super().connection_lost(exc)


websockets_client.HTTPProxyConnection = _ConnectProtocol  # type: ignore[misc]  # what connect_http_proxy makes


class ProxyConfigError(ValueError):
    """A proxy setting that can never work (bad scheme, no host, ...): the message is safe to print."""


class ProxyFailure(ConnectionError):
    """A proxy refused or could not be reached. Transient as far as the client knows: it retries."""


@dataclass(frozen=True)
class ProxyChoice:
    url: str | None  # None: connect directly
    source: str  # "--proxy", "HTTPS_PROXY", ... for the log line

    @property
    def shown(self) -> str:
        return redact(self.url) if self.url else "none"


def _misread_credentials(url: str) -> tuple[str, str, str] | None:
    """(scheme, user ("" if it is the misread part), the rest after the last ``@``) when ``url`` holds credentials
    that urlsplit would misread:
    a ``/``, ``?`` or ``#`` in the password (or user) ends the authority there, so the password's start became
    the host or the port, and the true host part went to the path, query or fragment. Else None."""
    scheme, _, rest = (url if "://" in url else "http://" + url).partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not at or not any(c in userinfo for c in "/?#"):
        return None
    user = userinfo.partition(":")[0]
    return scheme, "" if any(c in user for c in "/?#") else user, after


def redact(url: str) -> str:
    """``scheme://[user@]host:port``: the password never reaches a log or an error."""
    if (misread := _misread_credentials(url)) is not None:  # shown without the password, as meant
        scheme, user, after = misread
        url = f"{scheme}://{user}@{after}" if user else f"{scheme}://{after}"
    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
        host = parts.hostname or "?"
    except ValueError:  # a bad [IPv6] bracket
        return "(a malformed proxy URL)"
    _, colon, port = parts.netloc.rpartition("@")[2].rpartition("]")[2].rpartition(":")  # as given: :0, :99999 too
    port = port if colon else ""  # none given (http://proxy): not the host again
    host = f"[{host}]" if ":" in host else host
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}" + (f":{port}" if port else "")


def split(url: str, source: str) -> SplitResult:
    """A proxy URL split (a bare ``host:port`` read as http://), or ProxyConfigError in one line: urlsplit raises
    on a bad [IPv6] bracket, and websockets takes a port of 0 for none (port 80), so the port is checked here."""
    if _misread_credentials(url) is not None:  # else the password's start is reported as the host or the port
        raise ProxyConfigError(f"{source}: invalid proxy {redact(url)}: a '/', '?' or '#' in its user or password must "
                               "be percent-encoded (%2F, %3F, %23); or keep the password in --proxy-password-file or "
                               "$INLETS_PROXY_PASSWORD")
    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
    except ValueError:
        raise ProxyConfigError(f"{source}: the proxy URL has a malformed [IPv6] address: write it as "
                               "http://[2001:db8::1]:PORT") from None
    address = parts.netloc.rpartition("@")[2]
    if address.count(":") > 1 and not address.startswith("["):  # http://::1:3128 read as host "" (a library's words)
        raise ProxyConfigError(f"{source}: the proxy URL's IPv6 address needs brackets: write it as "
                               "http://[2001:db8::1]:PORT")
    if not parts.hostname:
        raise ProxyConfigError(f"{source}: the proxy URL names no host: write it as http://HOST:PORT")
    try:  # 'not a host' was taken, then "name resolution failed" at every retry, for ever
        check_host(parts.hostname, source)
        url_port(parts, 0)
    except HostError as exc:
        raise ProxyConfigError(str(exc)) from None
    except ValueError as exc:
        raise ProxyConfigError(f"{source}: invalid proxy {redact(url)}: {exc}") from None
    return parts


def normalize(url: str, source: str) -> str:
    """Validate a proxy URL; a bare ``host:port`` means an HTTP proxy, as curl takes it."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ProxyConfigError(f"{source}: proxy scheme {scheme!r} is not supported (use http://, https:// or socks5://)")
    split(url, source)
    try:
        parse_proxy(url)
    except (InvalidProxy, ValueError) as exc:
        reason = getattr(exc, "msg", "") or "malformed URL"  # str(exc) would repeat the password
        if "without password" in reason:
            reason += " (keep it in --proxy-password-file or $INLETS_PROXY_PASSWORD)"
        raise ProxyConfigError(f"{source}: invalid proxy {redact(url)}: {reason}") from None
    if scheme.startswith("socks"):
        try:
            import python_socks  # noqa: F401
        except ImportError:
            raise ProxyConfigError(f"{source}: SOCKS proxies need the python-socks package") from None
    return url


def check_password_fits(setting: str | None, source: str) -> SplitResult:
    """``setting`` split, if a password from ``source`` (a file, the environment) can complete it: a --proxy
    http://USER@HOST:PORT without one of its own. No password is read, so ``--generate`` checks this too."""
    if not setting or setting.strip().lower() in DIRECT:
        raise ProxyConfigError(f"{source}: a proxy password needs --proxy http://USER@HOST:PORT")
    parts = split(setting, "--proxy")
    if not parts.username:
        raise ProxyConfigError(f"{source}: --proxy {redact(setting)} names no user: use http://USER@HOST:PORT")
    if parts.password is not None:
        raise ProxyConfigError(f"{source}: --proxy {redact(setting)} already holds a password: give it once")
    return parts


def with_password(setting: str | None, password: str | None, source: str) -> str | None:
    """``--proxy http://USER@HOST:PORT`` completed with the password kept in a file or the environment."""
    if password is None:
        return setting
    parts = check_password_fits(setting, source)
    netloc = f"{parts.username}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def choose(setting: str | None, ws_url: str) -> ProxyChoice:
    """The proxy for ``ws_url``: ``--proxy`` if given, else the environment.

    The environment is read like websockets and curl read it: ``NO_PROXY`` first, then
    ``WSS_PROXY``/``WS_PROXY``, ``SOCKS_PROXY``, ``HTTPS_PROXY`` (and ``HTTP_PROXY`` for
    ws://), then ``ALL_PROXY``, which websockets alone would ignore.
    """
    if setting is not None and setting.strip():
        if setting.strip().lower() in DIRECT:
            return ProxyChoice(None, "--proxy")
        return ProxyChoice(normalize(setting, "--proxy"), "--proxy")
    if not _environment_may_name_a_proxy():
        return ProxyChoice(None, "environment")
    parts = urlsplit(ws_url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    if no_proxy_covers(parts.hostname or "", port):
        return ProxyChoice(None, "NO_PROXY")
    # the system's exceptions (macOS, Windows), where NO_PROXY is not set: once it is, urllib reads it by rules of
    # its own (".0.0.1" covered 127.0.0.1, an address taken as a name), not curl's
    if not no_proxy_setting() and urllib.request.proxy_bypass(f"{parts.hostname}:{port}"):
        return ProxyChoice(None, "NO_PROXY")
    proxies = urllib.request.getproxies()
    keys = ["wss", "socks", "https"] if parts.scheme == "wss" else ["ws", "socks", "https", "http"]
    for key in keys + ["all"]:
        value = proxies.get(key)
        if value:
            name = _env_name(key)
            if key == "socks" and value.startswith("http://"):  # as websockets reads SOCKS_PROXY
                value = "socks5h://" + value[len("http://"):]
            elif key == "socks" and "://" not in value:  # SOCKS_PROXY=HOST:PORT names a SOCKS proxy, not an HTTP one
                value = "socks5h://" + value.strip()
            return ProxyChoice(normalize(value, name), name)
    return ProxyChoice(None, "environment")


def _environment_may_name_a_proxy() -> bool:
    """False when ``urllib.request.getproxies`` would find nothing: then it is not loaded
    (``core/lazy_modules``). Elsewhere than macOS and Windows it reads only ``*_proxy`` variables."""
    return sys.platform in ("darwin", "win32") or any(name.lower().endswith("_proxy") for name in os.environ)


def _env_name(key: str) -> str:
    """The variable ``getproxies`` took ``key``'s proxy from: the lower-case one when set, as curl takes it too."""
    lower = f"{key}_proxy"
    return lower if os.environ.get(lower) else f"{key.upper()}_PROXY"


async def certificate_failure(proxy: str, timeout: float = 5.0) -> str | None:
    """Why an ``https://`` proxy's own certificate fails verification (websockets checks it against the system's
    trust store), or None: it verifies, the proxy is not https://, or it cannot be reached. Only asked once a
    connection failed verification, to say whose certificate it was: the proxy's or, through it, the server's."""
    parts = urlsplit(proxy)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 443, ssl=ssl.create_default_context()), timeout)
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
    except (OSError, asyncio.TimeoutError):
        return None
    writer.close()
    return None


def refusal_hint(status: int, proxy: str, source: str = "--proxy", password_from: str | None = None) -> str | None:
    """What to fix after a proxy's ``status`` (a SOCKS5 credentials refusal read as 407 or 401), named after where
    the proxy's user and password came from: ``source`` (--proxy, HTTPS_PROXY, ...) and ``password_from`` (the
    password file's flag and path, or $INLETS_PROXY_PASSWORD). A wrong password read from a file, or given in
    $HTTPS_PROXY, was told to check --proxy and --proxy-password-file in general, not the file or variable at fault."""
    if status not in (401, 407):
        return STATUS_HINTS.get(status)
    parts = urlsplit(proxy)
    where = source if source.startswith("--") else f"${source}"
    if not _credentials_sent(parts):
        also = "" if source.startswith("--") else f" (or put USER:PASSWORD@ in {where})"
        return (f"proxy credentials missing: give --proxy {parts.scheme}://USER@HOST:PORT with --proxy-password-file "
                f"FILE or $INLETS_PROXY_PASSWORD{also}")
    if not parts.username:  # ":PASSWORD" went: "missing" sent the user looking for a password that had been sent
        return (f"proxy credentials refused: the password in {where} was sent with no user: check it, and add the "
                f"proxy's user if it needs one ({parts.scheme}://USER:PASSWORD@HOST:PORT)")
    if password_from:
        return f"proxy credentials refused: check the user in {where} and the password in {password_from}"
    if source.startswith("--"):  # the password inside --proxy, where ps shows it
        return (f"proxy credentials refused: check the user and password in {where} (better: the password in "
                "--proxy-password-file FILE or $INLETS_PROXY_PASSWORD)")
    return f"proxy credentials refused: check the user and password in {where}"


def _credentials_sent(parts: SplitResult) -> bool:
    """Did the proxy get a user and password? An HTTP proxy gets Basic ``USER:PASSWORD`` whenever a password is
    given, with no user too (``:PASSWORD``, as curl sends it); python-socks offers them only when both are non-empty."""
    if parts.scheme.startswith("socks"):
        return bool(parts.username and parts.password)
    return parts.password is not None


def socks_refusal(error: BaseException, proxy: str, target: str, source: str = "--proxy",
                  password_from: str | None = None) -> str:
    """One line for a SOCKS proxy's refusal (python-socks' ProxyError): which proxy said what, and what to fix; the
    client's and ``inlets status``'s. A SOCKS5 "no acceptable methods" (0xFF) to a client that offered a user and
    password too means the proxy takes neither: it was read as those credentials refused."""
    reason, code = str(error), getattr(error, "error_code", None)
    status = SOCKS_AUTH_REFUSALS.get(reason)
    parts = urlsplit(proxy)
    if status == 407 and parts.username and parts.password:  # python-socks offers USER:PASSWORD only with both
        hint: str | None = ("the proxy accepts neither no authentication nor a user and password, the only methods "
                            "inlets speaks: ask its administrators for a user and password it takes")
    elif status:
        hint = refusal_hint(status, proxy, source, password_from)
    else:
        hint = SOCKS_REPLY_HINTS.get(code) if isinstance(code, int) else None
    verb = "cannot reach" if code in _SOCKS_CANNOT_REACH else "refused the connection to"
    line = f"proxy {redact(proxy)} {verb} {target}: {reason}"
    return f"{line} ({hint})" if hint else line


def proxy_tls_failure(exc: ssl.SSLError, shown: str, through: bool = False) -> str:
    """Why TLS with an https:// proxy failed, in one line saying what to do, not in OpenSSL's words (``_ssl.c``).
    ``through``: the failure may also be the server's, reached through the proxy (the client's own dial cannot
    tell the two handshakes apart)."""
    if too_old(exc):
        if through:
            return (f"through proxy {shown}: {too_old_words('the proxy, or the server through it,')}: upgrade it, or "
                    "use a proxy that speaks TLS 1.2 or 1.3")
        return f"{too_old_words(f'proxy {shown}')}: upgrade the proxy, or use one that speaks TLS 1.2 or 1.3"
    if exc.reason == "WRONG_VERSION_NUMBER" and not through:  # plain HTTP (or something else) where TLS was to be
        return f"proxy {shown} does not speak TLS: for a proxy that takes plain HTTP, give it as http://"
    reason = (exc.reason or "").replace("_", " ").lower() or "the connection closed during it"
    return f"through proxy {shown}: TLS {'' if through else 'with the proxy '}failed: {reason}"


def explain(exc: BaseException, proxy: str, target: str, source: str = "--proxy",
            password_from: str | None = None) -> ProxyFailure:
    """One line saying which proxy answered what while reaching ``target`` (HOST:PORT), and what to fix
    (``refusal_hint``: ``source`` and ``password_from`` say where the proxy's credentials came from)."""
    shown = redact(proxy)
    if isinstance(exc, InvalidProxyStatus):
        response = exc.response
        line = f"proxy {shown} refused CONNECT {target}: HTTP {response.status_code} {response.reason_phrase}"
        hint = refusal_hint(response.status_code, proxy, source, password_from)
        return ProxyFailure(f"{line} ({hint})" if hint else line)
    if isinstance(exc, InvalidProxyMessage):  # EOF too: a proxy that closed was asked "is it an HTTP proxy?"
        closed = isinstance(exc.__cause__, EOFError)
        return ProxyFailure((CONNECT_UNANSWERED if closed else CONNECT_NOT_HTTP).format(shown=shown, target=target))
    if isinstance(exc, ProxyError):  # SOCKS: the proxy's own reply is the cause
        return ProxyFailure(socks_refusal(exc.__cause__ or exc, proxy, target, source, password_from))
    if isinstance(exc, socket.gaierror):
        return ProxyFailure(f"through proxy {shown}: name resolution failed ({exc.strerror})")
    if isinstance(exc, ssl.SSLError) and exc.reason:  # OpenSSL's words named its source file (_ssl.c:1006)
        return ProxyFailure(proxy_tls_failure(exc, shown, through=True))
    if isinstance(exc, OSError):
        root = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        if root.errno in UNREACHABLE:  # only the proxy is dialled: a refusal is the proxy's
            return ProxyFailure(f"proxy {shown} unreachable: {os.strerror(root.errno)}")
        if isinstance(exc, TimeoutError):  # websockets' own ("timed out during opening handshake") or asyncio's
            return ProxyFailure(f"through proxy {shown}: timed out: neither the proxy nor, through it, the server "
                                f"{target} answered in time")
        # asyncio's reason-less ConnectionResetError(): the tunnel the proxy granted closed before TLS was up
        reason = root.strerror or str(root) or str(exc) or "the connection closed before the server answered"
        return ProxyFailure(f"through proxy {shown}: {reason}")
    return ProxyFailure(f"through proxy {shown}: {exc}")
