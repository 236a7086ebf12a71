"""Several HTTP clients serving one name: one client's upstream down costs its users nothing while another serves."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from helpers.http import LOOPBACK, Stack, raw_request
from helpers.tunnel import blackhole, free_port
from inlets_py.runtime.core import bridge
from inlets_py.runtime.server import registry


def test_a_client_whose_upstream_is_down_hands_the_request_to_another(tls, token) -> None:
    """Found by a review helper: two clients for one host, the first one's upstream stopped: 10 of 20 users got
    502 "the tunnel client could not reach its upstream" while the other client served, for as long as it lasted.
    A client that could not dial its upstream sent nothing to any upstream, so the request (any method) goes to
    the next client; 502 only when every client failed it."""
    stack = Stack()
    try:
        app, up = stack.upstream("UP")
        down = free_port()  # nothing listens there: the first client's upstream is down
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"ha.test=http://{LOOPBACK}:{down}"])
        stack.client(server, tls, token, [f"ha.test=http://{LOOPBACK}:{up}"])
        answers = [raw_request(server.data_port, method + b" /r HTTP/1.1\r\nHost: ha.test\r\nConnection: close\r\n\r\n")
                   for method in (b"GET", b"POST") * 10]
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:120] for a in answers if b" 200 " not in a[:20]]
        assert {json.loads(a.partition(b"\r\n\r\n")[2])["upstream"] for a in answers} == {"UP"}
        assert len(app.stats.requests) == 20  # each once
        only_down = stack.server(tls, token)
        stack.client(only_down, tls, token, [f"ha.test=http://{LOOPBACK}:{down}"])
        stack.client(only_down, tls, token, [f"ha.test=http://{LOOPBACK}:{down}"])
        answer = raw_request(only_down.data_port, b"GET / HTTP/1.1\r\nHost: ha.test\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 ") and b"could not reach its upstream" in answer, answer[:300]
    finally:
        stack.close()


def test_a_request_with_a_body_also_goes_to_the_next_client_whole(tls, token) -> None:
    """A probe's finding: three clients for one host, one with its app down: POSTs with a body got 502 one time in
    three, as the body had gone on the stream to that client (only head-only requests were kept to send again),
    and that client was not routed around either. The request, head and body so far, is now kept up to KEPT_REQUEST
    until its answer begins; the body that follows goes on the new stream. Each body reaches an upstream once, whole,
    sent in one piece, in pieces, and chunked."""
    import hashlib

    stack = Stack()
    try:
        app, up = stack.upstream("UP")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"body.test=http://{LOOPBACK}:{free_port()}"])  # its upstream is down
        stack.client(server, tls, token, [f"body.test=http://{LOOPBACK}:{up}"])
        bodies = [b"x", b"y" * 30_000, bytes(range(256)) * 200]

        def post(body: bytes, pieces: int, chunked: bool) -> bytes:
            framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
            head = b"POST /sha256 HTTP/1.1\r\nHost: body.test\r\nConnection: close\r\n" + framing + b"\r\n\r\n"
            step = -(-len(body) // pieces)
            parts = [body[i:i + step] for i in range(0, len(body), step)]
            if chunked:
                parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
            with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as user:
                user.sendall(head + parts[0])
                for part in parts[1:]:
                    time.sleep(0.02)  # later pieces come after the stream to the first client failed
                    user.sendall(part)
                answer = b""
                while data := user.recv(65536):
                    answer += data
            return answer

        for body in bodies:
            for pieces, chunked in ((1, False), (3, False), (3, True)):
                answer = post(body, pieces, chunked)
                assert answer.startswith(b"HTTP/1.1 200 "), (len(body), pieces, chunked, answer[:300])
                got = json.loads(answer.partition(b"\r\n\r\n")[2])
                assert got == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}, got
        assert len(app.stats.requests) == 3 * len(bodies)  # each once
    finally:
        stack.close()


def test_a_client_that_could_not_dial_is_not_tried_again_for_the_request(tls, token, caplog) -> None:
    """Found by a review helper: the other client at its --max-streams refused the retried request's stream, and
    each retry after that refusal went to the client whose upstream is down again: 6 dials (6 upstream_failed lines
    at that client) for one request, where it was known unreachable after the first."""
    caplog.set_level(logging.INFO)
    stack = Stack()
    try:
        release = asyncio.Event()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.wait_for(release.wait(), 10)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        up = stack.serve(slow)
        down = free_port()
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"ms.test=http://{LOOPBACK}:{down}"])
        stack.client(server, tls, token, [f"ms.test=http://{LOOPBACK}:{up}"], max_streams=1)
        request = b"GET / HTTP/1.1\r\nHost: ms.test\r\nConnection: close\r\n\r\n"
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(raw_request, server.data_port, request)  # holds the second client's one stream
            time.sleep(0.5)
            caplog.clear()
            refused = raw_request(server.data_port, request)
            stack.loop.call_soon_threadsafe(release.set)
            assert busy.result(15).startswith(b"HTTP/1.1 200 ")
    finally:
        stack.close()
    assert refused.startswith(b"HTTP/1.1 502 "), refused[:200]
    dials = [r for r in caplog.records if "upstream_failed" in r.getMessage()]
    assert len(dials) <= 1, [r.getMessage() for r in dials]


def test_a_client_that_could_not_dial_is_tried_after_the_others_for_a_while(tls, token, caplog) -> None:
    """Found by a review helper: two clients for one host, the first one's upstream down. Every new request went to
    that client first (199 failed dials in 200 requests, with the CLIs; each paid the dial: 10 s with a blackholed
    upstream), as the retry's pick turned the round robin once more. Now it is tried after the other client for
    ``UNREACHABLE_FOR`` seconds, yet still used when no other client is there, so an upstream back is served at once."""
    caplog.set_level(logging.INFO)
    stack = Stack()
    try:
        app, up = stack.upstream("UP")
        down = free_port()
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"mem.test=http://{LOOPBACK}:{down}"])
        _, other = stack.client(server, tls, token, [f"mem.test=http://{LOOPBACK}:{up}"])
        request = b"GET / HTTP/1.1\r\nHost: mem.test\r\nConnection: close\r\n\r\n"
        answers = [raw_request(server.data_port, request) for _ in range(20)]
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:120] for a in answers if b" 200 " not in a[:20]]
        dials = [r for r in caplog.records if "upstream_failed" in r.getMessage()]
        assert len(dials) <= 1, f"{len(dials)} failed dials at the client whose upstream is down, for 20 requests"
        stack.stop_client(other)  # the client known unreachable is the only one left: still tried
        answer = raw_request(server.data_port, request)
        assert answer.startswith(b"HTTP/1.1 502 ") and b"could not reach its upstream" in answer, answer[:300]
        back, _ = stack.upstream("BACK")  # not on ``down``: a new upstream app, bound below on that port

        async def listen_on_down() -> asyncio.base_events.Server:
            return await asyncio.start_server(back.handle, LOOPBACK, down)

        revived = stack.run(listen_on_down())
        try:
            started = time.monotonic()
            answer = raw_request(server.data_port, request)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["upstream"] == "BACK"
            assert time.monotonic() - started < 1
        finally:
            async def close_it() -> None:  # on its loop: Server.close from this thread raced the loop's own wake-up
                revived.close()

            stack.run(close_it())
    finally:
        stack.close()


def test_new_requests_go_elsewhere_while_the_first_dial_hangs(tls, token, monkeypatch) -> None:
    """Found by a review helper: two `inlets http client`s, the first one's upstream blackholed, 100 users in 5 s
    from the start: 50 waited the 10 s dial timeout, as nothing was known of that client until its first dial failed.
    A client that has left a new stream unanswered for ``SILENT_FOR`` is tried after the others (5 of 100 waited)."""
    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 1.0)  # the client's dial timeout: 10 s in earnest
    monkeypatch.setattr(registry, "SILENT_FOR", 0.1)
    stack = Stack()
    hole, kept = blackhole()
    try:
        _, up = stack.upstream("UP")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"hole.test=http://{LOOPBACK}:{hole}"])
        stack.client(server, tls, token, [f"hole.test=http://{LOOPBACK}:{up}"])
        request = b"GET / HTTP/1.1\r\nHost: hole.test\r\nConnection: close\r\n\r\n"

        def user(_: int) -> tuple[float, bytes]:
            started = time.monotonic()
            answer = raw_request(server.data_port, request)
            return time.monotonic() - started, answer

        with ThreadPoolExecutor(30) as pool:
            futures = []
            for index in range(30):  # 50 a second for 0.6 s, all before the first dial to the blackhole fails
                futures.append(pool.submit(user, index))
                time.sleep(0.02)
            results = [future.result() for future in futures]
        assert all(a.startswith(b"HTTP/1.1 200 ") for _, a in results), [a[:120] for _, a in results]
        detoured = sum(wait >= 0.9 for wait, _ in results)
        assert 1 <= detoured <= 5, f"{detoured} of 30 requests waited for the blackholed upstream"
    finally:
        stack.close()
        for sock in kept:
            sock.close()


def test_a_websocket_answered_counts_as_an_answer(tls, token, monkeypatch) -> None:
    """Found by a review helper: a 101 (a websocket accepted) did not clear the silent mark (``registry.opened``),
    so the client that took one websocket got no new user of two for up to 11 s, its upstream answering all along
    (0 of 20 requests, the other client 20). The 101 is its upstream's answer, as a 200 is: 10 and 10."""
    monkeypatch.setattr(registry, "SILENT_FOR", 0.1)
    stack = Stack()
    served: dict[str, int] = {"A": 0, "B": 0}
    try:
        def app(name: str):
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    while head := await reader.readuntil(b"\r\n\r\n"):
                        if b"upgrade: websocket" in head.lower():
                            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                         b"Connection: Upgrade\r\n\r\n")
                            await writer.drain()
                            await reader.read()  # held open, as a websocket is
                            return
                        served[name] += 1
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        await writer.drain()
                except asyncio.IncompleteReadError:  # the tunnel's leg closed between requests
                    pass
            return handle

        server = stack.server(tls, token)
        for name in ("A", "B"):
            stack.client(server, tls, token, [f"ws.test=http://{LOOPBACK}:{stack.serve(app(name))}"])
        with socket.create_connection((LOOPBACK, server.data_port), timeout=5) as held:
            held.sendall(b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            assert held.recv(4096).startswith(b"HTTP/1.1 101 ")
            time.sleep(0.3)  # past SILENT_FOR
            answers = [raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: ws.test\r\nConnection: close\r\n\r\n")
                       for _ in range(20)]
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:120] for a in answers]
        assert served == {"A": 10, "B": 10}, served
    finally:
        stack.close()


