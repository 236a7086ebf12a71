"""What RFC 9110/9112 ask of a proxy, over real sockets: a cut close-delimited body is a reset, an
HTTP/1.0 request without Host goes upstream naming one, a 101 nobody asked for is a 502. Real server,
tunnel client and upstreams on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from email.utils import parsedate_to_datetime

import pytest

from helpers.http import LOOPBACK, Stack, raw_request, read_answer, read_answers


async def _cut_after_a_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers chunked, sends one chunk, then closes: the body is cut short."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    writer.close()


async def _echo_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with the head it received as the body."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(head), head))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _echo_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with the whole message it received, head and body, as the body."""
    try:
        while True:
            message = await reader.readuntil(b"\r\n\r\n")
            lower = message.lower()
            if b"\r\ntransfer-encoding: chunked\r\n" in lower:
                while not message.endswith(b"\r\n0\r\n\r\n"):
                    message += await reader.readuntil(b"\r\n")
            elif b"\r\ncontent-length: " in lower:
                message += await reader.readexactly(int(lower.split(b"\r\ncontent-length: ")[1].split(b"\r\n")[0]))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(message), message))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _switches_unasked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 101 to a plain request, then a second answer: bytes a user must never see."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 4\r\n\r\nevil")
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()


async def _switches_unnamed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers an upgrade 101 without ``Connection: upgrade`` (the head's path says which headers it does send)."""
    head = await reader.readuntil(b"\r\n\r\n")
    headers = b"Upgrade: websocket\r\n" if b" /upgrade-only " in head else b""
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\n" + headers + b"\r\nraw bytes")
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()


async def _upgrade_required(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 426 naming the protocol it wants, as a websocket server answers a plain GET (Node's ws)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Content-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def _trailers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers chunked, then after a pause as many small trailer fields as the path says (``/101``)."""
    head = await reader.readuntil(b"\r\n\r\n")
    count = int(head.split(b" ")[1][1:])
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # the head has gone on to the user: a refusal now can only cut the answer
    writer.write(b"0\r\n" + b"".join(b"X-T%d: t\r\n" % i for i in range(count)) + b"\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    try:
        server = stack.server(tls, token)
        upstreams = {name: stack.serve(handler) for name, handler in
                     (("cut", _cut_after_a_chunk), ("echo", _echo_head), ("switch", _switches_unasked),
                                       ("message", _echo_message), ("unnamed", _switches_unnamed),
                                       ("upgrade", _upgrade_required), ("trailers", _trailers))}
        stack.client(server, tls, token, [f"{name}.test=http://{LOOPBACK}:{port}" for name, port in upstreams.items()]
                     + [f"http://{LOOPBACK}:{upstreams['echo']}"])  # the catch-all: requests without a name
        yield server.data_port
    finally:
        stack.close()


def _read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the proxy sends, and how the connection ended: "eof" (a FIN) or "reset"."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    return data, "eof"


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_a_body_cut_short_resets_the_users_connection(env, version):
    """For HTTP/1.0 the body runs until the connection closes: a FIN would pass it off as complete."""
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        sock.sendall(b"GET /x HTTP/" + version + b"\r\nHost: cut.test\r\n\r\n")
        data, end = _read_to_end(sock)
    assert end == "reset", f"ended with a clean close after {data!r}"


def test_an_http_1_0_request_without_host_goes_upstream_naming_the_address_the_user_connected_to(env):
    answer = raw_request(env, b"GET /plain HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    seen = answer.partition(b"\r\n\r\n")[2]
    assert seen.startswith(b"GET /plain HTTP/1.1\r\n")
    assert b"\r\nHost: %s:%d\r\n" % (LOOPBACK.encode(), env) in seen


def test_an_http_1_0_user_asking_to_keep_alive_is_told_and_served_twice(env):
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /k HTTP/1.0\r\nHost: echo.test\r\nConnection: keep-alive\r\n\r\n")
            head = read_answer(sock).partition(b"\r\n\r\n")[0]
            assert b"\r\nConnection: keep-alive" in head


def test_an_http_1_0_user_asking_both_to_keep_alive_and_to_close_is_told_close_and_the_connection_ends(env):
    """RFC 9112 9.3: ``close`` outweighs ``keep-alive``. The proxy answered ``Connection: keep-alive`` and kept the
    connection for the idle timeout (75 s), so a user reading the answer to its end waited that long."""
    with socket.create_connection((LOOPBACK, env), timeout=5) as sock:  # well under the idle timeout
        sock.sendall(b"GET /k HTTP/1.0\r\nHost: echo.test\r\nConnection: keep-alive, close\r\n\r\n")
        head = read_answer(sock).partition(b"\r\n\r\n")[0]
        assert b"\r\nConnection: close" in head, head
        assert _read_to_end(sock) == (b"", "eof")


def test_an_upstreams_answer_without_a_date_reaches_the_user_with_one(env):
    """RFC 9110 6.6.1: a proxy with a clock that forwards a response without Date MUST add one, as nginx does
    (this upstream sends none); the answer went on without it."""
    head = raw_request(env, b"GET /d HTTP/1.1\r\nHost: echo.test\r\nConnection: close\r\n\r\n").partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.count(b"\r\nDate: ") == 1, head



def test_the_date_added_is_the_time_of_the_answer_not_of_an_earlier_one(env):
    """The Date line is made once a second (``date_line``): each answer's says the second it left, a second later
    too; one made once and kept would tell every user the time of the first answer."""
    for _ in range(2):
        before = int(time.time())
        head = raw_request(env, b"GET /d HTTP/1.1\r\nHost: echo.test\r\nConnection: close\r\n\r\n")
        after = time.time()
        date = head.partition(b"\r\nDate: ")[2].partition(b"\r\n")[0].decode()
        assert before <= parsedate_to_datetime(date).timestamp() <= after, (date, before, after)
        time.sleep(1.1)  # into the next second at least: the line is made anew


@pytest.mark.parametrize("host", [b"x/../y", b"user@echo.test", b"echo.test, other.test", b"..", b"echo..test", b":80"])
def test_an_invalid_host_is_400_and_never_reaches_an_upstream(env, host):
    answer = raw_request(env, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"invalid Host header" in answer
    assert b"GET / HTTP/1.1" not in answer  # the catch-all echoes what reaches it


def test_a_101_nobody_asked_for_is_a_502_and_what_follows_never_reaches_the_user(env):
    answer = raw_request(env, b"GET /s HTTP/1.1\r\nHost: switch.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"101" in answer
    assert b"Smuggled" not in answer and b"evil" not in answer


@pytest.mark.parametrize("path", [b"/upgrade-only", b"/no-headers"])
def test_a_101_that_names_no_protocol_is_a_502_that_says_so(env, path):
    """RFC 9110 7.8: a 101 carries Upgrade and Connection: upgrade. Without them llhttp stops after the head
    yet does not say where, and the user was told 'bad HTTP message: Pause on CONNECT/Upgrade'."""
    answer = raw_request(env, b"GET " + path + b" HTTP/1.1\r\nHost: unnamed.test\r\nConnection: upgrade\r\n"
                              b"Upgrade: websocket\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer
    assert b"101" in answer and b"Connection: upgrade" in answer and b"Pause" not in answer, answer
    assert b"raw bytes" not in answer


@pytest.mark.parametrize("version, body, forwarded", [
    (b"1.1", b"Content-Length: 4\r\n\r\nBODY", b"Content-Length: 4\r\n"),
    (b"1.1", b"Transfer-Encoding: chunked\r\n\r\n4\r\nBODY\r\n0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"),
    (b"1.0", b"Content-Length: 4\r\n\r\nBODY", b"Content-Length: 4\r\n"),
    (b"1.0", b"\r\n", b""),
])
def test_an_upgrade_on_a_request_with_a_body_or_in_http_1_0_is_ignored_and_the_body_goes_upstream(
        env, version, body, forwarded):
    """A body is HTTP's whole before any switch (RFC 9110 7.8), and HTTP/1.0's Upgrade is ignored: the
    request goes upstream as a plain one with its body (``curl --http2 -d`` sends Upgrade: h2c with a POST),
    not the body as the new protocol's first bytes; a request after it on the connection is parsed as HTTP."""
    answer = raw_request(env, b"POST /up HTTP/" + version + b"\r\nHost: message.test\r\nConnection: Upgrade, keep-alive\r\n"
                         b"Upgrade: h2c\r\n" + body + b"GET /next HTTP/1.1\r\nHost: message.test\r\nConnection: close\r\n\r\n")
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    seen = rest[: int(first.lower().split(b"content-length: ")[1].split(b"\r\n")[0])]
    assert seen.startswith(b"POST /up HTTP/1.1\r\n") and forwarded in seen and b"pgrade" not in seen
    assert seen.endswith(b"\r\n\r\n" + (b"BODY" if b"4\r\n\r\n" in body else b"4\r\nBODY\r\n0\r\n\r\n" if b"chunked" in body else b""))
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2 and b"GET /next HTTP/1.1\r\n" in answer


def test_a_body_the_user_stops_short_is_a_400_not_the_upstreams_502(env):
    """The user closed its side before Content-Length bytes: the request was malformed, the upstream did nothing wrong."""
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        sock.sendall(b"POST /short HTTP/1.1\r\nHost: message.test\r\nContent-Length: 10\r\n\r\nabc")
        sock.shutdown(socket.SHUT_WR)
        data, _ = _read_to_end(sock)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"request body incomplete" in data, data


def test_a_malformed_chunk_after_good_ones_in_the_same_read_is_a_400_at_once(env):
    """The pieces before the bad chunk went upstream; the refusal waited, unread, until the upstream timeout made
    the request a 408 (60 s by default), though the user had sent all it ever would."""
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        sock.sendall(b"POST /bad-chunk HTTP/1.1\r\nHost: message.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.3)  # the head on its way upstream, the body in a read of its own
        sock.sendall(b"5\r\nhello\r\nZZ\r\nnot a chunk\r\n")
        sock.settimeout(5)  # well under the upstream timeout (60 s) it waited for
        data, _ = _read_to_end(sock)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data


def test_hop_by_hop_headers_stop_at_the_proxy_and_framing_and_host_go_on(env):
    """RFC 9110 7.6.1: each of these describes the user's hop only. Proxy-Authorization is the user's credential for
    a proxy: passed on, the app behind the tunnel would read it. Content-Length and Host describe the message."""
    hop = {b"Keep-Alive": b"timeout=5", b"Proxy-Connection": b"keep-alive", b"Proxy-Authenticate": b"Basic",
           b"Proxy-Authorization": b"Basic dXNlcjpzZWNyZXQ=", b"TE": b"trailers", b"Trailer": b"X-Sum"}
    head = b"".join(name + b": " + value + b"\r\n" for name, value in hop.items())
    answer = raw_request(env, b"POST /hop HTTP/1.1\r\nHost: message.test\r\nConnection: close\r\n" + head
                         + b"Content-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    seen = answer.partition(b"\r\n\r\n")[2].lower()
    assert seen.startswith(b"post /hop http/1.1\r\n") and seen.endswith(b"\r\n\r\nhello"), seen
    assert b"\r\nhost: message.test\r\n" in seen and b"\r\ncontent-length: 5\r\n" in seen, seen
    passed_on = [name for name in hop if b"\r\n" + name.lower() + b":" in seen]
    assert not passed_on, f"hop-by-hop headers reached the upstream: {passed_on}"


@pytest.mark.parametrize("version, expect, forwarded", [
    (b"1.0", b"100-continue", None),
    (b"1.0", b"100-Continue, x-trace", b"Expect: x-trace"),  # only the expectation 1.0 voids goes
    (b"1.1", b"100-continue", b"Expect: 100-continue"),  # a live one: the upstream's to answer
])
def test_a_100_continue_expectation_in_http_1_0_does_not_go_upstream(env, version, expect, forwarded):
    """RFC 9110 10.1.1: "A server that receives a 100-continue expectation in an HTTP/1.0 request MUST ignore that
    expectation." The proxy did for itself, but passed it on inside the HTTP/1.1 request it sends upstream, where it
    is live: the upstream then answered 100 to a user who can take none, or 417."""
    answer = raw_request(env, b"POST /e HTTP/" + version + b"\r\nHost: message.test\r\nConnection: close\r\n"
                         b"Expect: " + expect + b"\r\nContent-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    seen = answer.partition(b"\r\n\r\n")[2]
    assert seen.startswith(b"POST /e HTTP/1.1\r\n") and seen.endswith(b"\r\n\r\nhello"), seen
    sent = [line for line in seen.split(b"\r\n") if line.lower().startswith(b"expect:")]
    assert sent == ([forwarded] if forwarded else []), seen


def test_an_http_1_2_request_is_served_as_http_1_1_and_another_major_version_is_505(env):
    """RFC 9110 2.5: a higher minor version is processed as the highest one implemented (llhttp said 400 "Invalid
    HTTP version"); it goes upstream as HTTP/1.1 and the connection is kept alive, as for 1.1. HTTP/3.0 is 505."""
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        for path in (b"/v1", b"/v2"):
            sock.sendall(b"GET " + path + b" HTTP/1.2\r\nHost: echo.test\r\n\r\n")
            head, _, seen = read_answer(sock).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" not in head, head
            assert seen.startswith(b"GET " + path + b" HTTP/1.1\r\n"), seen
    answer = raw_request(env, b"GET / HTTP/3.0\r\nHost: echo.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n") and answer.endswith(
        b"\r\n\r\nHTTP/3.0 is not spoken here: use HTTP/1.1\n"), answer


def test_an_extension_method_reaches_the_upstream_as_sent(env):
    """RFC 9110 9.1: any token is a method, and the origin decides (501); llhttp's fixed table had the proxy answer
    400 "Invalid method encountered" for registered ones (VERSION-CONTROL, UPDATEREDIRECTREF) and private ones, which
    nginx, HAProxy and Go pass on. Kept alive: a known method after it on the same connection is its own."""
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        for method in (b"VERSION-CONTROL", b"FOOBAR", b"GET"):
            sock.sendall(method + b" /x HTTP/1.1\r\nHost: message.test\r\nContent-Length: 2\r\n\r\nhi")
            head, _, seen = read_answer(sock).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            assert seen.startswith(method + b" /x HTTP/1.1\r\n") and seen.endswith(b"\r\n\r\nhi"), seen


def test_trace_is_501_and_never_reaches_the_upstream(env):
    """TRACE went upstream, whose answer echoes the request: the cookies and credentials a page's script cannot
    read (cross-site tracing); Max-Forwards: 0 was forwarded too (RFC 9110 7.6.2). Refused as nginx refuses it,
    501 as CONNECT (a 405 MUST list the upstream's methods in Allow, which the proxy cannot know)."""
    for forwards in (b"", b"Max-Forwards: 0\r\n"):
        answer = raw_request(env, b"TRACE /t HTTP/1.1\r\nHost: message.test\r\nCookie: session=secret\r\n" + forwards
                             + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n") and b"cross-site tracing" in answer, answer
        assert b"secret" not in answer, answer


def test_options_with_max_forwards_0_is_answered_by_the_proxy_and_a_higher_one_goes_on_one_less(env):
    """RFC 9110 7.6.2: an intermediary MUST NOT forward an OPTIONS whose Max-Forwards is 0 (it answers as the final
    recipient) and MUST decrement it otherwise; both went upstream as sent. The 200 has no body and no Allow (the
    proxy cannot know the upstream's methods); the connection goes on."""
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        sock.sendall(b"OPTIONS * HTTP/1.1\r\nHost: echo.test\r\nMax-Forwards: 0\r\n\r\n"
                     b"OPTIONS /o HTTP/1.1\r\nHost: echo.test\r\nMax-Forwards: 5\r\n\r\n")
        own, forwarded = read_answers(sock, 2)
    head, _, body = own.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Length: 0" in head and body == b"", own
    assert b"Allow" not in head and b"Connection: close" not in head, own
    seen = forwarded.partition(b"\r\n\r\n")[2]
    assert seen.startswith(b"OPTIONS /o HTTP/1.1\r\n") and b"\r\nMax-Forwards: 4\r\n" in seen, forwarded
    answer = raw_request(env, b"OPTIONS * HTTP/1.1\r\nHost: echo.test\r\nMax-Forwards: -1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Max-Forwards" in answer, answer


@pytest.mark.parametrize("version, user_via, sent", [
    (b"1.1", b"", [b"Via: 1.1 inlets"]),
    (b"1.0", b"", [b"Via: 1.0 inlets"]),
    (b"1.1", b"Via: 1.1 cdn.example\r\n", [b"Via: 1.1 cdn.example", b"Via: 1.1 inlets"]),
])
def test_the_upstream_is_told_of_the_proxy_in_via(env, version, user_via, sent):
    """RFC 9110 7.6.3: a gateway MUST send Via in each inbound request, naming the protocol it received, after any
    the request already had; the upstream never had one."""
    answer = raw_request(env, b"GET /via HTTP/" + version + b"\r\nHost: echo.test\r\nConnection: close\r\n"
                         + user_via + b"\r\n")
    seen = answer.partition(b"\r\n\r\n")[2]
    assert [line for line in seen.split(b"\r\n") if line.lower().startswith(b"via:")] == sent, seen


def test_a_426_keeps_its_upgrade_header(env):
    """RFC 9110 15.5.22: a 426 MUST send Upgrade (the protocols it asks for, which the user may ask for through
    the proxy), as nginx passes it on; it was dropped as hop-by-hop."""
    head = raw_request(env, b"GET / HTTP/1.1\r\nHost: upgrade.test\r\nConnection: close\r\n\r\n").partition(
        b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 426 ") and b"\r\nUpgrade: websocket" in head, head
    assert b"\r\nConnection: upgrade" in head, head


def test_an_upstreams_trailer_section_holds_at_most_100_fields(env):
    """The README's bound on an answer's trailers (100 fields, as its head) counted bytes only: 5,000 small fields
    went through. Past it the answer, whose head has gone, is cut with a reset, never passed off as complete."""
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        sock.sendall(b"GET /100 HTTP/1.1\r\nHost: trailers.test\r\nConnection: close\r\n\r\n")
        data, end = _read_to_end(sock)
    assert (end, data.endswith(b"\r\n2\r\nok\r\n0\r\n\r\n")) == ("eof", True), data
    with socket.create_connection((LOOPBACK, env), timeout=10) as sock:
        sock.sendall(b"GET /101 HTTP/1.1\r\nHost: trailers.test\r\nConnection: close\r\n\r\n")
        data, end = _read_to_end(sock)
    assert end == "reset" and not data.endswith(b"0\r\n\r\n"), data
