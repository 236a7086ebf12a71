"""An HTTP server's graceful stop (SIGTERM) with kept-alive users, on loopback with real TLS and sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from helpers.http import LOOPBACK, Stack, read_answer

GET = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
SLOW = b"GET /slow?s=1 HTTP/1.1\r\nHost: a.test\r\n\r\n"


def send_slow_request(user: socket.socket, app) -> None:
    """A request the upstream takes 1 s to answer, in flight once the upstream has it. A drain started as it was sent
    could run before the server read it (CI, once): the user looked idle, and was closed with it unread (a reset),
    which is the keep-alive race every HTTP server has between requests, not what these tests are about."""
    user.sendall(SLOW)
    deadline = time.monotonic() + 10
    while not any(request["target"] == "/slow?s=1" for request in app.stats.requests):
        assert time.monotonic() < deadline, "the slow request never reached the upstream"
        time.sleep(0.01)


def test_a_server_draining_closes_kept_alive_users_between_requests(tls, token):
    """A user's kept-alive connection between two requests held its stream to the client open, so a server's SIGTERM
    always waited its whole --drain-timeout (30 s: that long with no data port, as it is closed first), then cut
    the user. Now an idle user is closed at once, and a request in flight is answered with Connection: close."""
    stack = Stack()
    try:
        app, port = stack.upstream("A")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"http://{LOOPBACK}:{port}"])
        with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as idle, \
                socket.create_connection((LOOPBACK, server.data_port), timeout=10) as busy:
            for user in (idle, busy):
                user.sendall(GET)
                assert read_answer(user).startswith(b"HTTP/1.1 200")
            send_slow_request(busy, app)  # in flight as the drain starts
            drained = asyncio.run_coroutine_threadsafe(server.drain(60.0), stack.loop)
            answer = read_answer(busy)
            assert answer.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close\r\n" in answer
            assert busy.recv(1) == b"", "the server kept the answered user's connection open while draining"
            assert idle.recv(1) == b"", "the server kept an idle kept-alive user's connection open while draining"
            drained.result(20)  # before the fix: a TimeoutError here, the drain waiting its whole 60 s
    finally:
        stack.close()


def test_a_server_draining_cuts_websockets_once_no_request_is_in_flight(tls, token):
    """A websocket never finishes by itself: a drain with one open waited its whole --drain-timeout, then cut it.
    Now a request in flight is still answered, and the upgraded connection is cut (a reset) once it is."""
    async def websocket_then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n")
        await reader.read()  # until the proxy ends it
        writer.close()

    stack = Stack()
    try:
        app, port = stack.upstream("A")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"ws.test=http://{LOOPBACK}:{stack.serve(websocket_then_silent)}",
                                          f"http://{LOOPBACK}:{port}"])
        with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as ws, \
                socket.create_connection((LOOPBACK, server.data_port), timeout=10) as busy:
            ws.sendall(b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += ws.recv(65536)
            assert head.startswith(b"HTTP/1.1 101 "), head
            send_slow_request(busy, app)  # in flight as the drain starts
            drained = asyncio.run_coroutine_threadsafe(server.drain(60.0), stack.loop)
            assert read_answer(busy).startswith(b"HTTP/1.1 200"), "the request in flight was not answered"
            with pytest.raises(ConnectionResetError):  # before the fix: socket.timeout, the websocket held
                assert ws.recv(1) == b"", "the websocket was ended with a FIN, as if its upstream had closed"
            drained.result(20)  # before the fix: a TimeoutError here, the drain waiting its whole 60 s
    finally:
        stack.close()
