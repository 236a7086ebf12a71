"""TLS contexts for the control plane: TLS 1.2 or newer, the client pinned to a CA."""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(Exception):
    """TLS files are missing or unusable; the message names the file."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
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
