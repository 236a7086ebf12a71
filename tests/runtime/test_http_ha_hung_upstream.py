"""Several HTTP clients serving one name: one whose upstream accepts and never answers (a hung app) is routed around
after a few response timeouts in a row, and comes back once it answers; a long poll answered within the timeout,
however slow, never counts against its client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from helpers.http import LOOPBACK, Stack, http_server_argv, raw_request
from helpers.process import INLETS, terminate, wait_for_text
from helpers.tunnel import free_port
from inlets_py.runtime.server import registry


def _tunnel(folder: Path, upstreams: list[int], *server_flags: str) -> tuple[int, list[subprocess.Popen], Path]:
    """``inlets http server`` and one ``inlets http client`` per upstream port, all serving host ``hung.test``; the
    data port, the processes (server first) and the server's log."""
    (folder / "token").write_text(secrets.token_hex(32) + "\n")
    control, data = free_port(), free_port()
    log = folder / "server.log"
    procs = [subprocess.Popen(INLETS + http_server_argv(folder, control, data, folder / "token", *server_flags),
                              stdout=log.open("w"), stderr=subprocess.STDOUT)]
    try:
        wait_for_text(log, "event=started", 20)
        for index, port in enumerate(upstreams):
            procs.append(subprocess.Popen(INLETS + [
                "http", "client", "--url", f"wss://{LOOPBACK}:{control}", "--token-file", str(folder / "token"),
                "--tls-ca", str(folder / "tls" / "ca.crt"), "--upstream", f"hung.test=http://{LOOPBACK}:{port}"],
                stdout=(folder / f"client{index}.log").open("w"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 20
        while log.read_text().count("event=client_connected") < len(upstreams):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), log.read_text()
            time.sleep(0.05)
    except BaseException:
        for proc in reversed(procs):
            terminate(proc)
        raise
    return data, procs, log


def _app(name: str, served: dict[str, int], poll_for: float = 0.0):
    """An upstream answering each request at once, ``GET /poll`` after ``poll_for`` seconds (a long poll)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if head.startswith(b"GET /poll "):
                    await asyncio.sleep(poll_for)
                else:
                    served[name] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):  # the tunnel's leg closed between requests
            pass
        writer.close()  # else the client's stream stays open, and its SIGTERM waits for it (--drain-timeout)
    return handle


async def _hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads everything, never answers: a hung app (its listener and kernel still work)."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:  # the client reset it: the server gave the request up (504)
        pass
    writer.close()


GET = b"GET / HTTP/1.1\r\nHost: hung.test\r\nConnection: close\r\n\r\n"


@contextlib.contextmanager
def _hung_and_up(folder: Path, served: dict[str, int]) -> Iterator[tuple[int, list[subprocess.Popen], Path]]:
    """A server and two `inlets http client`s for hung.test, the first one's upstream hung (--upstream-timeout 1)."""
    stack = Stack()
    procs: list[subprocess.Popen] = []
    try:
        hung, up = stack.serve(_hung), stack.serve(_app("UP", served))
        data, procs, log = _tunnel(folder, [hung, up], "--upstream-timeout", "1")
        yield data, procs, log
    finally:
        for proc in reversed(procs):
            terminate(proc)
        stack.close()


def test_a_client_whose_upstream_never_answers_is_routed_around(tmp_path) -> None:
    """Found by a review helper: two `inlets http client`s for one host, the first one's upstream accepting and never
    answering (a hung app): every other request waited for --upstream-timeout and got 504 (20 of 40), as the dial
    worked and the client acknowledged it. After ``EJECT_AFTER`` response timeouts in a row that client is tried after
    the other (3 of 40 got 504), and the server says so in one line."""
    served = {"UP": 0}
    with _hung_and_up(tmp_path, served) as (data, procs, log):
        answers = [raw_request(data, GET, timeout=5) for _ in range(40)]
    timeouts = [a for a in answers if a.startswith(b"HTTP/1.1 504 ")]
    assert len(timeouts) + served["UP"] == 40, [a[:80] for a in answers if b" 200 " not in a[:20]]
    assert len(timeouts) <= registry.EJECT_AFTER, f"{len(timeouts)} of 40 requests waited for the hung upstream"
    lines = [line for line in log.read_text().splitlines() if "event=client_ejected" in line]
    assert len(lines) == 1 and "service=http:hung.test" in lines[0], lines


def test_a_hung_client_that_reconnects_stays_routed_around(tmp_path) -> None:
    """Found by a review helper: after the hung client was routed around, a SIGHUP to it (a new session, make-before-
    break) started it clean: 3 more of the next 20 requests waited for --upstream-timeout (504) and it was ejected a
    second time. A reconnection takes its client id's ejection and count of timeouts, as it takes its other marks."""
    with _hung_and_up(tmp_path, {"UP": 0}) as (data, procs, log):
        first = [raw_request(data, GET, timeout=5) for _ in range(2 * registry.EJECT_AFTER)]
        assert sum(a.startswith(b"HTTP/1.1 504 ") for a in first) == registry.EJECT_AFTER, [a[:40] for a in first]
        assert log.read_text().count("event=client_ejected") == 1
        procs[1].send_signal(signal.SIGHUP)  # the hung one's client: a new session, then the old one leaves
        deadline = time.monotonic() + 20
        while log.read_text().count("event=client_disconnected") < 1:
            assert time.monotonic() < deadline and procs[1].poll() is None, log.read_text()
            time.sleep(0.05)
        assert log.read_text().count("event=client_connected") == 3  # both of its sessions were registered
        answers = [raw_request(data, GET, timeout=5) for _ in range(20)]
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:40] for a in answers]
    assert log.read_text().count("event=client_ejected") == 1, log.read_text()


