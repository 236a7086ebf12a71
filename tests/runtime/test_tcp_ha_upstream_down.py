"""Several clients serving one TCP port: one client's upstream down costs its users nothing while another serves."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from helpers.tunnel import (
    TlsFiles, blackhole, control_url, free_port, metric, pattern, port_of, run, serve, start_client, start_server, stop,
)
from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.core import bridge
from inlets_py.runtime.server import registry
from inlets_py.runtime.server.dataplane import DataPlaneOptions


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The working upstream: what the user sent, read to its FIN, answered by its size and digest."""
    data = await reader.read(-1)
    writer.write(b"UP %d %s\n" % (len(data), hashlib.sha256(data).hexdigest().encode()))
    await writer.drain()


async def _user(port: int, data: bytes) -> bytes:
    """One user: sends ``data`` and its FIN before anything comes back, as a request does; the answer, or b"reset"."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(-1), 5) or b"closed"
    except ConnectionResetError:
        return b"reset"
    finally:
        writer.close()


def _expected(data: bytes) -> bytes:
    return b"UP %d %s\n" % (len(data), hashlib.sha256(data).hexdigest().encode())


async def _two_clients(tls: TlsFiles, token: str, up: asyncio.base_events.Server):
    """A server, then a client whose upstream port is closed and one whose upstream answers: the first user goes to
    the first client (round robin starts there)."""
    server = await start_server(tls, token)
    public = free_port()
    _, task_down = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", free_port())})
    _, task_up = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up))})
    return server, public, (task_down, task_up)


def test_a_client_whose_upstream_is_down_hands_the_user_to_another(tls: TlsFiles, token: str, caplog) -> None:
    """Found by a review helper: two `inlets tcp client`s for one port, the first one's upstream port closed: 20 of
    40 users were reset (real CLIs on loopback). A client that could not dial its upstream took nothing upstream and
    sent nothing back, so the user's bytes so far go to the next client; and for a few seconds new users go to the
    others first, so the down upstream is not dialled for every other user."""
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        up = await serve(_answer)
        server, public, tasks = await _two_clients(tls, token, up)
        try:
            answers = [await _user(public, b"user %d\n" % i) for i in range(40)]
            served = sum(answer == _expected(b"user %d\n" % i) for i, answer in enumerate(answers))
            assert served == 40, answers
            assert metric(server, "tcp_dataplane_connections_total", port=str(public)) == 40
            assert metric(server, "tcp_dataplane_bytes_total", port=str(public), direction="in") == sum(
                len(b"user %d\n" % i) for i in range(40))  # bytes sent again are not counted twice
            assert metric(server, "tcp_dataplane_refused_total", port=str(public), reason="upstream_failed") == 0
        finally:
            await stop(*tasks)
            await server.stop()
            up.close()

    run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert any("event=upstream_unreachable" in line and "action=next_client" in line for line in lines), lines
    assert sum("event=upstream_failed" in line for line in lines) == 1, [x for x in lines if "upstream_failed" in x]


def test_the_bytes_sent_again_are_all_the_user_sent(tls: TlsFiles, token: str) -> None:
    """A user who sent many reads' worth (200 kB, under a stream's first credit) and its FIN before the first client
    refused: the next client's upstream gets the --proxy-protocol header, every byte once, in order, then the FIN."""

    async def proxied(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readline()
        assert header.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), header
        await _answer(reader, writer)

    async def scenario() -> None:
        up = await serve(proxied)
        server, public, tasks = await _two_clients(tls, token, up)
        server.options = DataPlaneOptions(proxy_protocol="v1")
        try:
            big = pattern(200_000)
            assert await _user(public, big) == _expected(big)
        finally:
            await stop(*tasks)
            await server.stop()
            up.close()

    run(scenario())


def test_a_user_is_reset_at_once_when_no_client_reaches_its_upstream(tls: TlsFiles, token: str, caplog) -> None:
    """Both clients' upstreams down: the user is reset as soon as each client refused once, counted and logged."""
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        server = await start_server(tls, token)
        public = free_port()
        tasks = [(await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", free_port())}))[1]
                 for _ in range(2)]
        try:
            for _ in range(3):
                started = time.monotonic()
                assert await _user(public, b"hello\n") in (b"reset", b"closed")
                assert time.monotonic() - started < 1.0
            assert metric(server, "tcp_dataplane_refused_total", port=str(public), reason="upstream_failed") == 3
        finally:
            await stop(*tasks)
            await server.stop()

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if "upstream_unreachable" in r.getMessage()]
    assert sum("action=next_client" in line for line in lines) == 3, lines  # each user: one client, then the other
    assert sum("action=reset" in line for line in lines) == 3, lines
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=refused ")]
    assert sum("reason=upstream_failed" in line for line in refused) == 3, refused