def test_a_long_poll_in_flight_does_not_keep_users_from_its_client(tls, token, monkeypatch) -> None:
    """Found by a review helper: two `inlets http client`s, a request whose answer takes 4 s (a long poll) in flight
    on one of them, then 40 users: all 40 went to the other (0 and 40). The request unanswered left its client
    marked silent (``SILENT_FOR``), yet its dial had worked at once. The client acknowledges each dial that worked,
    which clears the mark as an answer does: 20 and 20. (Idle kept-alive users hold no stream: 20 and 20 before.)"""
    monkeypatch.setattr(registry, "SILENT_FOR", 0.1)
    stack = Stack()
    served: dict[str, int] = {"A": 0, "B": 0}
    try:
        release = asyncio.Event()

        def app(name: str):
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    while head := await reader.readuntil(b"\r\n\r\n"):
                        if head.startswith(b"GET /poll "):
                            await asyncio.wait_for(release.wait(), 10)
                        else:
                            served[name] += 1
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        await writer.drain()
                except asyncio.IncompleteReadError:  # the tunnel's leg closed between requests
                    pass
            return handle

        server = stack.server(tls, token)
        for name in ("A", "B"):
            stack.client(server, tls, token, [f"poll.test=http://{LOOPBACK}:{stack.serve(app(name))}"])
        with ThreadPoolExecutor(1) as pool:
            poll = pool.submit(raw_request, server.data_port,
                               b"GET /poll HTTP/1.1\r\nHost: poll.test\r\nConnection: close\r\n\r\n")
            time.sleep(0.3)  # past SILENT_FOR
            answers = [raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: poll.test\r\nConnection: close\r\n\r\n")
                       for _ in range(20)]
            stack.loop.call_soon_threadsafe(release.set)
            assert poll.result(15).startswith(b"HTTP/1.1 200 ")
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:120] for a in answers]
        assert served == {"A": 10, "B": 10}, served
    finally:
        stack.close()


