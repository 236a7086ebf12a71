"""An http:// upstream that ends the connection while a request body is still being sent to it is not told to serve TLS.

One that answers early (``413``, ``401``) without reading the body and closes sends a reset (its kernel drops the
unread body), and the client's write, failing on it, lost the answer: the user got 502 (as nginx's users do about
half the time) and the client logged ``event=upstream_closed_without_answer`` with the hint for an http:// upstream
that serves TLS, which reads a whole plain request before it closes. It now says the request was still being sent.
Real server, tunnel client and upstream on loopback; the upstream resets mid-body with no answer, which is the same
end as a lost early answer for the client, and is not left to a race (in one process the 413 is always read first).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import pytest

from helpers.http import LOOPBACK, Stack

EVENT = "event=upstream_closed_without_answer"
BODY = 8 << 20  # far more than the sockets' buffers on the way hold: the client is still sending it at the close


@pytest.fixture
def stack():
    stack = Stack()
    yield stack
    stack.close()


async def _reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request head, none of its body, and resets once the client's write to it has backed up."""
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(0.5)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _upload(port: int, host: str) -> bytes:
    """POST a large body, as much of it as the proxy takes, then the answer's first bytes (b"" if none came)."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {BODY}\r\n\r\n".encode())
        chunk, sent, deadline = b"u" * 65536, 0, time.monotonic() + 10
        try:
            while sent < BODY and time.monotonic() < deadline:  # stops when the proxy stops reading (its timeout)
                sent += sock.send(chunk[:BODY - sent])
        except OSError:  # the proxy answered and closed mid-body
            pass
        try:
            return sock.recv(65536)
        except OSError:
            return b""


def _hints(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if EVENT in r.getMessage()]


def test_an_upstream_that_resets_mid_body_is_not_told_to_serve_tls(stack, tls, token, caplog) -> None:
    caplog.set_level(logging.INFO, logger="inlets.http")
    up = stack.serve(_reset_mid_body)
    server = stack.server(tls, token, upstream_timeout=5)
    stack.client(server, tls, token, [f"cut.test=http://{LOOPBACK}:{up}"])
    answer = _upload(server.data_port, "cut.test")
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:100]
    deadline = time.monotonic() + 5
    while not _hints(caplog):
        assert time.monotonic() < deadline, "the client said nothing of the upstream's close"
        time.sleep(0.05)
    (line,) = _hints(caplog)
    assert f"upstream=http://{LOOPBACK}:{up} " in line, line
    assert "while the request was still being sent" in line and "https://" not in line, line