def _waited_for_the_blackhole(tls: TlsFiles, token: str, users: int, every: float, first_waits: bool = False) -> int:
    """Two clients, the first one's upstream blackholed (a 1 s dial timeout here): how many of ``users``, one each
    ``every`` s, waited for its dial before the other client served them. ``first_waits``: a user goes first, alone,
    to the first client (round robin starts there), and waits its dial out, so the client is marked."""

    async def user(public: int, index: int) -> float:
        started = time.monotonic()
        assert await _user(public, b"user %d\n" % index) == _expected(b"user %d\n" % index)
        return time.monotonic() - started

    async def scenario() -> int:
        up = await serve(_answer)
        hole, kept = blackhole()
        server = await start_server(tls, token)
        public = free_port()
        _, task_down = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", hole)})
        _, task_up = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up))})
        try:
            if first_waits:
                assert await user(public, 0) >= 1.0
            started = []
            for index in range(1, users + 1):
                started.append(asyncio.ensure_future(user(public, index)))
                await asyncio.sleep(every)
            return sum(wait >= 0.9 for wait in await asyncio.gather(*started))
        finally:
            await stop(task_down, task_up)
            await server.stop()
            up.close()
            for sock in kept:
                sock.close()

    return run(scenario())  # type: ignore[return-value]


def test_a_blackholed_upstream_is_tried_by_one_user_at_a_time(tls: TlsFiles, token: str, monkeypatch) -> None:
    """Found by a review helper: two `inlets tcp client`s, the first one's upstream a host that drops SYNs, 10 users a
    second for 40 s: 97 users waited the 10 s dial timeout, half of all users from 20 s to 30 s. The mark lapsed 5 s
    after a refusal and every user in the next dial's 10 s went to that client. Once the mark lapses one user tries
    that client, and the mark holds while it does, until a stream to it shows it reaches its upstream."""
    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 1.0)  # the client's dial timeout: 10 s in earnest
    monkeypatch.setattr(registry, "UNREACHABLE_FOR", 0.5)
    # 20 a second for 3 s: one probe each 0.5 s, each held 1 s
    detoured = _waited_for_the_blackhole(tls, token, 60, 0.05, first_waits=True)
    assert detoured <= 8, f"{detoured} of 60 users waited for the blackholed upstream"


def test_new_users_go_elsewhere_while_the_first_dial_hangs(tls: TlsFiles, token: str, monkeypatch) -> None:
    """Found by a review helper: two `inlets tcp client`s, the first one's upstream blackholed, 100 users in 5 s
    from the start: 50 waited the 10 s dial timeout, as nothing was known of that client until its first dial failed.
    A client that has left a new stream unanswered for ``SILENT_FOR`` is tried after the others (5 of 100 waited)."""
    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 1.0)  # the client's dial timeout: 10 s in earnest
    monkeypatch.setattr(registry, "SILENT_FOR", 0.1)
    # 50 a second for 0.6 s, all before the first dial to the blackhole fails
    detoured = _waited_for_the_blackhole(tls, token, 30, 0.02)
    assert 1 <= detoured <= 5, f"{detoured} of 30 users waited for the blackholed upstream"


def _named(name: bytes):
    """An upstream that answers a user with its name, and a connection closed with nothing sent (a load balancer's
    TCP health check) with nothing, as an HTTP server does."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.read(-1):
            writer.write(name)
            await writer.drain()
        writer.close()

    return answer


def test_a_reconnected_client_keeps_its_marks(tls: TlsFiles, token: str, caplog) -> None:
    """Found by a review helper: two `inlets tcp client`s, the first one's upstream blackholed, SIGHUP to it twice in
    a 100-user run: 9 users waited the 10 s dial, 3 without the SIGHUPs: its new session started with no marks. A
    reconnection (SIGHUP, or the connection lost) takes the marks of the client id's session before it."""
    caplog.set_level(logging.INFO)

    async def unreachable_after(users: range) -> int:
        caplog.clear()
        for index in users:
            assert await _user(public, b"user %d\n" % index) == _expected(b"user %d\n" % index)
        return sum("event=upstream_unreachable" in r.getMessage() for r in caplog.records)

    async def scenario() -> None:
        nonlocal public
        up = await serve(_answer)
        server = await start_server(tls, token)
        public = free_port()
        client, task_down = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", free_port())})
        _, task_up = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up))})
        try:
            assert await unreachable_after(range(1)) == 1  # the first user went to it: it is marked
            await client.rotate()  # as SIGHUP does: make-before-break
            assert await unreachable_after(range(1, 5)) == 0
            old = client.session
            assert old is not None
            old.websocket.transport.abort()  # a network blip: the client reconnects
            for _ in range(100):
                if client.session not in (old, None) and len(server.control.clients) == 2:
                    break
                await asyncio.sleep(0.05)
            assert client.session not in (old, None) and len(server.control.clients) == 2
            assert await unreachable_after(range(5, 9)) == 0
        finally:
            await stop(task_down, task_up)
            await server.stop()
            up.close()

    public = 0
    run(scenario())


