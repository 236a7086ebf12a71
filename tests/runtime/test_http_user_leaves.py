"""A user who closes its connection while the upstream has not answered yet (a long poll, a slow report): the
upstream must see it go, as behind nginx, which closes the upstream connection then. Real server, tunnel client
and upstreams on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import queue
import ssl
import time

import pytest

from helpers.http import LOOPBACK, Stack, answer_after_fin
from helpers.tunnel import metric


class LongPoll:
    """Reads a request head, then waits (up to 10 s) for the answer to be due or for the proxy to close its side."""

    def __init__(self) -> None:
        self.ended: queue.Queue[float | None] = queue.Queue()  # per request: seconds until the proxy's FIN, or None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        started = time.monotonic()
        seen: float | None = None
        try:
            while await asyncio.wait_for(reader.read(65536), 10):
                pass  # the body, if any; then the proxy's FIN, or nothing until the answer is due
            seen = time.monotonic() - started
        except (asyncio.TimeoutError, ConnectionError):
            pass
        writer.close()
        self.ended.put(seen)


async def _answer_after_fin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers once the proxy half-closed: as an upstream that finishes a request whatever its user did."""
    await reader.readuntil(b"\r\n\r\n")
    await reader.read()  # the proxy's FIN
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater")
    await writer.drain()
    writer.close()


