"""Hostile input on the HTTP data plane (issue 14): smuggling through Connection, pipelines, protection
that fails open, status codes, absolute-form targets. Real server, tunnel clients and upstreams on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers.faults import rss_kib
from helpers.http import LOOPBACK, Stack, http_server_argv, raw_request, read_answer
from helpers.process import INLETS, ROOT, wait_port
from inlets_py.runtime.cli.lifecycle import run_until_signalled
from inlets_py.runtime.client.dialer import FatalClientError
from inlets_py.runtime.http import guard
from inlets_py.runtime.http.options import HttpOptions
from helpers.tunnel import free_port

ALICE = b"Authorization: Basic " + base64.b64encode(b"alice:pw") + b"\r\n"


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    try:
        app, up = stack.upstream("A")
        catch, up_catch = stack.upstream("CATCH")
        guarded, up_guarded = stack.upstream("GUARDED")
        open_app, up_open = stack.upstream("OPEN")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"app.test=http://{LOOPBACK}:{up}", f"http://{LOOPBACK}:{up_catch}"])
        protect = HttpOptions.build(basic_auth=("alice", "pw"))
        _, leaving = stack.client(server, tls, token, [f"leaving.test=http://{LOOPBACK}:{up_guarded}"], protect)
        stack.client(server, tls, token, [f"shared.test=http://{LOOPBACK}:{up_guarded}"], protect)
        stack.client(server, tls, token, [f"shared.test=http://{LOOPBACK}:{up_open}"])  # the same name, unprotected
        port = _framing_upstream(stack)
        stack.client(server, tls, token, [f"framing.test=http://{LOOPBACK}:{port}"])
        stack.client(server, tls, token, [f"sink.test=http://{LOOPBACK}:{_deaf_upstream(stack)}"])
        yield dict(stack=stack, app=app, catch=catch, guarded=guarded, open=open_app, leaving=leaving,
                   server=server, port=server.data_port, ports=dict(guarded=up_guarded))
    finally:
        stack.close()


def _framing_upstream(stack: Stack) -> int:
    """An upstream whose answers name Content-Length in Connection (kept alive)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Content-Length\r\nContent-Length: 5\r\n\r\n"
                             b"hello")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return stack.serve(handle)


def _deaf_upstream(stack: Stack) -> int:
    """An upstream that reads a request's head and never its body."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(3600)

    return stack.serve(handle)


def seen(app) -> list[str]:
    return [r["target"] for r in app.stats.requests]


def wait_until(predicate, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---------------------------------------------------------------- 1: Connection naming framing or Host

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: admin.internal\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"


@pytest.mark.parametrize("host, connection", [
    (b"app.test", b"content-length"),
    (b"app.test", b"keep-alive, Content-Length"),
    (b"app.test", b"host"),
    (b"app.test", b"transfer-encoding"),
    (b"leaving.test", b"content-length"),  # protected: the connection's first request is authorised
])
def test_connection_naming_framing_or_host_is_refused(env, host, connection):
    before = {name: len(env[name].stats.requests) for name in ("app", "catch", "guarded")}
    with socket.create_connection((LOOPBACK, env["port"]), timeout=10) as sock:
        if host == b"leaving.test":
            sock.sendall(b"GET /first HTTP/1.1\r\nHost: leaving.test\r\n" + ALICE + b"\r\n")
            assert read_answer(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: " + host + b"\r\n" + ALICE + b"Connection: " + connection
                     + b"\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"Connection header may not name" in answer and b"connection: close" in answer.lower()
    after = {name: len(env[name].stats.requests) for name in before}
    first = 1 if host == b"leaving.test" else 0
    assert after == {**before, "guarded": before["guarded"] + first}  # neither POST nor /smuggled reached one


def test_response_naming_content_length_in_connection_keeps_its_framing(env):
    with socket.create_connection((LOOPBACK, env["port"]), timeout=10) as sock:
        for _ in range(2):  # twice on one connection: the user can tell where the first answer ends
            sock.sendall(b"GET / HTTP/1.1\r\nHost: framing.test\r\n\r\n")
            answer = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nhello"), answer


@pytest.mark.parametrize("options", [
    HttpOptions(request_remove=frozenset({b"content-length"})),  # the body reached the upstream as a 2nd request
    HttpOptions(response_remove=frozenset({b"content-length"})),  # kept-alive answers without framing
    HttpOptions(request_add=[(b"Content-Length", b"0")]),  # two conflicting Content-Lengths
    HttpOptions(response_add=[(b"Host", b"x")]),
])
def test_a_client_whose_options_touch_framing_or_host_is_refused(env, tls, token, options):
    """Options that skipped the client's own check (an older or hostile client): the handshake refuses them."""
    with pytest.raises(FatalClientError, match="bad HTTP options: --.*framing"):
        env["stack"].client(env["server"], tls, token, [f"rm.test=http://{LOOPBACK}:1"], options)
    assert not env["server"].registry.sessions_for("http:rm.test")