def test_a_hung_client_whose_connection_was_lost_stays_routed_around(tls, token, caplog) -> None:
    """As above, its connection lost instead (a network blip): its session left before the new one came, and the
    new one takes the marks kept for its client id (``Registry._keep_marks``)."""
    caplog.set_level(logging.INFO)
    stack = Stack()
    served = {"UP": 0}
    try:
        server = stack.server(tls, token, upstream_timeout=1.0)  # 0.5 s: a loaded CI run saw a 504 from a live app
        client, _ = stack.client(server, tls, token, [f"hung.test=http://{LOOPBACK}:{stack.serve(_hung)}"])
        stack.client(server, tls, token, [f"hung.test=http://{LOOPBACK}:{stack.serve(_app('UP', served))}"])
        first = [raw_request(server.data_port, GET) for _ in range(2 * registry.EJECT_AFTER)]
        assert sum(a.startswith(b"HTTP/1.1 504 ") for a in first) == registry.EJECT_AFTER, [a[:40] for a in first]
        old = client.session
        stack.loop.call_soon_threadsafe(old.websocket.transport.abort)
        deadline = time.monotonic() + 10
        while client.session in (old, None) or len(server.control.clients) != 2:
            assert time.monotonic() < deadline, "the client did not reconnect"
            time.sleep(0.05)
        answers = [raw_request(server.data_port, GET) for _ in range(20)]
    finally:
        stack.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:40] for a in answers]
    assert sum("event=client_ejected" in r.getMessage() for r in caplog.records) == 1


def test_long_polls_answered_within_the_timeout_keep_their_clients_share(tmp_path) -> None:
    """Long polls held 1.5 s by both clients' upstreams (--upstream-timeout 2), four at a time all along, while 40
    users come: each client serves its share, and neither is ever taken for a hung one."""
    stack = Stack()
    served = {"A": 0, "B": 0}
    procs: list[subprocess.Popen] = []
    stop = threading.Event()
    try:
        ports = [stack.serve(_app(name, served, poll_for=1.5)) for name in ("A", "B")]
        data, procs, log = _tunnel(tmp_path, ports, "--upstream-timeout", "2")

        def poller() -> list[bytes]:
            polls = []
            while not stop.is_set() and len(polls) < 10:
                polls.append(raw_request(data, b"GET /poll HTTP/1.1\r\nHost: hung.test\r\nConnection: close\r\n\r\n"))
            return polls

        with ThreadPoolExecutor(4) as pool:
            pollers = [pool.submit(poller) for _ in range(4)]
            time.sleep(0.5)  # the polls are in flight, acknowledged, unanswered
            answers = []
            for _ in range(40):  # over 4 s: two rounds of polls and more
                answers.append(raw_request(data, GET))
                time.sleep(0.1)
            stop.set()
            polls = [answer for future in pollers for answer in future.result(30)]
    finally:
        stop.set()
        for proc in reversed(procs):
            terminate(proc)
        stack.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers + polls), [a[:80] for a in answers + polls
                                                                          if b" 200 " not in a[:20]]
    assert min(served.values()) >= 15, served  # round robin, the polls taking turns too: 20 and 20 give or take
    assert "event=client_ejected" not in log.read_text()


