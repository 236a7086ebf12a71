"""Why a connection to the server failed, in words, and the probes that name a wrong ``ws://``/``wss://``."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import ssl

from ..core.tls import verify_failure


#: What a reason-less exception means to a user (its class name means nothing to them).
_WITHOUT_REASON: list[tuple[type[BaseException], str]] = [
    (ConnectionResetError, "the server closed the connection"),
    (ConnectionRefusedError, "connection refused"),
    (asyncio.TimeoutError, "timed out"),
    (EOFError, "the server closed the connection"),
]


_ERRNO = re.compile(r"\[Errno (\d+)\]")


def describe(exc: BaseException) -> str:
    """Why a connection attempt failed, in a user's words: never an exception's class name."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return verify_failure(exc)
    if isinstance(exc, ssl.SSLError):  # OpenSSL's text names its source file: "... (_ssl.c:1006)"
        reason = (getattr(exc, "reason", None) or "").replace("_", " ").lower() or "the connection closed during it"
        hint = " (that port does not speak TLS: is it the inlets server's control port?)" if "wrong version" in reason else ""
        return f"TLS handshake failed: {reason}{hint}"
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return os.strerror(exc.errno)  # asyncio's strerror is "Connect call failed ('127.0.0.1', 8123)"
    if isinstance(exc, OSError) and str(exc).startswith("Multiple exceptions: "):  # asyncio, a name with 2 addresses
        return "; ".join(dict.fromkeys(os.strerror(int(code)) for code in _ERRNO.findall(str(exc)))) or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if str(exc):
        return str(exc)
    return next((text for kind, text in _WITHOUT_REASON if isinstance(exc, kind)), "the connection failed")


async def speaks_plain_http(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether ``host:port`` answers a plain HTTP request; only to name a wrong ``wss://`` (a server run with --plaintext)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return (await asyncio.wait_for(reader.read(5), timeout)) == b"HTTP/"
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


async def speaks_tls(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake; only to name a wrong ``ws://``, so nothing is verified or sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
