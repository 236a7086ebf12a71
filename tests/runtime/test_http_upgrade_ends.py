"""How an upgraded connection (a websocket, any ``Upgrade:``) ends when one side leaves abruptly.

After the 101 the proxy relays raw bytes; a FIN is carried as a FIN (half-close), and a side that is gone (a
reset, or a TLS user's close, which has no half-close) ends the other side too, with a reset: the far end
must not take a cut connection for a complete one, and a silent upstream must not hold the stream, the
client's upstream socket and the user's connection for ever. Real server, tunnel client, TLS and sockets on
loopback; the upstream is a small raw-protocol server that answers 101 and then does what the test needs.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time

import pytest

from helpers.http import LOOPBACK, Stack
from helpers.tunnel import free_port, make_tls, metric
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import configure

UPGRADE = b"GET /raw HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n"
DOMAIN = "ws.example.test"
TCP_CLOSE = 7  # tcp_info's state once a reset came (a FIN alone: CLOSE_WAIT)


class RawUpstream:
    """Answers 101, then reads until its user's FIN or reset and says which (``ends``), staying open and silent
    after a FIN (as an app that ignores it does); ``/raw?rst`` instead sends ``partial`` and resets."""

    def __init__(self) -> None:
        self.ends: list[str] = []  # "fin" or "reset", one per connection, as each ends
        self.closed = 0  # connections that ended altogether

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(SWITCHED)
        if b"?rst" in head.split(b"\r\n")[0]:
            writer.write(b"partial")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        try:
            while await reader.read(65536):
                pass
            self.ends.append("fin")
            sock = writer.get_extra_info("socket")
            for _ in range(600):  # silent and open after the FIN, up to a minute, until the proxy ends it
                if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE:  # reset
                    break
                await asyncio.sleep(0.1)
        except OSError:
            self.ends.append("reset")
        finally:
            self.closed += 1
            writer.close()


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting until {what}"
        time.sleep(0.05)


def switched(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the 101: {data!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 101 "), data
    return data.partition(b"\r\n\r\n")[2]


@pytest.fixture(scope="module")
def env(tls, token, tmp_path_factory):
    stack = Stack()
    try:
        upstream = RawUpstream()
        up = stack.serve(upstream.handle)
        site = make_tls(tmp_path_factory.mktemp("site"), [DOMAIN])
        manager = configure([DOMAIN], tmp_path_factory.mktemp("le"), issuer=f"https://127.0.0.1:{free_port()}/dir")
        manager.store.save(DOMAIN, site.cert.read_bytes(), site.key.read_bytes())  # served as stored: no ACME run
        https_port = free_port()
        plain = stack.server(tls, token)
        secure = stack.server(tls, token, https=HttpsFront(manager, https_port))
        for server in (plain, secure):
            stack.client(server, tls, token, [f"http://{LOOPBACK}:{up}"])
        context = ssl.create_default_context(cafile=str(site.ca))
        yield dict(stack=stack, upstream=upstream, plain=plain, secure=secure, https_port=https_port, context=context)
    finally:
        stack.close()


def open_streams(server) -> int:
    return sum(session.open_streams for session in server.control.clients)


def test_a_user_who_resets_an_upgraded_connection_resets_its_upstream(env):
    """A user's reset reached the upstream as a clean FIN, and the stream stayed open as long as the upstream
    did: a cut connection passed for a finished one, and an upstream that stays open after a FIN held it."""
    upstream, server = env["upstream"], env["plain"]
    ends, closed = len(upstream.ends), upstream.closed
    with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as user:
        user.sendall(UPGRADE % b"app.test")
        switched(user)
        user.sendall(b"hello")
        time.sleep(0.2)
        user.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: len(upstream.ends) > ends, "the upstream saw its user go")
    assert upstream.ends[ends] == "reset", "the user's reset reached the upstream as a clean FIN"
    wait_for(lambda: upstream.closed > closed and open_streams(server) == 0 and server.upgraded == 0,
             "the stream is closed")


def test_an_upstream_reset_reaches_the_user_as_a_reset(env):
    """An upstream that reset its upgraded connection ended the user's with a FIN: a raw protocol read to
    the close took what it got for the whole."""
    with socket.create_connection((LOOPBACK, env["plain"].data_port), timeout=10) as user:
        user.sendall((UPGRADE % b"app.test").replace(b"/raw", b"/raw?rst"))
        received = switched(user)
        with pytest.raises(ConnectionResetError):
            for _ in range(100):
                chunk = user.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert received == b"partial"


def test_an_https_user_who_left_an_upgraded_connection_frees_its_stream(env):
    """TLS has no half-close: a user's close over HTTPS is the end of the connection. Its FIN went upstream and
    the proxy then waited for the upstream to end the stream: one that stays open after a FIN held the stream,
    its socket at the client and the user's connection for ever (20 such users: 20 streams held)."""
    upstream, server = env["upstream"], env["secure"]
    ends = len(upstream.ends)
    users = 5
    for _ in range(users):
        raw = socket.create_connection((LOOPBACK, env["https_port"]), timeout=10)
        with env["context"].wrap_socket(raw, server_hostname=DOMAIN) as user:
            user.sendall(UPGRADE % DOMAIN.encode())
            switched(user)
            user.sendall(b"hello")
    wait_for(lambda: len(upstream.ends) >= ends + users, "the upstream saw every user go")
    assert upstream.ends[ends:] == ["fin"] * users, "a user's close over TLS is a FIN to the upstream"
    wait_for(lambda: open_streams(server) == 0 and server.upgraded == 0, "the streams are closed")


def test_open_upgraded_connections_are_a_metric(env):
    """The server counted its upgraded connections and showed the count nowhere: a scrape could not tell 1,000
    idle websockets holding streams from none (only each client's open_streams in /status, requests mixed in)."""
    server = env["plain"]
    users = [socket.create_connection((LOOPBACK, server.data_port), timeout=10) for _ in range(3)]
    try:
        for user in users:
            user.sendall(UPGRADE % b"app.test")
            switched(user)
        assert metric(server, "http_dataplane_upgraded_connections") == 3
    finally:
        for user in users:  # a reset: a FIN alone leaves the connection half-open, as the upstream keeps it
            user.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            user.close()
    wait_for(lambda: metric(server, "http_dataplane_upgraded_connections") == 0, "the gauge went back to 0")


def test_a_half_closed_upgraded_connection_whose_upstream_ignores_the_fin_ends(tls, token):
    """A user that half-closed (shutdown SHUT_WR) to an upstream that ignores FINs and stays silent: the connection
    and its stream were held for ever (still open 20 s on with --upstream-timeout 5). Once one way has ended, nothing
    moving for --upstream-timeout ends it (a reset both ways), as HAProxy's timeout client-fin does."""
    stack = Stack()
    try:
        upstream = RawUpstream()
        server = stack.server(tls, token, upstream_timeout=1.0)
        stack.client(server, tls, token, [f"http://{LOOPBACK}:{stack.serve(upstream.handle)}"])
        with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as user:
            user.sendall(UPGRADE % b"app.test")
            switched(user)
            user.sendall(b"hello")
            user.shutdown(socket.SHUT_WR)
            wait_for(lambda: upstream.ends == ["fin"], "the upstream saw the user's FIN")
            with pytest.raises(ConnectionResetError):  # before the fix: socket.timeout, the connection held
                assert user.recv(1) == b"", "the user's connection ended with a FIN, as if the upstream had closed"
        wait_for(lambda: upstream.closed == 1 and open_streams(server) == 0 and server.upgraded == 0,
                 "the stream is closed")
    finally:
        stack.close()
