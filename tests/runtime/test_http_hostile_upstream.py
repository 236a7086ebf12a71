"""A broken or hostile upstream (the app behind the tunnel client), and a user who reads slowly or not at all:
what the server sends users, and that it holds bounded memory and ends what makes no progress. Real server, tunnel
client and upstreams on loopback (TLS between them); users are plain sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import pytest

from helpers.http import LOOPBACK, Stack, answers_each, read_answer, read_answers
from inlets_py.runtime.http.request_reader import RequestReader
from inlets_py.runtime.http.messages import HttpError

#: What the streaming upstreams below send at most, so that a server that never stops them still ends each test.
BUDGET = 64 << 20


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    sent: dict[str, int] = {}
    served: dict[str, int] = {}
    try:
        server = stack.server(tls, token)
        stack.client(server, tls, token, [
            f"short.test=http://{LOOPBACK}:{stack.serve(answers_each(_short_length))}",
            f"late.test=http://{LOOPBACK}:{stack.serve(_answers_twice)}",
            f"ext.test=http://{LOOPBACK}:{stack.serve(_streaming(sent, 'ext', _EXT_HEAD, b'a' * 65536))}",
            f"hints.test=http://{LOOPBACK}:{stack.serve(_streaming(sent, 'hints', b'', _HINTS))}",
            f"closing.test=http://{LOOPBACK}:{stack.serve(_closing(served))}",
            f"status.test=http://{LOOPBACK}:{stack.serve(answers_each(_status_of_path))}",
            f"charge.test=http://{LOOPBACK}:{stack.serve(_charging(served))}",
        ])
        yield dict(stack=stack, server=server, port=server.data_port, sent=sent, served=served)
    finally:
        stack.close()


def _short_length(head: bytes) -> bytes:
    """Content-Length falls short of the body sent, whose rest begins a response head (kept alive)."""
    if b"GET /first " in head:
        return (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nX-Pad: ")
    return b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"


async def _answers_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers /first, then 50 ms later sends a second whole answer nobody asked for (kept alive)."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if b"GET /first " in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _status_of_path(head: bytes) -> bytes:
    """Answers ``GET /099`` with status 099 (any 3 digits, the path's) and Content-Length; others 200 (kept alive)."""
    code = head.split(b" ")[1][1:]
    if len(code) == 3 and code.isdigit():
        return b"HTTP/1.1 %s Odd\r\nContent-Length: 2\r\n\r\nok" % code
    return b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"


_EXT_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x="  # then the extension's value, endless
_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" * 1000


def _streaming(sent: dict[str, int], name: str, first: bytes, block: bytes):
    """An upstream that answers with ``first``, then ``block`` again and again, up to ``BUDGET`` (what went in ``sent``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sent[name] = 0
        writer.write(first)
        try:
            while sent[name] < BUDGET:
                writer.write(block)
                await writer.drain()
                sent[name] += len(block)
            await asyncio.sleep(60)
        except ConnectionError:
            pass
        writer.close()

    return handle


def _closing(served: dict[str, int]):
    """Answers of 200 KB, each closing its connection (so each request has a stream of its own); counted."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n" + b"b" * 200_000)
            served["closing"] = served.get("closing", 0) + 1
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return handle


