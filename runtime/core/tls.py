"""TLS contexts for the control plane: TLS 1.2 or newer, the client pinned to a CA."""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path

log = logging.getLogger("inlets.tls")

#: The name every inletsctl-provisioned server certificate carries. The client is told
#: to expect it (``--tls-server-name``), so a certificate made before the VM's IP is
#: known still verifies, while the per-server CA keeps it pinned.
EXIT_SERVER_NAME = "inlets-exit-server"


class TlsConfigError(Exception):
    """TLS files are missing or unusable; the message names the file."""


class PlaintextAttempts:
    """Plain HTTP on the TLS control port (a client given ``ws://``): logged at once, then at
    most once a minute with the number seen since, so a client retrying forever cannot flood
    the log. The TLS layer does not know the peer's address, so the line cannot name it."""

    interval = 60.0

    def __init__(self) -> None:
        self._logged_at: float | None = None
        self._since = 0

    def seen(self) -> None:
        now = time.monotonic()
        self._since += 1
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return
        log.warning("event=plaintext_on_tls_port attempts=%d hint=%r", self._since,
                    "a client sent plain HTTP to this TLS port: its --url must start with wss://, not ws://")
        self._logged_at, self._since = now, 0


PLAINTEXT_ATTEMPTS = PlaintextAttempts()


class _ServerTls(ssl.SSLObject):
    """The server side of one TLS connection, noticing plain HTTP where a handshake should be."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLError as exc:
            if exc.reason in ("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):  # OpenSSL recognised GET/POST/CONNECT...
                PLAINTEXT_ATTEMPTS.seen()
            raise


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = _ServerTls  # asyncio and uvloop make each connection's SSLObject from this
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"TLS file not found: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


def client_context(ca: Path | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """Verify the server against ``ca`` when given (pinned), else the system trust store."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca is None:
        context.load_default_certs()
        return context
    try:
        context.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise TlsConfigError(f"CA file not found: {ca}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load CA certificate {ca}: {exc}") from None
    return context


def verify_failure(exc: ssl.SSLCertVerificationError) -> str:
    """Why the server's certificate was refused, and which option fixes it."""
    if "mismatch" in (exc.verify_message or ""):  # a good certificate for another name
        hint = (f"the certificate is for another name: give it with --tls-server-name "
                f"(servers inletsctl made: --tls-server-name {EXIT_SERVER_NAME})")
    else:
        hint = "check --tls-ca: it must be the CA that signed the server's certificate"
    return f"TLS certificate verification failed: {exc.verify_message} ({hint})"
