"""The HTTP exchange's response side (``progress``) through its interface, ``exchange_state.Front``.

A real ``Leg`` on a real ``Session`` and ``Multiplexer`` (no websocket: nothing here needs the
wire) is fed an upstream's bytes as the tunnel would deliver them; the user's connection is a
small ``Front`` that records what the exchange writes and how it hands the connection back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from types import SimpleNamespace
from typing import Awaitable, Callable

import pytest

from inlets_py.runtime.core.mux import Multiplexer, ResetCode
from inlets_py.runtime.core.session import Session
from inlets_py.runtime.http import exchange
from inlets_py.runtime.http.exchange_state import Exchange
from inlets_py.runtime.http.guard import Guards
from inlets_py.runtime.http.leg import Leg
from inlets_py.runtime.http.options import HttpOptions
from inlets_py.runtime.http.messages import HttpError, RequestHead
from inlets_py.runtime.http.request_reader import RequestReader
from inlets_py.runtime.http.write import request_head

#: The websocket of a Session that never runs: no wire, never closing.
NO_WIRE = SimpleNamespace(closing=False)

SERVICE = "http:app.example"


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (a Leg and a Session need a running one)."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class Transport:
    """What the user would receive: every write, and whether the connection was closed or cut."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.pieces: list[list[bytes]] = []  # what each writelines call was given
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, pieces: list[bytes]) -> None:
        self.writes.append(b"".join(pieces))
        self.pieces.append(list(pieces))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> None:
        return None  # no socket: the reset's SO_LINGER is tested over a real one (test_http_tunnel)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


class Gateway:
    def __init__(self) -> None:
        self.guards = Guards()
        self.exchanges: set[Leg] = set()
        self.connections: set[Front] = set()
        self.upstream_timeout = 60.0
        self.draining = False
        self.observed: list[tuple[int, str, bytes]] = []

    def route(self, host: str) -> tuple[str | None, str]:
        return SERVICE, host

    def options_for(self, session: Session) -> HttpOptions:
        return HttpOptions()

    def observe(self, status: int, label: str, method: bytes, started: float, own: bool = False) -> None:
        self.observed.append((status, label, method))


class Front:
    """A user connection as the exchange sees it; ``legs`` are what ``pick`` hands out, in order."""

    def __init__(self, legs: list[Leg]) -> None:
        self.server = Gateway()
        self.transport: Transport | None = Transport()
        self.loop = asyncio.get_running_loop()
        self.peer = b"192.0.2.7"
        self.scheme = b"http"
        self.exchange: Exchange | None = None
        self.leg: Leg | None = None
        self.parked = False
        self.idle_since: float | None = None
        self.drain: asyncio.Future | None = None
        self.eof = False
        self.pipelined = 0
        self.legs = legs
        self.resumed = 0
        self.woken = 0

    def pick(self, service: str, avoid: list | None = None) -> Leg | None:
        self.leg = self.legs.pop(0) if self.legs else None
        return self.leg

    def on_leg(self) -> None:
        exchange.progress(self)  # type: ignore[arg-type]

    def resume_requests(self) -> None:
        self.resumed += 1

    def wake(self) -> None:
        self.woken += 1


def session() -> Session:
    return Session(NO_WIRE, Multiplexer(client=False), name="test")  # type: ignore[arg-type]


def request(raw: bytes = b"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n") -> RequestHead:
    head = RequestReader().feed(raw)[0]
    assert isinstance(head, RequestHead)
    return head


def start(front: Front, head: RequestHead, waiter: asyncio.Future | None = None, reused: bool = False) -> Leg:
    """Send ``head`` as the fast path does (or as the coroutine does, with a ``waiter``)."""
    leg = front.pick(SERVICE)
    assert leg is not None
    if reused:
        leg.received = 1  # the stream carried an exchange before this one
    sent = request_head(head, SERVICE, HttpOptions(), False, front.peer, front.scheme)
    front.parked = waiter is None
    exchange.start(front, head, leg, HttpOptions(), "app.example", front.loop.time(), sent, waiter)  # type: ignore[arg-type]
    return leg


