"""Why a connection to the server failed, in words, and the probes that name a wrong ``ws://``/``wss://``."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import re
import ssl

from websockets.exceptions import ConnectionClosed

from ..core.tls import verify_failure


#: What a reason-less exception means to a user (its class name means nothing to them).
_WITHOUT_REASON: list[tuple[type[BaseException], str]] = [
    (ConnectionResetError, "the server closed the connection"),
    (ConnectionRefusedError, "connection refused"),
    (asyncio.TimeoutError, "timed out"),
    (EOFError, "the server closed the connection"),
]


_ERRNO = re.compile(r"\[Errno (\d+)\]")
#: How much of a server's close reason is shown: a reason is at most 123 bytes, its escapes up to four times that.
SHOWN_REASON = 160
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, limit: int = SHOWN_REASON) -> str:
    """A peer's words (a websocket close reason) as a terminal or a log may show them: printable ASCII as is,
    anything else escaped (``\\n``, ``\\x1b``, ``\\u202e``), at most ``limit`` characters (a cut is marked ``...``).
    A server's close reason went to the terminal and the log raw: a newline forged a line, an escape sequence
    cleared the screen."""
    pieces = [char if " " <= char <= "~" and char != "\\" else _escape(char) for char in text]
    if sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept, size = [], 0
    for piece in pieces:  # whole escapes only: a cut "\x1" would read as something the server never sent
        if size + len(piece) > limit - 3:
            break
        kept.append(piece)
        size += len(piece)
    return "".join(kept) + "..."


def describe(exc: BaseException) -> str:
    """Why a connection attempt failed, in a user's words: never an exception's class name."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return verify_failure(exc)
    if isinstance(exc, ConnectionClosed):  # the library's words, the server's reasons in them shown as ``printable``
        frames = [f and dataclasses.replace(f, reason=printable(f.reason)) for f in (exc.rcvd, exc.sent)]
        return str(ConnectionClosed(*frames, exc.rcvd_then_sent))
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


def how_closed(protocol) -> str:
    """How a session's connection ended, for the client's ``disconnected`` line: the server's close (its code and
    reason, as ``printable``: "1008 token revoked", "1001 server shutting down"), else that none came. The line
    said only ``event=disconnected``: why, and when the next try is, were nowhere in the client's log."""
    frame = protocol.close_rcvd or protocol.close_sent
    if frame is None:
        return "connection lost without a close"
    return f"{frame.code} {printable(frame.reason)}".strip()


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