def test_a_health_check_does_not_keep_users_from_a_client(tls: TlsFiles, token: str, monkeypatch) -> None:
    """Found by a review helper: two `inlets tcp client`s whose upstreams work, a load balancer's TCP check (connect,
    FIN) to both every 2 s, a user a second: 28 of 30 users went to one client. The upstream closed the checked
    connection saying nothing, which left its client marked silent (``SILENT_FOR``) until SILENT_MOST. The client's
    FIN shows its dial worked, as an answer does."""
    monkeypatch.setattr(registry, "SILENT_FOR", 0.1)

    async def scenario() -> None:
        ups = [await serve(_named(b"A")), await serve(_named(b"B"))]
        server = await start_server(tls, token)
        public = free_port()
        tasks = [(await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up))}))[1]
                 for up in ups]
        try:
            for _ in range(2):  # the check, once to each client
                _, writer = await asyncio.open_connection("127.0.0.1", public)
                writer.close()
            await asyncio.sleep(0.3)
            answers = []
            for index in range(6):
                answers.append(await _user(public, b"user %d\n" % index))
                await asyncio.sleep(0.15)
            assert sorted(answers) == [b"A"] * 3 + [b"B"] * 3, answers
        finally:
            await stop(*tasks)
            await server.stop()
            for up in ups:
                up.close()

    run(scenario())


def test_idle_pool_connections_do_not_keep_users_from_a_client(tls: TlsFiles, token: str, monkeypatch) -> None:
    """Found by a review helper: two `inlets tcp client`s whose upstreams work and speak only when spoken to (Redis,
    Postgres), a pool of 10 connections held open saying nothing, then 40 users: all 40 went to one client. Nothing
    came back on the idle connections, which left both clients marked silent (``SILENT_FOR``), and the first to
    answer a user took every user after. A client acknowledges each dial that worked, which clears the mark."""
    monkeypatch.setattr(registry, "SILENT_FOR", 0.1)

    async def scenario() -> None:
        ups = [await serve(_named(b"A")), await serve(_named(b"B"))]
        server = await start_server(tls, token)
        public = free_port()
        tasks = [(await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up))}))[1]
                 for up in ups]
        pool = []
        try:
            for _ in range(10):  # the pool: connected, nothing sent
                pool.append((await asyncio.open_connection("127.0.0.1", public))[1])
            await asyncio.sleep(0.3)  # past SILENT_FOR
            answers = [await _user(public, b"user %d\n" % index) for index in range(10)]
            assert sorted(answers) == [b"A"] * 5 + [b"B"] * 5, answers
        finally:
            for writer in pool:
                writer.close()
            await stop(*tasks)
            await server.stop()
            for up in ups:
                up.close()

    run(scenario())


def test_a_client_whose_upstream_is_back_takes_its_share_once_a_user_reaches_it(tls: TlsFiles, token: str,
                                                                                  monkeypatch) -> None:
    """Once the one user let through to a marked client reaches its upstream (``registry.reached``), that client takes
    its share again at once. With the mark kept, it got one user per ``UNREACHABLE_FOR`` (5 s) for good: 0 of the next
    6 users, where round robin gives it 3."""
    monkeypatch.setattr(registry, "UNREACHABLE_FOR", 0.3)

    async def scenario() -> None:
        up = await serve(_named(b"B"))
        server = await start_server(tls, token)
        public, down = free_port(), free_port()
        _, task_a = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", down)})
        _, task_b = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up))})
        back = None
        try:
            assert await _user(public, b"first\n") == b"B"  # tried on A first, refused there, handed to B: A marked
            back = await asyncio.start_server(_named(b"A"), "127.0.0.1", down)  # A's upstream is back
            await asyncio.sleep(0.4)  # the mark lapses: the next user goes to A, and the mark holds while it does
            monkeypatch.setattr(registry, "UNREACHABLE_FOR", 60.0)  # a mark not cleared would outlast the test
            probes = [await _user(public, b"probe\n") for _ in range(2)]  # round robin may start at B
            assert b"A" in probes, probes
            answers = [await _user(public, b"user %d\n" % index) for index in range(6)]
            assert answers.count(b"A") >= 2, answers
        finally:
            await stop(task_a, task_b)
            await server.stop()
            up.close()
            if back is not None:
                back.close()

    run(scenario())


def test_the_users_of_a_client_tried_last_are_shared_by_the_others(tls: TlsFiles, token: str) -> None:
    """Found by a review helper: three `inlets tcp client`s, the first one's upstream port closed, 300 users: 200 went
    to the second client and 100 to the third. Round robin moved one place per user whoever took it, so each turn
    that began at the client tried last fell to the one after it. The next turn now begins after the client that took
    the user: 150 and 150."""

    async def scenario() -> None:
        ups = [await serve(_named(b"B")), await serve(_named(b"C"))]
        server = await start_server(tls, token)
        public = free_port()
        tasks = [(await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port)}))[1]
                 for port in (free_port(), *map(port_of, ups))]
        try:
            answers = [await _user(public, b"user %d\n" % index) for index in range(60)]
            assert answers.count(b"B") + answers.count(b"C") == 60, answers
            assert abs(answers.count(b"B") - answers.count(b"C")) <= 4, answers  # a probe of the first each 5 s
        finally:
            await stop(*tasks)
            await server.stop()
            for up in ups:
                up.close()

    run(scenario())