def _charging(served: dict[str, int]):
    """``GET /bad``: an answer the proxy refuses (502, Connection: close); ``GET /slow``: 200 after 1 s; ``POST
    /charge``: counted, as a payment would be (kept alive)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if head.startswith(b"POST /charge "):
                    await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
                    served["charge"] = served.get("charge", 0) + 1
                elif head.startswith(b"GET /bad "):
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                    continue
                elif head.startswith(b"GET /slow "):
                    await asyncio.sleep(1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handle


def user(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect((LOOPBACK, port))
    return sock


def read_until_closed(sock: socket.socket, limit: int) -> tuple[bytes, str]:
    """What comes until the server ends the connection (or ``limit`` bytes): (bytes, how it ended)."""
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return data, "closed"
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    except socket.timeout:
        return data, "timeout"
    return data, f"still open after {limit} bytes"


def test_bytes_after_a_short_content_length_never_answer_the_next_request(env):
    """They began a 302 to another site: it used to be read on with the next answer and sent as its status and
    headers (RFC 9112 6.3: a client MUST NOT forward such extra data as a response)."""
    with user(env["port"]) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: short.test\r\n\r\n")
        first = read_answer(sock)
        time.sleep(0.2)  # what followed the answer has reached the server
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: short.test\r\n\r\n")
        second = read_answer(sock)
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\nfirst")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\n\r\nsecond"), second
    assert b"evil" not in second


def test_bytes_after_an_answer_never_answer_a_pipelined_request(env):
    """A request pipelined behind one went upstream on the same stream the moment its answer ended: what the upstream
    sent after that answer, still on its way through the tunnel, was taken for the next request's answer (the 302
    below, 3 of 3 tries). A waiting request now goes on a stream of its own."""
    with user(env["port"]) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: late.test\r\n\r\nGET /second HTTP/1.1\r\nHost: late.test\r\n\r\n")
        first, second = read_answers(sock, 2)
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"\r\n\r\nfirst")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\n\r\nsecond"), second


def test_an_endless_chunk_extension_ends_the_answer_and_stops_the_upstream(env):
    """llhttp skips an extension's bytes, keeping none: the server passed 6.4 GB of one in 20 s (a core busy), the user
    waiting on a chunk that never came, and each byte put off the upstream timeout."""
    with user(env["port"]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: ext.test\r\n\r\n")
        data, end = read_until_closed(sock, 1 << 20)
    assert data.startswith(b"HTTP/1.1 200 ") and end == "reset", (data[:200], end)
    assert env["sent"]["ext"] < BUDGET, "the upstream was never stopped"


def test_a_request_body_of_endless_chunk_extensions_is_refused():
    reader = RequestReader()
    reader.feed(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=")
    with pytest.raises(HttpError) as refused:
        for _ in range(64):  # 4 MiB, bounded
            reader.feed(b"a" * 65536)
    assert refused.value.status == 400 and "chunk extensions" in str(refused.value)


def test_endless_interim_answers_end_in_a_502(env):
    """103 Early Hints without end: the user got 154 MB of them in 20 s, a core busy, and never a final answer."""
    with user(env["port"]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: hints.test\r\n\r\n")
        data, end = read_until_closed(sock, 16 << 20)
    hints, _, final = data.rpartition(b"HTTP/1.1 502 ")  # after any 103 that went on before the limit
    assert final and b"interim (1xx)" in final and end == "closed", (data[-300:], end)
    assert hints.replace(_HINTS[:len(_HINTS) // 1000], b"") == b"", hints[:300]


@pytest.mark.parametrize("code", [b"099", b"000", b"001"])
def test_a_status_below_100_is_a_502_and_a_request_pipelined_behind_it_is_never_left_waiting(
        env, code, caplog):
    """RFC 9110 15: a status code is 100-599 (600-999 go on as they are: test_metrics). llhttp takes any 3 digits: a 099 was read as a final answer yet sent on
    as an interim one, its framing dropped (``HTTP/1.1 99 Odd``, then ``ok``), the request behind it never answered
    and the connection held past every timeout, with a Traceback in the server's log; an HTTP/1.0 user got ``ok``."""
    with caplog.at_level(logging.ERROR), user(env["port"]) as sock:
        sock.settimeout(5)  # well under the upstream timeout the hung connection outlived
        sock.sendall(b"GET /%s HTTP/1.1\r\nHost: status.test\r\n\r\n" % code
                     + b"GET /next HTTP/1.1\r\nHost: status.test\r\n\r\n")
        data, end = read_until_closed(sock, 1 << 20)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), data
    said, _, after = body.partition(b"\n")
    assert said == b"bad gateway: upstream sent a bad response: status %s is below 100" % code, data
    assert end == "closed" and (after == b"" if b"\r\nConnection: close" in head else after.endswith(b"\r\n\r\nsecond"))
    with user(env["port"]) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /%s HTTP/1.0\r\nHost: status.test\r\n\r\n" % code)
        data, end = read_until_closed(sock, 1 << 20)
    assert data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and end == "closed", (data, end)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_user_who_pipelines_and_never_reads_answers_with_their_own_streams_holds_bounded_memory(env):
    """Each answer closes its upstream connection, so each has a stream and its credit: the next request went on
    while the user's socket was full, and the server buffered them all (1,000 of 200 KB: +189 MiB)."""
    count = 300
    with user(env["port"], rcvbuf=4096) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: closing.test\r\n\r\n" * count)
        deadline, last, since = time.monotonic() + 15, -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < 1:  # until the upstream served none for 1 s
            if env["served"].get("closing", 0) != last:
                last, since = env["served"].get("closing", 0), time.monotonic()
            time.sleep(0.05)
        buffered = sum(c.transport.get_write_buffer_size() for c in list(env["server"].connections) if c.transport)
    print(f"{last} of {count} pipelined answers served to a user who reads none; {buffered >> 10} KiB buffered")
    assert buffered < 2 << 20, f"{buffered >> 20} MiB buffered for a user who reads nothing"
    assert last < count


_CHARGE = b"POST /charge HTTP/1.1\r\nHost: charge.test\r\nContent-Length: 9\r\n\r\namount=10"


@pytest.mark.parametrize("first, user_resets", [(b"/bad", False), (b"/slow", True)])
def test_a_request_pipelined_behind_the_connections_end_never_reaches_the_upstream(env, first, user_resets):
    """RFC 9112 9.6: no request received after a close is processed. Behind a 502 with Connection: close, or a user
    who reset the connection, the pipelined POST still went upstream and ran (counted a 499), though its answer could
    never be delivered: a user told the connection closed retries it, and it ran twice."""
    before = env["served"].get("charge", 0)
    with user(env["port"]) as sock:
        time.sleep(0.2)  # the connection's coroutine waits for the first request, as for any user slow to send
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: charge.test\r\n\r\n" % first + _CHARGE)
        if user_resets:
            time.sleep(0.3)  # the GET is upstream, the POST waits behind it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            data, end = read_until_closed(sock, 1 << 20)
            assert data.startswith(b"HTTP/1.1 502 ") and b"\r\nConnection: close\r\n" in data and end == "closed", data
    time.sleep(1.5)  # past the slow answer: a POST sent on would have been served by now
    assert env["served"].get("charge", 0) == before, "the pipelined POST ran upstream after the connection ended"