def test_a_client_routed_around_comes_back_once_its_upstream_answers(tls, token, monkeypatch, caplog) -> None:
    """After ``EJECT_FOR`` one request goes to the client routed around; once its upstream answers, the client takes
    its share again (one line says so), where a client that kept failing would lose it for good."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(registry, "EJECT_FOR", 1.0)
    stack = Stack()
    served = {"A": 0, "B": 0}
    awake = threading.Event()
    try:
        answering = _app("A", served)

        async def hung_then_back(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await (answering if awake.is_set() else _hung)(reader, writer)

        server = stack.server(tls, token, upstream_timeout=1.0)  # 0.5 s: a loaded CI run saw a 504 from a live app
        stack.client(server, tls, token, [f"hung.test=http://{LOOPBACK}:{stack.serve(hung_then_back)}"])
        stack.client(server, tls, token, [f"hung.test=http://{LOOPBACK}:{stack.serve(_app('B', served))}"])
        first = [raw_request(server.data_port, GET) for _ in range(10)]
        assert sum(a.startswith(b"HTTP/1.1 504 ") for a in first) == registry.EJECT_AFTER, [a[:40] for a in first]
        awake.set()
        time.sleep(1.2)  # past EJECT_FOR: the next request finds out
        served.update(A=0, B=0)
        answers = [raw_request(server.data_port, GET) for _ in range(20)]
    finally:
        stack.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:80] for a in answers]
    assert served["A"] >= 9, served
    messages = [r.getMessage() for r in caplog.records]
    assert sum("event=client_ejected" in m for m in messages) == 1, messages
    assert sum("event=client_returned" in m for m in messages) == 1, messages


def test_only_timeouts_in_a_row_route_a_client_around(tls, token, caplog) -> None:
    """An answer between response timeouts starts their count over (``registry.answered``): an app that hangs on one
    path now and then is no hung app. Counted across answers, 2 timeouts, an answer and 2 more routed it around."""
    caplog.set_level(logging.INFO)
    stack = Stack()

    async def hangs_on_one_path(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if head.startswith(b"GET /hang "):
                    await _hung(reader, writer)
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def ejections() -> int:
        return sum("event=client_ejected" in r.getMessage() for r in caplog.records)

    try:
        server = stack.server(tls, token, upstream_timeout=1.0)  # 0.5 s: a loaded CI run saw a 504 from a live app
        stack.client(server, tls, token, [f"hung.test=http://{LOOPBACK}:{stack.serve(hangs_on_one_path)}"])
        hang = GET.replace(b"GET / ", b"GET /hang ")
        statuses = [raw_request(server.data_port, request)[:12] for request in (hang, hang, GET, hang, hang)]
        assert statuses == [b"HTTP/1.1 504", b"HTTP/1.1 504", b"HTTP/1.1 200", b"HTTP/1.1 504", b"HTTP/1.1 504"]
        assert ejections() == 0
        assert raw_request(server.data_port, hang).startswith(b"HTTP/1.1 504 ")  # the third in a row
        assert ejections() == 1
    finally:
        stack.close()


def test_an_ejection_outlives_a_reconnection_later_than_the_other_marks_are_kept(monkeypatch) -> None:
    """A session's marks were kept ``UNREACHABLE_FOR`` (5 s) once it left, its ejection too, though that lasts
    ``EJECT_FOR`` (30 s): a hung client restarted by hand came back clean and took 3 more requests to a 504."""
    clock = [1000.0]
    monkeypatch.setattr(registry.time, "monotonic", lambda: clock[0])

    class Marks:  # what the registry reads of a session
        def __init__(self) -> None:
            self.unreachable: dict = {}
            self.silent: dict = {}
            self.timeouts: dict = {}
            self.ejected: dict = {}

    session = Marks

    table: registry.Registry = registry.Registry()
    hung = session()
    table.add(hung, ["hung.test"], "client-1")
    for _ in range(registry.EJECT_AFTER):
        registry.timed_out(hung, "hung.test")
    assert registry.ejected(hung, "hung.test")
    table.remove(hung)
    clock[0] += registry.UNREACHABLE_FOR + 10  # restarted after a while, well within EJECT_FOR
    back, other = session(), session()
    table.add(back, ["hung.test"], "client-1")
    table.add(other, ["hung.test"], "client-2")
    assert registry.ejected(back, "hung.test") and not registry.ejected(other, "hung.test")
    clock[0] += registry.EJECT_FOR  # past it: one request finds out, and the next client that left is kept 5 s
    table.remove(back)
    clock[0] += registry.UNREACHABLE_FOR + 1
    again = session()
    table.add(again, ["hung.test"], "client-1")
    assert again.ejected == {} and again.timeouts == {}