# ---------------------------------------------------------------- tiny request chunks

TINY_POST = b"POST /up HTTP/1.1\r\nHost: sink.test\r\nTransfer-Encoding: chunked\r\n\r\n"


def _front_of(server, sock: socket.socket):
    """The server's side of the user's ``sock``."""
    port = sock.getsockname()[1]
    wait_until(lambda: any(c.transport and c.transport.get_extra_info("peername")[1] == port
                           for c in list(server.connections)))
    return next(c for c in list(server.connections) if c.transport.get_extra_info("peername")[1] == port)


def test_a_body_of_tiny_chunks_queues_a_few_pieces_not_hundreds_of_thousands(env):
    """1-byte chunks to an upstream that never reads: the front held ~380,000 events (~35 MB) before pausing."""
    block = b"1\r\nx\r\n" * 10_000
    with socket.create_connection((LOOPBACK, env["port"]), timeout=10) as sock:
        sock.sendall(TINY_POST)
        sock.setblocking(False)
        sent, blocked_since, deadline = 0, None, time.monotonic() + 20
        while time.monotonic() < deadline and sent < 64 << 20:
            try:
                sent += sock.send(block[sent % len(block):])  # the stream of chunks goes on where it stopped
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 1:
                    break  # the server stopped reading
                time.sleep(0.01)
        assert blocked_since is not None, "the server never stopped reading"
        front = _front_of(env["server"], sock)
        queued = env["stack"].run(_queue_of(front))
    print(f"sent {sent >> 10} KiB of 1-byte chunks; the front queues {queued[0]} pieces, {queued[1]} bytes")
    assert queued[0] < 100 and queued[1] < 1 << 20, queued


async def _queue_of(front) -> tuple[int, int]:
    return len(front.events), sum(len(getattr(e, "data", b"")) for e in front.events)


def test_reads_of_one_tiny_chunk_each_pause_reading_by_what_they_hold(env):
    """A user trickling one chunk per read: each piece is charged what it holds, not its one byte. The reads are
    handed to the server's connection as its transport would (a socket cannot be made to deliver them one by one)."""
    from inlets_py.runtime.http.front import HIGH_WATER

    async def trickle(front) -> tuple[int, int]:
        for reads in range(1, 20_001):
            front.data_received(b"1\r\nx\r\n")
            if front._paused_reading:
                return reads, len(front.events)
        return reads, len(front.events)

    with socket.create_connection((LOOPBACK, env["port"]), timeout=10) as sock:
        sock.sendall(TINY_POST)
        front = _front_of(env["server"], sock)
        wait_until(lambda: front.exchange is not None)  # the head went upstream; the body waits in the queue
        reads, queued = env["stack"].run(trickle(front))
    assert reads < 20_000 and queued * 64 <= HIGH_WATER, (reads, queued)  # a piece holds ~90 bytes


# ---------------------------------------------------------------- 5: pipelines