async def _stop_at_fin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers after 0.2 s unless the proxy half-closes first, then stops without answering (as aiohttp does)."""
    await reader.readuntil(b"\r\n\r\n")
    fin = asyncio.ensure_future(reader.read())
    done, _ = await asyncio.wait([fin], timeout=0.2)
    if not done:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsoon")
        await writer.drain()
        fin.cancel()
    writer.close()


async def _slow_answer_stops_at_fin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers at once, its 30-byte body over 1.5 s; stops at the proxy's FIN (as aiohttp does)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
    await writer.drain()
    fin = asyncio.ensure_future(reader.read())
    for _ in range(3):
        done, _ = await asyncio.wait([fin], timeout=0.5)
        if done:
            writer.transport.abort()
            return
        writer.write(b"x" * 10)
        await writer.drain()
    fin.cancel()
    writer.close()


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    try:
        poll, left = LongPoll(), LongPoll()
        poll_port, left_port = stack.serve(poll.handle), stack.serve(left.handle)
        fin_port = stack.serve(_answer_after_fin)
        stop_port = stack.serve(_stop_at_fin)
        slow_port = stack.serve(_slow_answer_stops_at_fin)
        serves_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serves_tls.load_cert_chain(tls.cert, tls.key)
        tls_port = stack.upstream("tls", ssl=serves_tls)[1]  # told http://: it resets a plain request at once
        server = stack.server(tls, token, upstream_timeout=30.0)
        stack.client(server, tls, token, [f"poll.test=http://{LOOPBACK}:{poll_port}",
                                          f"fin.test=http://{LOOPBACK}:{fin_port}",
                                          f"stop.test=http://{LOOPBACK}:{stop_port}",
                                          f"slow.test=http://{LOOPBACK}:{slow_port}",
                                          f"left.test=http://{LOOPBACK}:{left_port}",
                                          f"tls.test=http://{LOOPBACK}:{tls_port}"])
        yield dict(server=server, poll=poll, left=left, left_port=left_port, tls_port=tls_port)
    finally:
        stack.close()


@pytest.mark.parametrize("request_", [
    b"GET /events?wait=60 HTTP/1.1\r\nHost: poll.test\r\n\r\n",
    b"POST /graphql HTTP/1.1\r\nHost: poll.test\r\nContent-Length: 2\r\n\r\n{}",  # a body: the coroutine's path
    b"POST /graphql HTTP/1.1\r\nHost: poll.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
], ids=["get", "post", "post-chunked"])
def test_a_user_leaving_a_long_poll_closes_the_upstream_connection(env, request_):
    """Measured: the upstream's connection stayed open until it answered (up to --upstream-timeout, 60 s), its
    handler running and a client stream held for a user long gone; nginx closes it at once (499)."""
    poll = env["poll"]
    with socket.create_connection((LOOPBACK, env["server"].data_port), timeout=5) as sock:
        sock.sendall(request_)
        time.sleep(0.3)  # the request reached the upstream, which waits
    seen = poll.ended.get(timeout=12)
    assert seen is not None and seen < 4, "the upstream never saw its user leave"  # FIN_GRACE (1 s) after the user


@pytest.mark.parametrize("host, body", [(b"fin.test", b"later"), (b"stop.test", b"soon")], ids=["answers-at-fin", "stops-at-fin"])
def test_a_user_that_half_closes_still_gets_an_upstreams_answer(env, host, body):
    """A user that sends its request and then its FIN (shutdown(SHUT_WR)) gets what the upstream answers: from one
    that answers a FIN, and from one that stops at it (within FIN_GRACE), as it did before the FIN went upstream."""
    with socket.create_connection((LOOPBACK, env["server"].data_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(body), answer


def test_a_user_that_half_closes_gets_a_slow_answer_whole_and_counted_as_answered(env):
    """The FIN went upstream a second after the user's, even once the answer had begun: an upstream that stops at a
    FIN cut it, and the user, still reading, got the head and a reset, counted 499 "client closed". The README says
    the FIN passes while the upstream has not answered; now so: the whole answer, counted 200."""
    server = env["server"]
    before = metric(server, "http_dataplane_requests_total", code="200", host="slow.test")
    answer = answer_after_fin(server.data_port, b"GET /report HTTP/1.1\r\nHost: slow.test\r\n\r\n", 5)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"x" * 30), answer
    assert metric(server, "http_dataplane_requests_total", code="200", host="slow.test") == before + 1
    assert metric(server, "http_dataplane_requests_total", code="499", host="slow.test") == 0


def test_an_upstream_closing_after_its_user_left_gets_no_tls_hint(env, caplog):
    """Found by a probe: an upstream still silent when its user left (1.5 s in) closed at the FIN passed on to it,
    and the client warned "it closed the connection before answering: if it serves TLS, use https://...", sending
    the operator to a TLS fault there is none of. The user left first: an info line says so, and no hint."""
    caplog.set_level(logging.INFO, logger="inlets.http")
    with socket.create_connection((LOOPBACK, env["server"].data_port), timeout=5) as sock:
        sock.sendall(b"GET /report HTTP/1.1\r\nHost: left.test\r\n\r\n")
        time.sleep(1.5)  # the request reached the upstream, which waits
    assert env["left"].ended.get(timeout=12) is not None, "the upstream never saw its user leave"
    upstream = f"upstream=http://{LOOPBACK}:{env['left_port']} "
    deadline = time.monotonic() + 5  # the client logs as the upstream's close reaches it
    while not (lines := [r.getMessage() for r in caplog.records if upstream in r.getMessage()]):
        assert time.monotonic() < deadline, "the client said nothing of the upstream's close"
        time.sleep(0.05)
    assert not any("event=upstream_closed_without_answer" in line or "https://" in line for line in lines), lines
    assert lines == [f"event=upstream_unanswered {upstream}reason=user_left "
                     'note="the user closed its side before the upstream answered; the upstream then closed"'], lines


def test_a_user_that_half_closes_after_its_request_keeps_the_tls_hint(env, caplog):
    """A user that sends its whole request and half-closes at once still waits for the answer: an http:// upstream
    that serves TLS closed at the plain request, its fault, before the server passed the FIN on (``FIN_GRACE`` after
    the request), so the client gives the https:// hint, not "the user left"."""
    caplog.set_level(logging.INFO, logger="inlets.http")
    with socket.create_connection((LOOPBACK, env["server"].data_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: tls.test\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 502 "), answer
    upstream = f"upstream=http://{LOOPBACK}:{env['tls_port']} "
    deadline = time.monotonic() + 5  # the client logs as the upstream's close reaches it, before the 502
    while not (lines := [r.getMessage() for r in caplog.records if upstream in r.getMessage()]):
        assert time.monotonic() < deadline, "the client said nothing of the upstream's close"
        time.sleep(0.05)
    assert len(lines) == 1 and lines[0].startswith(f"event=upstream_closed_without_answer {upstream}"), lines
    assert f"use https://{LOOPBACK}:{env['tls_port']}" in lines[0] and "user_left" not in lines[0], lines
