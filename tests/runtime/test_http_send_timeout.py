"""Users who read slowly, or not at all: the send timeout (``--upstream-timeout`` applied to the user's side).

A user who keeps reading, however slowly, gets the whole answer; one who takes nothing for the timeout is cut
with a log line. Real server, tunnel client and upstream on loopback; users are plain sockets with a small
receive buffer, so that the server's write buffer fills as it would for a slow link.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from helpers.http import LOOPBACK, Stack, received
from inlets_py.runtime.http.options import HttpOptions

TIMEOUT = 1.5  # --upstream-timeout of the server under test: a loaded CI machine stalled a reader 0.5 s


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    try:
        app, up = stack.upstream("A")
        server = stack.server(tls, token, upstream_timeout=TIMEOUT)
        server.control.config.window = 64 * 1024  # streams' credit stays small: the answer outlasts the buffers
        stack.client(server, tls, token, [f"app.test=http://{LOOPBACK}:{up}",
                                          f"ws.test=http://{LOOPBACK}:{stack.websocket_echo()}"])
        stack.client(server, tls, token, [f"prot.test=http://{LOOPBACK}:{up}"], HttpOptions.build(basic_auth=("a", "b")))
        yield dict(stack=stack, app=app, server=server, port=server.data_port)
    finally:
        stack.close()


def small_window_user(port: int) -> socket.socket:
    """A user whose receive buffer is 4 KiB: what it does not read stays in the server's buffers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((LOOPBACK, port))
    return sock


def send_timeouts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=send_timeout" in r.getMessage()]


def test_a_slow_but_steady_reader_gets_the_whole_download(env, caplog):
    """Reading 4 KiB every 20 ms, the user empties the server's write buffer far slower than the upstream timeout:
    the upstream waits for the user then, and is not late. It used to be cut with a reset after ~1 s, unlogged."""
    caplog.set_level(logging.INFO, logger="inlets.http")
    size = 1024 * 1024
    with small_window_user(env["port"]) as sock:
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % size)
        received = b""
        deadline = time.monotonic() + 30
        for _ in range(10_000):  # bounded in count and time
            assert time.monotonic() < deadline, f"only {len(received)} bytes in 30 s"
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                raise AssertionError(f"reset after {len(received)} bytes") from None
            assert data, f"closed after {len(received)} bytes"
            received += data
            head, _, body = received.partition(b"\r\n\r\n")
            if len(body) >= size:
                break
            time.sleep(0.02)
    assert head.startswith(b"HTTP/1.1 200 ") and len(body) == size
    assert not send_timeouts(caplog)


def test_a_reader_slower_than_the_kernels_queue_drains_in_a_timeout_is_not_cut(env, caplog):
    """Reading 4 KiB every 0.25 s (16 KiB/s): the server's kernel holds up to TCP_NOTSENT_LOWAT (128 KiB) unsent and
    wakes the writer only below half of it, so the write buffer did not shrink for ~3 s, and the user was cut as one
    who "took none of the answer" (a flood probe: reset at 4.8 s with --upstream-timeout 4, 59 KB read). The bytes
    the user's kernel acknowledged count as reading too."""
    caplog.set_level(logging.INFO, logger="inlets.http")
    with small_window_user(env["port"]) as sock:
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % (3 << 20))
        got, started = 0, time.monotonic()
        while time.monotonic() - started < 4 * TIMEOUT:  # bounded: the answer outlasts it
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                raise AssertionError(f"reset after {got} bytes, {time.monotonic() - started:.1f} s") from None
            assert data, f"closed after {got} bytes"
            got += len(data)
            time.sleep(0.25)
    assert not send_timeouts(caplog)


def test_a_user_who_takes_nothing_is_cut_and_logged(env, caplog):
    caplog.set_level(logging.INFO, logger="inlets.http")
    before = len(env["server"].connections)
    with small_window_user(env["port"]) as sock:
        sock.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % (4 << 20))
        deadline = time.monotonic() + 10
        while not send_timeouts(caplog):
            assert time.monotonic() < deadline, "the user was never cut"
            time.sleep(0.05)
        received = 0
        try:
            while data := sock.recv(65536):
                received += len(data)
        except ConnectionResetError:
            pass
    assert received < 4 << 20
    assert f"the user took none of the answer for {TIMEOUT:g}s" in send_timeouts(caplog)[0]
    deadline = time.monotonic() + 5
    while len(env["server"].connections) > before:
        assert time.monotonic() < deadline, "the connection was kept"
        time.sleep(0.05)


@pytest.mark.parametrize("host", [b"prot.test", b"nobody.test"])  # the proxy's own 401, its own 503
def test_a_user_who_pipelines_and_never_reads_the_proxys_own_answers_is_cut(env, caplog, host):
    """These answers used to wait on the user's socket with no deadline: the connection stayed forever."""
    caplog.set_level(logging.INFO, logger="inlets.http")
    request = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    pipeline = request * 20_000
    before = len(env["server"].connections)
    with small_window_user(env["port"]) as sock:
        sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 10
        while sent < len(pipeline) and not send_timeouts(caplog):  # until the server stops reading, or cuts
            assert time.monotonic() < deadline, "the user was never cut"
            try:
                sent += sock.send(pipeline[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.02)
        while not send_timeouts(caplog):
            assert time.monotonic() < deadline, "the user was never cut"
            time.sleep(0.05)
        while len(env["server"].connections) > before:
            assert time.monotonic() < deadline, "the connection was kept"
            time.sleep(0.05)
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):  # reset: what the server had not sent is dropped
            for _ in range(10_000):
                assert sock.recv(65536), "closed without a reset"
    assert "the user took none of the answer" in send_timeouts(caplog)[0]


def test_a_websocket_user_who_takes_none_of_the_echoes_is_cut(env, caplog):
    caplog.set_level(logging.INFO, logger="inlets.http")
    frame = b"\x82\xff" + (65536).to_bytes(8, "big") + b"\0\0\0\0" + b"w" * 65536  # binary, mask of zeros
    with small_window_user(env["port"]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += received(sock, head, 1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 10
        while not send_timeouts(caplog):  # the echo server answers each frame; none of it is read
            assert time.monotonic() < deadline, "the user was never cut"
            try:
                sent += sock.send(frame[sent % len(frame):])
            except BlockingIOError:
                time.sleep(0.02)
            except ConnectionResetError:
                break
    assert send_timeouts(caplog) and sent > 256 * 1024


def test_bytes_that_came_with_an_upgrade_request_are_not_counted_as_held_once_passed_on(env):
    """What followed the upgrade request in its read (the first websocket frames) was added to the bytes the
    connection holds and never taken off: each upgrade kept that much of the read-ahead budget for good."""
    payload = b"t" * 100
    frame = b"\x82" + bytes([0x80 | len(payload)]) + b"\0\0\0\0" + payload  # binary, masked with zeros
    with small_window_user(env["port"]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame)
        answer = b""
        for _ in range(1000):  # bounded: the 101, then the echo of the frame sent with the request
            answer += sock.recv(4096)
            if answer.endswith(b"\x82" + bytes([len(payload)]) + payload):
                break
        assert answer.startswith(b"HTTP/1.1 101 "), answer[:100]
        (front,) = [c for c in env["server"].connections if c.raw]
        assert front.buffered == 0
