"""Blocking connections through an outbound proxy, for the one-shot commands (``inlets status``,
inletsctl's waits on a new exit server).

The tunnel client reaches its server through a proxy with websockets' own support (asyncio);
these commands use blocking sockets (``core/probe.py``), so the same proxies are spoken here:
HTTP CONNECT through http:// and https:// proxies (basic auth), and SOCKS through python-socks'
sync API (websockets uses its asyncio API for SOCKS). Each gets ``timeout`` for the connection and
the proxy's whole answer, as the client's one --open-timeout bounds its attempt. Which proxy applies is ``outbound_proxy.choose``'s
answer, the client's own, so a command reaches a server the way its client does.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from typing import Callable

from websockets.proxy import Proxy as ProxyAddress
from websockets.proxy import parse_proxy

from ..core.probe import ProbeError, Unreachable, nodelay
from .outbound_proxy import (
    CONNECT_NOT_HTTP, CONNECT_UNANSWERED, ProxyConfigError, choose, connect_status, proxy_tls_failure, redact,
    refusal_hint, socks_refusal,
)

MAX_ANSWER_HEAD = 16 * 1024


class ProxyDial:
    """A ``Dial`` through one proxy, which remembers whether the proxy granted a tunnel: what fails after that
    (TLS, the server's answer) came through the proxy, which may be the cause (it closed the tunnel, or inspects
    TLS with a certificate of its own), so the error names it, as the client's line does."""

    def __init__(self, proxy: str, source: str, password_from: str | None) -> None:
        self.proxy, self.source, self.password_from = proxy, source, password_from
        self.shown = redact(proxy)
        self.granted = False

    def __call__(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = dial(self.proxy, host, port, timeout, self.source, self.password_from)
        self.granted = True
        return sock


def dialer_for(url: str, setting: str | None = None, password_from: str | None = None) -> ProxyDial | None:
    """How to reach ``url`` (wss://HOST:PORT): through the proxy --proxy or the environment names, else None
    (directly). A proxy setting that cannot work is a ProbeError, in the client's words. ``password_from``: where
    the --proxy password was read (``outbound_proxy.refusal_hint``)."""
    try:
        choice = choose(setting, url)
    except ProxyConfigError as exc:
        raise ProbeError(str(exc)) from None
    if choice.url is None:
        return None
    return ProxyDial(choice.url, choice.source, password_from)


def dial(proxy: str, host: str, port: int, timeout: float, source: str = "--proxy",
         password_from: str | None = None) -> socket.socket:
    """A socket to host:port through ``proxy``; ProbeError (Unreachable when the proxy is) in one line, a refusal
    of the credentials naming where they came from (``source``, ``password_from``). The proxy gets ``timeout``
    for the connection and its whole answer (CONNECT's, or the SOCKS exchange), not for each read of it."""
    shown, target = redact(proxy), f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    deadline = time.monotonic() + timeout
    parsed = parse_proxy(proxy)
    try:
        sock = nodelay(socket.create_connection((parsed.host, parsed.port), timeout=timeout))
    except OSError as exc:
        raise Unreachable(f"proxy {shown} unreachable: {exc.strerror or exc}") from None
    if parsed.scheme.startswith("socks"):
        return _socks(parsed, sock, host, port, timeout, deadline, shown, target,
                      lambda failure: socks_refusal(failure, proxy, target, source, password_from))
    try:
        if parsed.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parsed.host)
        authority = target
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: inlets\r\n"
        if parsed.username is not None:  # parse_proxy has percent-decoded both already: decoding again would
            # send "p%41ss" (a password given as p%2541ss, or from a file) as "pAss"
            credentials = f"{parsed.username}:{parsed.password or ''}"
            request += f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
        sock.sendall((request + "\r\n").encode())
        status, reason = _answer_status(sock, shown, target, deadline)
    except TimeoutError:
        sock.close()
        raise ProbeError(f"proxy {shown} gave no complete answer to CONNECT {target} within {timeout:g}s: check that "
                         f"the proxy is up and can reach {target}") from None
    except ProbeError:
        sock.close()
        raise
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ProbeError(f"proxy {shown}: its certificate failed verification: {exc.verify_message or exc}") from None
    except ssl.SSLError as exc:  # an https:// proxy's: OpenSSL's words name its source file ("... (_ssl.c:1006)")
        sock.close()
        raise ProbeError(proxy_tls_failure(exc, shown)) from None
    except OSError as exc:
        sock.close()
        raise ProbeError(f"through proxy {shown}: {exc.strerror or exc or 'the connection failed'}") from None
    if not 200 <= status < 300:  # any 2xx grants the tunnel, as the client takes it (RFC 9110 9.3.6)
        sock.close()
        line = f"proxy {shown} refused CONNECT {target}: HTTP {status} {reason}".rstrip()
        hint = refusal_hint(status, proxy, source, password_from)
        raise ProbeError(f"{line} ({hint})" if hint else line)
    sock.settimeout(timeout)  # each later wait bounded, as create_connection's socket is
    return sock