def feed(leg: Leg, data: bytes) -> None:
    leg.on_data(data)  # as the tunnel delivers it: the leg parses, then calls its listener (the front)


@in_loop
async def test_a_response_goes_to_the_user_in_one_write_and_the_fast_path_takes_the_next_request() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    feed(leg, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\nhello")
    assert front.transport is not None
    assert len(front.transport.writes) == 1
    assert front.transport.data.startswith(b"HTTP/1.1 200 OK\r\n") and front.transport.data.endswith(b"\r\n\r\nhello")
    assert b"X-App: 1\r\n" in front.transport.data
    assert front.server.observed == [(200, "app.example", b"GET")]
    assert front.exchange is None and not front.parked and front.idle_since is not None and front.resumed == 1
    assert leg not in front.server.exchanges and leg.listener is None


@in_loop
async def test_the_response_arrives_in_pieces_and_each_batch_is_one_write() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    feed(leg, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
    assert front.exchange is not None and front.resumed == 0
    feed(leg, b"cdef")
    assert front.transport is not None and len(front.transport.writes) == 2 and front.transport.writes[1] == b"cdef"
    assert front.exchange is None and front.resumed == 1


@in_loop
@pytest.mark.parametrize("chunked", [False, True])
async def test_a_large_body_piece_is_written_as_it_is_with_the_head(chunked: bool) -> None:
    """From WRITEV_FROM on, a batch goes out in one writelines (one writev, the body not copied into a
    joined bytes); the user gets the same bytes, re-chunked where the upstream chunked."""
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    body = bytes(range(256)) * (exchange.WRITEV_FROM // 256 + 1)
    framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked else \
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    feed(leg, b"HTTP/1.1 200 OK\r\n" + framing)
    assert front.transport is not None and len(front.transport.writes) == 1 and len(front.transport.pieces) == 1
    assert body in front.transport.pieces[0], "the body piece was copied into a larger one"
    expected = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    assert front.transport.data.endswith(b"\r\n\r\n" + expected)
    assert front.exchange is None and front.resumed == 1


@in_loop
async def test_a_chunked_upstream_is_rechunked_and_informational_answers_are_relayed() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    feed(leg, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert front.transport is not None
    data = front.transport.data
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in data and data.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert front.server.observed == [(200, "app.example", b"GET")]


@in_loop
async def test_a_reset_before_the_answer_is_a_502_and_the_connection_closes() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    leg.on_reset(int(ResetCode.REFUSED), "connection refused")
    assert front.transport is not None
    assert front.transport.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"bad gateway: " in front.transport.data
    assert front.server.observed == [(502, "app.example", b"GET")]
    assert front.transport.closed and front.exchange is None and front.leg is None


@in_loop
async def test_an_upstream_that_stays_silent_is_a_504_naming_the_timeout() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    leg.timed_out = True  # as the server's sweep marks it
    exchange.progress(front)  # type: ignore[arg-type]
    assert front.transport is not None
    assert front.transport.data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert front.transport.data.endswith(b"upstream did not answer within 60s\n")


@pytest.mark.parametrize("expect, answer", [(b"", b"408 Request Timeout"), (b"Expect: 100-continue\r\n", b"504 Gateway Timeout")])
@in_loop
async def test_a_body_the_user_holds_back_is_408_unless_it_waits_for_a_100_continue(expect: bytes, answer: bytes) -> None:
    """The coroutine waits for the user's next body piece when the sweep times the leg out: the user stalled,
    unless it asked to be told to go on (RFC 9110 10.1.1 lets it wait) and the upstream never did."""
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request(b"POST /up HTTP/1.1\r\nHost: app.example\r\nContent-Length: 10\r\n" + expect + b"\r\n"))
    assert front.exchange is not None
    front.exchange.body_pending = front.exchange.awaiting_body = True  # as FrontConnection._pump sets them
    leg.timed_out = True
    exchange.progress(front)  # type: ignore[arg-type]
    assert front.transport is not None and front.transport.data.startswith(b"HTTP/1.1 " + answer + b"\r\n")


@in_loop
async def test_a_reused_stream_closed_without_answering_is_sent_once_more_on_a_fresh_one() -> None:
    s = session()
    first, second = Leg(s, SERVICE), Leg(s, SERVICE)
    front = Front([first, second])
    start(front, request(), reused=True)
    first.on_eof()
    assert front.exchange is not None and front.exchange.leg is second and front.exchange.retried
    assert front.transport is not None and front.transport.writes == []
    feed(second, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert front.transport.data.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert front.server.observed == [(204, "app.example", b"GET")]


@in_loop
async def test_a_post_on_a_reused_stream_closed_without_answering_is_not_sent_twice() -> None:
    """RFC 9110 9.2.2: a proxy must not retry a non-idempotent request; the upstream may have acted on it."""
    s = session()
    front = Front([Leg(s, SERVICE), Leg(s, SERVICE)])
    leg = start(front, request(b"POST /pay HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\n\r\n"), reused=True)
    leg.on_eof()
    assert front.transport is not None and front.transport.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert len(front.legs) == 1  # the spare leg was never picked
    assert front.server.observed == [(502, "app.example", b"POST")]


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
                                    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"])
@in_loop
async def test_a_whole_response_followed_by_bytes_that_begin_no_response_is_answered_and_the_stream_dropped(
        answer: bytes) -> None:
    """As nginx does: the response stands, the upstream connection (here: the stream) is not used again."""
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    feed(leg, answer)
    assert front.transport is not None and front.transport.data.startswith(answer.split(b" ")[0] + b" 20")
    assert b"EXTRA" not in front.transport.data and b"hello" not in front.transport.data
    assert front.server.observed == [(int(answer[9:12]), "app.example", b"GET")]
    assert front.exchange is None and front.leg is None and not leg.usable


@in_loop
async def test_an_answer_the_proxy_makes_itself_is_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """An operator sees why users got a 502 (at info; users' own 4xx only at debug)."""
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    with caplog.at_level(logging.INFO, logger="inlets.http"):
        leg.on_eof()
    assert [r.getMessage() for r in caplog.records] == [
        'event=answered status=502 host=app.example method=GET reason="bad gateway: upstream closed the connection"']


@in_loop
async def test_a_fresh_stream_closed_without_answering_is_not_retried() -> None:
    s = session()
    front = Front([Leg(s, SERVICE), Leg(s, SERVICE)])
    leg = start(front, request())
    leg.on_eof()
    assert front.transport is not None and front.transport.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert len(front.legs) == 1  # the spare leg was never picked


@in_loop
async def test_a_response_cut_after_its_head_aborts_the_user_connection_and_says_why(
    caplog: pytest.LogCaptureFixture
) -> None:
    """The user's connection is reset; the operator used to see nothing of it, in the log or in the metrics: it
    counts as what the user got, a bad gateway (a review helper's finding)."""
    s = session()
    front = Front([Leg(s, SERVICE), Leg(s, SERVICE)])
    leg = start(front, request())
    feed(leg, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    with caplog.at_level(logging.INFO, logger="inlets.http"):
        leg.on_reset(int(ResetCode.CANCEL), "client went away")
    assert front.transport is not None and front.transport.aborted
    assert front.server.observed == [(502, "app.example", b"GET")]  # never completed: not counted as a 200
    timed_out = Front([Leg(s, SERVICE)])
    leg = start(timed_out, request())
    feed(leg, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    with caplog.at_level(logging.INFO, logger="inlets.http"):
        leg.fire_timeout()
    assert timed_out.server.observed == [(502, "app.example", b"GET")]
    assert [r.getMessage() for r in caplog.records] == [
        'event=answer_cut status=200 host=app.example reason="the tunnel stream was reset in the middle of the answer"',
        f'event=answer_cut status=200 host=app.example reason="upstream sent nothing for '
        f'{timed_out.server.upstream_timeout:g}s in the middle of the answer"']


@in_loop
async def test_a_user_who_leaves_before_the_answer_ends_is_counted_as_nginx_counts_one() -> None:
    """Counted nowhere before: a download the user closed halfway, or a request left waiting, was missing from
    the request rate and the durations. It counts as 499 (nginx's "client closed request"): no 5xx."""
    s = session()
    for answer in (b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"):
        front = Front([Leg(s, SERVICE)])
        leg = start(front, request())
        if answer:
            feed(leg, answer)
        exchange.abandon(front)  # the user's connection was lost
        assert front.server.observed == [(exchange.CLIENT_CLOSED, "app.example", b"GET")]
        assert front.exchange is None
    stopping = Front([Leg(s, SERVICE)])
    start(stopping, request())
    exchange.abandon(stopping, gone=False)  # the server is stopping: not the user's doing
    assert stopping.server.observed == []


@in_loop
async def test_credit_waits_while_the_users_socket_is_full() -> None:
    class CountingLeg(Leg):
        releases = 0

        def release(self) -> None:
            CountingLeg.releases += 1
            super().release()

    s = session()
    leg = CountingLeg(s, SERVICE)
    front = Front([leg])
    start(front, request())
    front.drain = front.loop.create_future()
    feed(leg, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    assert front.transport is not None and front.transport.data.endswith(b"12345")
    assert front.exchange is not None and front.exchange.unreleased and CountingLeg.releases == 0
    front.drain = None
    exchange.resumed(front)  # type: ignore[arg-type]
    assert not front.exchange.unreleased and CountingLeg.releases == 1


@pytest.mark.parametrize("response, keep", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", True),  # the upstream's close is its own
    (b"HTTP/1.0 200 OK\r\n\r\nbody until close", False),
])
@in_loop
async def test_the_coroutines_waiter_learns_whether_the_user_connection_stays(response: bytes, keep: bool) -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    waiter = front.loop.create_future()
    leg = start(front, request(), waiter=waiter)
    feed(leg, response)
    if not keep:
        leg.on_eof()
    assert waiter.done() and waiter.result() is keep
    assert front.resumed == 0  # the coroutine, not the fast path, carries on


@in_loop
async def test_the_user_going_away_mid_exchange_lets_go_of_the_leg() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    front.transport = None
    exchange.abandon(front)  # type: ignore[arg-type]
    assert front.exchange is None and leg.listener is None and leg not in front.server.exchanges
    assert leg.failure is not None and front.woken == 1


@in_loop
async def test_a_101_nobody_asked_for_is_a_502_and_what_follows_never_reaches_the_user() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request())
    feed(leg, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n")
    feed(leg, b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 4\r\n\r\nevil")
    assert front.transport is not None
    assert front.transport.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"101" in front.transport.data
    assert b"Smuggled" not in front.transport.data and b"evil" not in front.transport.data
    assert front.transport.closed and front.server.observed == [(502, "app.example", b"GET")]


@in_loop
async def test_an_http_1_0_user_who_asked_to_keep_alive_is_told_so() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request(b"GET /x HTTP/1.0\r\nHost: app.example\r\nConnection: keep-alive\r\n\r\n"))
    feed(leg, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert front.transport is not None and b"\r\nConnection: keep-alive\r\n" in front.transport.data
    assert front.resumed == 1 and not front.transport.closed  # and kept, as said
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request(b"GET /x HTTP/1.0\r\nHost: app.example\r\n\r\n"))
    feed(leg, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert front.transport is not None and b"\r\nConnection: close\r\n" in front.transport.data


@in_loop
async def test_a_chunked_answer_to_head_keeps_the_connection() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    leg = start(front, request(b"HEAD /x HTTP/1.1\r\nHost: app.example\r\n\r\n"))
    feed(leg, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert front.transport is not None and b"Connection: close" not in front.transport.data
    assert front.transport.data.endswith(b"\r\n\r\n") and front.resumed == 1 and not front.transport.closed


@in_loop
async def test_a_malformed_request_body_is_the_users_400_not_a_bad_gateway() -> None:
    s = session()
    front = Front([Leg(s, SERVICE)])
    waiter = front.loop.create_future()
    head = request(b"POST /x HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n")
    leg = start(front, head, waiter)
    leg.abort(HttpError(400, "bad HTTP message: Invalid character in chunk size"))  # as the body pump does
    assert front.transport is not None and front.transport.data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert front.transport.data.endswith(b"\r\n\r\nbad HTTP message: Invalid character in chunk size\n")
    assert waiter.result() is False
