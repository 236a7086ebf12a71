"""Where an upstream's answer ends, and whether its stream carries another: bytes after an answer to HEAD, an
HTTP/1.0 answer with Transfer-Encoding, control bytes in a reason phrase, an answer's ``chunked<TAB>``. Real
server, tunnel client and upstreams on loopback (TLS between them); users are plain sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from helpers.http import LOOPBACK, Stack, answers_each, read_answer, received

_FORGED = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Poison: yes\r\n\r\nEVIL"


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    connections: dict[str, int] = {}
    try:
        server = stack.server(tls, token)
        stack.client(server, tls, token, [
            f"late.test=http://{LOOPBACK}:{stack.serve(_head_body(0.05))}",
            f"same.test=http://{LOOPBACK}:{stack.serve(_head_body(0))}",
            f"later.test=http://{LOOPBACK}:{stack.serve(_head_body(0.3))}",
            f"old.test=http://{LOOPBACK}:{stack.serve(_http10_chunked(connections))}",
            f"reason.test=http://{LOOPBACK}:{stack.serve(answers_each(_reason_of_path))}",
            f"tab.test=http://{LOOPBACK}:{stack.serve(answers_each(_coding_of_path))}",
        ])
        yield dict(stack=stack, port=server.data_port, connections=connections)
    finally:
        stack.close()


def _head_body(delay: float):
    """Answers HEAD with Content-Length and no body, then (``delay`` later, 0: in the same write) sends the body it
    announced anyway; a request that follows on the same connection gets a forged answer, any other the real one."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if head.startswith(b"HEAD "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
                    if delay:
                        await writer.drain()
                        await asyncio.sleep(delay)
                    writer.write(b"x" * 20)
                    await writer.drain()
                    await reader.readuntil(b"\r\n\r\n")  # the next request, if it came on this connection
                    writer.write(_FORGED)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handle


def _http10_chunked(connections: dict[str, int]):
    """HTTP/1.0 answers with Transfer-Encoding: chunked and keep-alive (RFC 9112 6.1: faulty framing); counted."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections["old"] = connections.get("old", 0) + 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                             b"3\r\nabc\r\n0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handle


def _reason_of_path(head: bytes) -> bytes:
    """``GET /XX``: status 200 with the reason phrase ``O``, the byte 0xXX, ``K`` (kept alive)."""
    byte = bytes([int(head.split(b" ")[1][1:], 16)])
    return b"HTTP/1.1 200 O%sK\r\nContent-Length: 2\r\n\r\nok" % byte


def _coding_of_path(head: bytes) -> bytes:
    """``GET /HEX``: a chunked answer whose Transfer-Encoding is the bytes HEX names (kept alive)."""
    coding = bytes.fromhex(head.split(b" ")[1][1:].decode())
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % coding


def user(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    return sock


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += received(sock, data)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert not rest, rest
    return head


@pytest.mark.parametrize("host, pause", [("late.test", 0.3), ("same.test", 0.3), ("later.test", 0)])
def test_a_body_after_an_answer_to_head_never_answers_the_next_request(env, host, pause):
    """It was swallowed, the stream kept: the forged answer the upstream sent next was the next request's answer
    (``X-Poison``). Now, as after any answer, bytes after it drop the stream, and a stream whose answer to HEAD
    announced a body is not reused at all: a body sent after the next request went out (``later.test``, no pause)
    was read as its answer."""
    with user(env["port"]) as sock:
        sock.sendall(b"HEAD /1 HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
        first = read_head(sock)
        time.sleep(pause)  # the body that followed has reached the server (or, none: it comes after the next request)
        sock.sendall(b"GET /2 HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
        second = read_answer(sock)
    assert first.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 20" in first, first
    assert b"X-Poison" not in second and second.endswith(b"\r\n\r\nreal"), second


def test_an_http10_answer_with_transfer_encoding_is_delivered_and_its_connection_not_reused(env):
    """RFC 9112 6.1: faulty framing, the connection closed after it (as a request's gets 400); it was kept alive."""
    before = env["connections"].get("old", 0)
    with user(env["port"]) as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: old.test\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n0\r\n\r\n"):
                data += received(sock, data)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"3\r\nabc\r\n0\r\n\r\n", data
            assert b"\r\nConnection: close" not in head, head  # the user's connection goes on
    assert env["connections"]["old"] - before == 2


@pytest.mark.parametrize("byte", [0x00, 0x01, 0x1B, 0x7F])
def test_control_bytes_in_a_reason_phrase_are_a_502(env, byte):
    """RFC 9112 4: HTAB, SP, VCHAR and obs-text only. They reached the user as sent; in a header value, a 502."""
    with user(env["port"]) as sock:
        sock.sendall(b"GET /%02x HTTP/1.1\r\nHost: reason.test\r\n\r\n" % byte)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer
    assert answer.endswith(b"control characters in its reason phrase\n"), answer
    assert bytes([byte]) not in answer


@pytest.mark.parametrize("byte", [0x09, 0x80, 0xE9])
def test_a_reason_phrase_of_htab_or_obs_text_goes_on(env, byte):
    with user(env["port"]) as sock:
        sock.sendall(b"GET /%02x HTTP/1.1\r\nHost: reason.test\r\n\r\n" % byte)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok"), answer


@pytest.mark.parametrize("coding", [b"chunked\t", b"chunked \t"])
def test_an_answer_chunked_then_a_tab_is_a_502(env, coding):
    """llhttp reads an answer's ``chunked<TAB>`` as another coding (a body running to the close) where the proxy read
    it as chunked: the user got the upstream's chunk framing as the body, chunked once more, until the close."""
    with user(env["port"]) as sock:
        sock.sendall(b"GET /%s HTTP/1.1\r\nHost: tab.test\r\n\r\n" % coding.hex().encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += received(sock, data)
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), data  # was a 200, chunked twice