def test_thousands_of_pipelined_requests_and_a_partial_head_are_all_answered(env):
    """A read full of small requests ending inside a head is no reason for 431 (the head is small)."""
    count = 6000
    pipeline = b"".join(b"GET /p%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i for i in range(count))
    with socket.create_connection((LOOPBACK, env["port"]), timeout=20) as sock:

        def send() -> None:
            sock.sendall(pipeline + b"GET /last HTTP/1.1\r\nHost: app.te")
            time.sleep(0.3)
            sock.sendall(b"st\r\nConnection: close\r\n\r\n")

        sender = threading.Thread(target=send)
        sender.start()
        answers = b""
        while chunk := sock.recv(1 << 20):
            answers += chunk
        sender.join(10)
    assert answers.count(b"HTTP/1.1 200 ") == count + 1, answers[answers.find(b"HTTP/1.1 4"):][:300]
    assert seen(env["app"])[-1] == "/last"


# ---------------------------------------------------------------- 6: protection belongs to the name


def test_protection_covers_every_client_of_the_name(env):
    """Two clients serve shared.test, one declared basic auth: every request needs it, no upstream sees it."""
    for _ in range(6):  # round robin: both clients' turns
        assert raw_request(env["port"], b"GET / HTTP/1.1\r\nHost: shared.test\r\nConnection: close\r\n\r\n"
                           ).startswith(b"HTTP/1.1 401 ")
    answers = [raw_request(env["port"], b"GET /in HTTP/1.1\r\nHost: shared.test\r\n" + ALICE
                           + b"Connection: close\r\n\r\n") for _ in range(6)]
    upstreams = {json.loads(a.partition(b"\r\n\r\n")[2])["upstream"] for a in answers}
    assert upstreams == {"GUARDED", "OPEN"}
    for app in (env["guarded"], env["open"]):
        assert all("authorization" not in dict(r["headers"]) for r in app.stats.requests)


@pytest.mark.parametrize("first, second", [(b"right", b"wrong"), (b"wrong", b"right")])
def test_two_authorization_headers_on_a_protected_name_are_400_whichever_comes_first(env, first, second):
    """Found by a probe: the first of two credentials decided (right then wrong: 200, wrong then right: 401).
    Authorization is a singleton field (RFC 9110 11.6.2), and nginx refuses a duplicate with 400."""
    wrong = b"Authorization: Basic " + base64.b64encode(b"alice:nope") + b"\r\n"
    lines = {b"right": ALICE, b"wrong": wrong}
    answer = raw_request(env["port"], b"GET /in HTTP/1.1\r\nHost: shared.test\r\n" + lines[first] + lines[second]
                         + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"more than one Authorization header\n"), answer


def test_protected_name_whose_client_left_is_503_never_the_catch_all(env, tls, token):
    stack = env["stack"]
    assert raw_request(env["port"], b"GET / HTTP/1.1\r\nHost: leaving.test\r\n" + ALICE
                       + b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    stack.stop_client(env["leaving"])
    wait_until(lambda: not env["server"].registry.sessions_for("http:leaving.test"))
    before = len(env["catch"].stats.requests)
    with_credential = raw_request(env["port"], b"GET /private HTTP/1.1\r\nHost: leaving.test\r\n" + ALICE
                                  + b"Connection: close\r\n\r\n")
    assert with_credential.startswith(b"HTTP/1.1 503 "), with_credential[:200]
    without = raw_request(env["port"], b"GET /private HTTP/1.1\r\nHost: leaving.test\r\nConnection: close\r\n\r\n")
    assert without.startswith(b"HTTP/1.1 401 ") and b'basic realm="inlets"' in without.lower()
    assert len(env["catch"].stats.requests) == before  # the catch-all never saw them, nor the credential
    # the name's owner comes back: protected as before
    stack.client(env["server"], tls, token, [f"leaving.test=http://{LOOPBACK}:{env['ports']['guarded']}"],
                 HttpOptions.build(basic_auth=("alice", "pw")))
    assert raw_request(env["port"], b"GET / HTTP/1.1\r\nHost: leaving.test\r\nConnection: close\r\n\r\n"
                       ).startswith(b"HTTP/1.1 401 ")
    assert raw_request(env["port"], b"GET / HTTP/1.1\r\nHost: leaving.test\r\n" + ALICE
                       + b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def _protected_catch_all(tls, token) -> tuple:
    """A server whose catch-all two clients serve: one unprotected (upstream OPEN), one with bearer token ``bt`` (its
    upstreams and task returned, to stop it and start it again)."""
    stack = Stack()
    try:
        _, up_open = stack.upstream("OPEN")
        _, up_guarded = stack.upstream("GUARDED")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"http://{LOOPBACK}:{up_open}"])
        upstreams = [f"http://{LOOPBACK}:{up_guarded}"]
        _, task = stack.client(server, tls, token, upstreams, HttpOptions.build(bearer_token="bt"))
    except BaseException:
        stack.close()
        raise
    return stack, server, upstreams, task


GET_OTHER = b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n"
GET_OTHER_BT = b"GET / HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer bt\r\nConnection: close\r\n\r\n"


def _protection_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=protection_" in r.getMessage()]


def test_protection_lifts_a_grace_after_its_last_client_leaves_a_name_an_unprotected_client_serves(
        tls, token, caplog, monkeypatch):
    """Found by a probe: client A served the catch-all unprotected, client B the catch-all with a bearer token; once B
    left, A's public site answered 401 (200 with B's token) until A reconnected, though the README lifts protection
    once a client serves the name without it while none that protects it is connected. Lifted at once, it failed open
    while B restarted (a drain, an upgrade): lifted once B's grace ends, 401 until then."""
    import logging

    monkeypatch.setattr(guard, "PROTECTION_GRACE", 4.0)
    caplog.set_level(logging.INFO, logger="inlets.http")
    stack, server, _, protecting = _protected_catch_all(tls, token)
    try:
        port = server.data_port
        assert raw_request(port, GET_OTHER).startswith(b"HTTP/1.1 401 ")
        left = time.monotonic()
        stack.stop_client(protecting)
        wait_until(lambda: len(server.registry.sessions_for("http:*")) == 1)
        answer = raw_request(port, GET_OTHER)
        assert answer.startswith(b"HTTP/1.1 401 "), (time.monotonic() - left, answer[:300])  # within the grace
        answer = raw_request(port, GET_OTHER_BT)  # the gone client's credential opens it, the open client serves it
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"upstream": "OPEN"' in answer, answer[:300]
        wait_until(lambda: raw_request(port, GET_OTHER).startswith(b"HTTP/1.1 200 "))
        assert time.monotonic() - left >= 4.0
        answer = raw_request(port, GET_OTHER)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"upstream": "OPEN"' in answer, answer[:300]
        said = [line.split(" note=")[0] for line in _protection_lines(caplog)]
        assert [line.split(" client=")[0] for line in said] == ["event=protection_kept", "event=protection_lifted"]
        assert all(line.endswith("names=1 first=http:*") for line in said), said
    finally:
        stack.close()


def test_protection_stays_while_its_last_client_restarts_within_the_grace(tls, token, caplog, monkeypatch):
    """Found by a review: lifted as soon as the protecting client left, a restart (its drain's GOAWAY, then a
    reconnect a second or two later) let requests reach the unprotected client without credentials meanwhile."""
    import logging

    monkeypatch.setattr(guard, "PROTECTION_GRACE", 4.0)
    caplog.set_level(logging.INFO, logger="inlets.http")
    stack, server, upstreams, protecting = _protected_catch_all(tls, token)
    try:
        port = server.data_port
        stack.stop_client(protecting)
        wait_until(lambda: len(server.registry.sessions_for("http:*")) == 1)
        assert raw_request(port, GET_OTHER).startswith(b"HTTP/1.1 401 ")
        stack.client(server, tls, token, upstreams, HttpOptions.build(bearer_token="bt"))  # back, restarted
        deadline = time.monotonic() + 5.0  # past the grace
        while time.monotonic() < deadline:
            assert raw_request(port, GET_OTHER).startswith(b"HTTP/1.1 401 ")
            time.sleep(0.25)
        assert raw_request(port, GET_OTHER_BT).startswith(b"HTTP/1.1 200 ")
        said = _protection_lines(caplog)
        assert not [line for line in said if line.startswith("event=protection_lifted ")], said
    finally:
        stack.close()


# ---------------------------------------------------------------- 8: absolute-form targets


def test_absolute_form_routes_by_its_authority_and_goes_upstream_in_origin_form(env):
    answer = raw_request(env["port"], b"GET http://APP.test:80/x?y=1 HTTP/1.1\r\nHost: other.test\r\n"
                                      b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    request = json.loads(answer.partition(b"\r\n\r\n")[2])
    headers = dict(request["headers"])
    assert request["upstream"] == "A" and request["target"] == "/x?y=1"  # not the catch-all, which Host names
    assert headers["host"] == "APP.test:80" and headers["x-forwarded-host"] == "APP.test:80"
    # nor does Host open a protected name's door for another one
    answer = raw_request(env["port"], b"GET http://leaving.test/private HTTP/1.1\r\nHost: app.test\r\n"
                                      b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    for target in (b"ftp://app.test/", b"http://user@app.test/", b"http:///nohost"):
        answer = raw_request(env["port"], b"GET " + target + b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), (target, answer[:200])


# ---------------------------------------------------------------- the real command, without uvloop

#: ``inlets`` as installed without the ``fast`` extra: ``import uvloop`` fails, so the loop runs inside
#: ``except ImportError`` (the state in which refusals used to become "No module named 'uvloop'").
NO_UVLOOP = [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; from inlets_py.runtime.cli.main import main; main()"]


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-http")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32) + "\n")
    stack = Stack()
    procs: list[subprocess.Popen] = []
    try:
        app, up = stack.upstream("P")
        control, data = free_port(), free_port()
        procs.append(subprocess.Popen(NO_UVLOOP + http_server_argv(tmp, control, data, token, "--drain-timeout", "1"), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w")))
        wait_port(control)
        wait_port(data)  # it listens a moment after the control port: a refusal below ended this fixture under load
        procs.append(subprocess.Popen(INLETS + [
            "http", "client", "--url", f"wss://{LOOPBACK}:{control}", "--token-file", str(token),
            "--tls-ca", str(tmp / "tls" / "ca.crt"), "--upstream", f"app.test=http://{LOOPBACK}:{up}",
            "--drain-timeout", "1"], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(tmp / "client.log", "w")))
        wait_until(lambda: raw_request(data, b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
                                       ).startswith(b"HTTP/1.1 200 "), 20)
        yield dict(server=procs[0], port=data, app=app)
    finally:
        for process in reversed(procs):
            process.terminate()
            process.wait(10)
        stack.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n", 501),
    (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: app.test\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"h" * 70_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
])
def test_refusals_keep_their_status_and_name_no_internals(proc, request_bytes, status):
    """Issue 14 item 7: these got '400 bad HTTP message: No module named 'uvloop''."""
    answer = raw_request(proc["port"], request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    body = answer.partition(b"\r\n\r\n")[2].lower()
    for internal in (b"uvloop", b"module", b"callback", b"error", b"traceback"):
        assert internal not in body, body


def test_the_loop_runs_outside_the_uvloop_import_check(monkeypatch):
    """What is raised in the server's loop carries no ImportError along (nor do its tracebacks in logs)."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    contexts = []

    async def start() -> None:
        pass

    async def main() -> None:
        try:
            raise ValueError("raised in the loop")
        except ValueError as exc:
            contexts.append(exc.__context__)

    run_until_signalled(start, main)
    assert contexts == [None]


def test_a_user_who_pipelines_and_never_reads_is_no_longer_read(proc):
    """8 MiB of pipelined requests, no answer read: the server parses a bounded queue and stops reading."""
    baseline = rss_kib(proc["server"].pid)
    request = b"GET /n HTTP/1.1\r\nHost: app.test\r\n\r\n"
    block = request * (64 * 1024 // len(request))
    sent, blocked_since = 0, None
    with socket.create_connection((LOOPBACK, proc["port"]), timeout=10) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + 20
        while sent < 8 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                sent += sock.send(block)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 2:
                    break  # the server stopped reading
                time.sleep(0.01)
        time.sleep(1)  # what the server read, it has parsed by now
        grown = (rss_kib(proc["server"].pid) - baseline) // 1024
    print(f"sent {sent >> 20} MiB of pipelined requests; server RSS grew by {grown} MiB")
    assert grown < 24, f"server RSS grew by {grown} MiB on {sent >> 20} MiB of unread pipelined requests"