def test_the_requests_of_a_client_tried_last_are_shared_by_the_others(tls, token) -> None:
    """Found by a review helper: three `inlets http client`s for one host, the first one's upstream port closed, 300
    requests on new connections: 199 went to the second client and 101 to the third (the TCP data plane's split too).
    The next turn now begins after the client that took the request: about half each."""
    stack = Stack()
    try:
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"ha.test=http://{LOOPBACK}:{free_port()}"])
        for name in ("B", "C"):
            stack.client(server, tls, token, [f"ha.test=http://{LOOPBACK}:{stack.upstream(name)[1]}"])
        answers = [raw_request(server.data_port, b"GET /r HTTP/1.1\r\nHost: ha.test\r\nConnection: close\r\n\r\n")
                   for _ in range(60)]
        names = [json.loads(a.partition(b"\r\n\r\n")[2])["upstream"] for a in answers]
        assert abs(names.count("B") - names.count("C")) <= 4 and len(names) == 60, names  # a probe of the first each 5 s
    finally:
        stack.close()


def test_an_idempotent_request_whose_client_goes_away_unanswered_goes_to_another(tls, token) -> None:
    """A probe's finding: a GET on a fresh stream to a client that then went (paused past its keepalive, here
    stopped) got 502 "the tunnel stream was reset", where nginx sends an idempotent request to the next upstream.
    It now goes once more, to another client; a POST still gets 502 (its upstream may have acted on it)."""
    stack = Stack()
    try:
        reached = threading.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            reached.set()
            await asyncio.sleep(15)  # never answers

        slow = stack.serve(silent)
        app, up = stack.upstream("UP")
        server = stack.server(tls, token)
        _, going = stack.client(server, tls, token, [f"gone.test=http://{LOOPBACK}:{slow}"])
        _, other = stack.client(server, tls, token, [f"gone.test=http://{LOOPBACK}:{up}"])
        answers = {}
        for method in (b"GET", b"POST"):
            with ThreadPoolExecutor(1) as pool:
                for _ in range(4):  # round robin: until a request is at the client that goes
                    reached.clear()
                    pending = pool.submit(raw_request, server.data_port,
                                          method + b" / HTTP/1.1\r\nHost: gone.test\r\nConnection: close\r\n\r\n")
                    deadline = time.monotonic() + 10  # answered by the other client, or held at the silent upstream
                    while not reached.is_set() and not pending.done() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    if reached.is_set():
                        break
                    pending.result(10)
                assert reached.is_set()
                stack.stop_client(going)
                answers[method] = pending.result(15)
            _, going = stack.client(server, tls, token, [f"gone.test=http://{LOOPBACK}:{slow}"])
        assert answers[b"GET"].startswith(b"HTTP/1.1 200 "), answers[b"GET"][:200]
        assert json.loads(answers[b"GET"].partition(b"\r\n\r\n")[2])["upstream"] == "UP"
        assert answers[b"POST"].startswith(b"HTTP/1.1 502 "), answers[b"POST"][:200]
        stack.stop_client(other)  # with no other client, the GET retried finds none: its 502 says why
        reached.clear()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(raw_request, server.data_port, b"GET / HTTP/1.1\r\nHost: gone.test\r\n"
                                  b"Connection: close\r\n\r\n")
            assert reached.wait(10)
            stack.stop_client(going)
            answer = pending.result(15)
        assert answer.startswith(b"HTTP/1.1 502 ") and b"tunnel stream was reset" in answer, answer[:300]
    finally:
        stack.close()