def _answer_status(sock: socket.socket, shown: str, target: str, deadline: float) -> tuple[int, str]:
    """The proxy's answer to CONNECT, read up to its blank line (nothing more comes before we speak TLS), by
    ``deadline`` (``time.monotonic``): TimeoutError after it."""
    head = b""
    while b"\r\n\r\n" not in head:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise ProbeError(CONNECT_UNANSWERED.format(shown=shown, target=target))
        head += chunk
        if len(head) > MAX_ANSWER_HEAD and b"\r\n\r\n" not in head:  # not a CONNECT answer: TLS would follow
            # on the rest of it and fail as if the server's port were wrong
            raise ProbeError(f"proxy {shown} sent an answer to CONNECT {target} longer than "
                             f"{MAX_ANSWER_HEAD // 1024} KiB without ending it (is it an HTTP proxy?)")
    status = connect_status(head.split(b"\r\n", 1)[0])  # as the client reads it
    if status is None:
        raise ProbeError(CONNECT_NOT_HTTP.format(shown=shown, target=target))
    # the proxy's own words, printed to a terminal: no escape sequence of its choosing gets through
    return status[0], "".join(c if c.isprintable() else "?" for c in status[1])[:200]


class _Opened:
    """python-socks' ``forward`` (a proxy in front of the proxy) standing for the socket already open to the proxy:
    the socket is ours, so ``_socks`` can end the exchange at its deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def connect(self, **_: object) -> socket.socket:
        return self.sock


def _socks(parsed: ProxyAddress, sock: socket.socket, host: str, port: int, timeout: float, deadline: float,
           shown: str, target: str, refusal: Callable[[BaseException], str]) -> socket.socket:
    """The SOCKS exchange on ``sock`` (open to the proxy) by ``deadline`` (``time.monotonic``). python-socks gives each
    read the whole timeout, so a proxy sending its reply a byte at a time held `inlets status --timeout 5` for
    minutes (a 262-byte reply): at the deadline the socket is shut down, which ends the read waiting then."""
    from python_socks import ProxyError, ProxyTimeoutError, ProxyType
    from python_socks.sync import Proxy

    scheme = parsed.scheme
    kind = ProxyType.SOCKS4 if scheme.startswith("socks4") else ProxyType.SOCKS5
    client = Proxy(kind, parsed.host, parsed.port, parsed.username, parsed.password,
                   rdns=scheme in ("socks5h", "socks4a"), forward=_Opened(sock))  # type: ignore[arg-type]
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(max(deadline - time.monotonic(), 0), expire)
    timer.daemon = True
    timer.start()
    try:
        client.connect(host, port, timeout=timeout)
        failure: BaseException | None = None
    except (ProxyError, ProxyTimeoutError, OSError) as exc:
        failure = exc
    finally:
        timer.cancel()
        timer.join()  # an expire() already running has shut the socket down before this goes on
    if failure is not None or expired.is_set():
        sock.close()  # python-socks closed it too, on most failures
    if expired.is_set() or isinstance(failure, ProxyTimeoutError):
        raise ProbeError(f"proxy {shown} gave no complete SOCKS answer for {target} within {timeout:g}s: check that "
                         f"the proxy is up and can reach {target}")
    if isinstance(failure, ProxyError):
        raise ProbeError(refusal(failure))
    if isinstance(failure, OSError):
        raise ProbeError(f"through proxy {shown}: {failure.strerror or failure}")
    sock.settimeout(timeout)  # each later wait bounded, as create_connection's socket is
    return sock
