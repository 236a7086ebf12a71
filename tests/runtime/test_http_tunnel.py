"""HTTP tunnel end to end on loopback: real curl, real TLS tunnel, h11 and websockets upstreams."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import socket
import ssl
import struct
import subprocess
import time

import pytest
from websockets.sync.client import connect as ws_connect

from helpers.http import LOOPBACK, Stack, need, raw_request
from helpers.tunnel import free_port
from inlets_py.runtime.http.options import HttpOptions


@pytest.fixture(scope="module")
def env(tls, token):
    stack = Stack()
    try:
        app, up = stack.upstream("A")
        b1, up_b1 = stack.upstream("B1")
        b2, up_b2 = stack.upstream("B2")
        ws_port = stack.websocket_echo()
        tls_app, tls_port = _tls_upstream(stack, tls)
        closed = _closed_port()
        server = stack.server(tls, token, upstream_timeout=1.0)
        stack.client(server, tls, token, [f"app.test=http://{LOOPBACK}:{up}", f"ws.test=http://{LOOPBACK}:{ws_port}",
                                          f"down.test=http://{LOOPBACK}:{closed}", f"http://{LOOPBACK}:{up}"],
                     HttpOptions.build(request_add=["X-Added: yes"], request_remove=["X-Remove-Me"],
                                       response_add=["X-Resp-Added: 1"], response_remove=["X-Internal"]))
        stack.client(server, tls, token, [f"secret.test=http://{LOOPBACK}:{up}"],
                     HttpOptions.build(basic_auth=("alice", "pw")))
        stack.client(server, tls, token, [f"bearer.test=http://{LOOPBACK}:{up}"],
                     HttpOptions.build(bearer_token="sesame"))
        stack.client(server, tls, token, [f"rewrite.test=http://{LOOPBACK}:{up}"], rewrite_host=True)
        stack.client(server, tls, token, [f"tls.test=https://localhost:{tls_port}"], upstream_ca=tls.ca)
        stack.client(server, tls, token, [f"tlsbad.test=https://localhost:{tls_port}"])  # system store: refused
        stack.client(server, tls, token, [f"tlsany.test=https://localhost:{tls_port}"], upstream_insecure=True)
        stack.client(server, tls, token, [f"balanced.test=http://{LOOPBACK}:{up_b1}"])
        _, b2_task = stack.client(server, tls, token, [f"balanced.test=http://{LOOPBACK}:{up_b2}"])
        yield dict(stack=stack, app=app, b1=b1, b2=b2, b2_task=b2_task, tls_app=tls_app, server=server,
                   port=server.data_port)
    finally:
        stack.close()


def _tls_upstream(stack: Stack, tls):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    return stack.upstream("TLS", ssl=context)


def _closed_port() -> int:
    return free_port(LOOPBACK)


def curl(port: int, path: str, *args: str, host: str = "app.test", timeout: float = 30) -> subprocess.CompletedProcess:
    need("curl")
    argv = ["curl", "-sS", "-m", str(timeout), "-H", f"Host: {host}", *args, f"http://{LOOPBACK}:{port}{path}"]
    return subprocess.run(argv, capture_output=True, timeout=timeout + 10)


def status_of(port: int, path: str, host: str, *args: str) -> tuple[int, bytes]:
    out = curl(port, path, "-o", "-", "-w", "\n%{http_code}", *args, host=host)
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def test_get_carries_forwarding_headers(env):
    out = curl(env["port"], "/hello?q=1", "-H", "X-Forwarded-For: 203.0.113.7", "-H", "X-Forwarded-Proto: https")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    headers = dict(seen["headers"])
    assert seen["upstream"] == "A" and seen["target"] == "/hello?q=1"
    assert headers["host"] == "app.test"  # preserved by default
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the user's claim is replaced: it is no --trusted-proxies one
    assert headers["via"] == "1.1 inlets"
    assert headers["x-forwarded-proto"] == "http"  # the user's claim is replaced
    assert headers["x-forwarded-host"] == "app.test"


def test_chunked_upload_with_curl(env, tmp_path):
    data = os.urandom(8 * 1024 * 1024 + 123)
    need("curl")
    proc = subprocess.run(["curl", "-sS", "-m", "30", "-H", "Host: app.test", "-T", "-",
                           f"http://{LOOPBACK}:{env['port']}/sha256"], input=data, capture_output=True, timeout=40)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    te = dict(env["app"].stats.requests[-1]["headers"]).get("transfer-encoding")
    assert te == "chunked"  # streamed as it came, not buffered into a Content-Length


def test_large_download_with_curl(env, tmp_path):
    size = 64 * 1024 * 1024
    target = tmp_path / "big"
    out = curl(env["port"], f"/big?n={size}", "-o", str(target))
    assert out.returncode == 0, out.stderr
    block = hashlib.sha256(b"block").digest() * 2048
    expected = hashlib.sha256((block * (size // len(block) + 1))[:size]).hexdigest()
    assert target.stat().st_size == size
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected


def test_head_with_curl_and_reuse_after_it(env):
    out = curl(env["port"], "/hello", "-I")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/1.1 200")
    assert b"content-length:" in out.stdout.lower() and out.stdout.endswith(b"\r\n\r\n")
    conn = http.client.HTTPConnection(LOOPBACK, env["port"], timeout=10)
    conn.request("HEAD", "/hello", headers={"Host": "app.test"})
    first = conn.getresponse()
    assert first.status == 200 and first.read() == b"" and int(first.headers["Content-Length"]) > 0
    conn.request("GET", "/hello", headers={"Host": "app.test"})
    assert json.loads(conn.getresponse().read())["method"] == "GET"
    conn.close()


def test_expect_100_continue_with_curl(env, tmp_path):
    body = tmp_path / "body"
    body.write_bytes(os.urandom(300_000))
    before = env["app"].stats.sent_continue
    started = time.monotonic()
    out = curl(env["port"], "/sha256", "-v", "-H", "Expect: 100-continue", "--expect100-timeout", "5",
               "--data-binary", f"@{body}")
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert b"HTTP/1.1 100" in out.stderr  # the upstream's interim answer reached curl
    assert json.loads(out.stdout)["sha256"] == hashlib.sha256(body.read_bytes()).hexdigest()
    assert env["app"].stats.sent_continue == before + 1
    assert elapsed < 4  # curl sent the body on the relayed 100, not after its 5 s expect timeout


def test_keep_alive_reuses_both_legs(env):
    conn = http.client.HTTPConnection(LOOPBACK, env["port"], timeout=10)
    before = env["app"].stats.connections
    for i in range(5):
        conn.request("GET", f"/n{i}", headers={"Host": "app.test"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["target"] == f"/n{i}"
    conn.close()
    assert env["app"].stats.connections == before + 1  # one upstream connection for the five requests
    out = curl(env["port"], "/a", "-v", "-o", "/dev/null", "--next", "-H", "Host: app.test",
               f"http://{LOOPBACK}:{env['port']}/b")
    assert b"Re-using existing connection" in out.stderr or b"Reusing existing" in out.stderr


def test_websocket_app_through_the_tunnel(env):
    sock = socket.create_connection((LOOPBACK, env["port"]), timeout=10)
    with ws_connect(f"ws://ws.test:{env['port']}/chat", sock=sock, open_timeout=10) as ws:
        for message in ("hello", "x" * 100_000, b"\x00\x01binary"):
            ws.send(message)
            assert ws.recv(timeout=10) == message


def test_a_user_who_stops_sending_the_body_gets_408_not_the_upstreams_504(env):
    """The upstream waits for the body and so says nothing: the user stalled (nginx: client_body_timeout)."""
    with socket.create_connection((LOOPBACK, env["port"]), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /stall HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"request body timed out" in data, data
    assert 0.9 < time.monotonic() - started < 3.5


def test_a_user_who_takes_the_100_continue_and_sends_no_body_gets_408_and_no_client_is_ejected(env, caplog):
    """The upstream answered 100 Continue at once: the stall is the user's, yet it was a 504 counted against the
    client, and three such anonymous requests ejected a healthy client for 30 s."""
    from concurrent.futures import ThreadPoolExecutor

    def stall(_: int) -> bytes:
        with socket.create_connection((LOOPBACK, env["port"]), timeout=10) as sock:
            sock.sendall(b"POST /stall HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    with caplog.at_level(logging.INFO, logger="inlets.http"), ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(stall, range(3)))
    for data in answers:
        interim, _, final = data.partition(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), data
        assert final.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"request body timed out" in final, data
    assert "client_ejected" not in caplog.text, caplog.text


def test_no_client_502_and_504(env, tls, token):
    code, body = status_of(env["port"], "/", "down.test")
    assert code == 502 and b"could not reach its upstream" in body
    assert LOOPBACK.encode() not in body and b"refused" not in body  # the upstream's address and error stay private
    started = time.monotonic()
    code, body = status_of(env["port"], "/slow?s=3", "app.test")
    assert code == 504 and b"did not answer" in body
    assert 0.9 < time.monotonic() - started < 2.5
    lonely = env["stack"].server(tls, token)
    code, body = status_of(lonely.data_port, "/", "nobody.test")
    assert code == 503 and b"nobody.test" in body


@pytest.mark.parametrize("raw,status", [
    (b"POST /sha256 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n", 400),
    (b"POST /sha256 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd", 400),
    (b"POST /sha256 HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
     b"0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n", 431),
])
def test_smuggling_and_limits_refused_before_the_upstream(env, raw, status):
    before = len(env["app"].stats.requests)
    answer = raw_request(env["port"], raw)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"connection: close" in answer.lower()
    assert len(env["app"].stats.requests) == before  # nothing reached the app


def test_basic_auth_and_bearer_protection(env):
    code, _ = status_of(env["port"], "/", "secret.test")
    assert code == 401
    out = curl(env["port"], "/", "-i", host="secret.test")
    assert b'www-authenticate: basic realm="inlets"' in out.stdout.lower()
    assert status_of(env["port"], "/", "secret.test", "-u", "alice:wrong")[0] == 401
    code, body = status_of(env["port"], "/", "secret.test", "-u", "alice:pw")
    assert code == 200 and "authorization" not in dict(json.loads(body)["headers"])  # not passed upstream
    assert status_of(env["port"], "/", "bearer.test", "-H", "Authorization: Bearer nope")[0] == 401
    assert status_of(env["port"], "/", "bearer.test", "-H", "Authorization: Bearer sesame")[0] == 200
    assert status_of(env["port"], "/", "app.test", "-u", "any:thing")[0] == 200  # other clients unaffected


def test_header_rewrites_and_host_rewrite(env):
    out = curl(env["port"], "/", "-i", "-H", "X-Remove-Me: 1", "-H", "X-Keep: 2")
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    headers = dict(json.loads(body)["headers"])
    assert headers["x-added"] == "yes" and "x-remove-me" not in headers and headers["x-keep"] == "2"
    assert b"x-resp-added: 1" in head.lower() and b"x-upstream: a" in head.lower()
    seen = dict(json.loads(curl(env["port"], "/", host="rewrite.test").stdout)["headers"])
    assert seen["host"].startswith(f"{LOOPBACK}:") and seen["x-forwarded-host"] == "rewrite.test"


def test_https_upstream_verified_by_default(env, caplog):
    caplog.set_level(logging.INFO, logger="inlets.http")
    code, body = status_of(env["port"], "/", "tls.test")
    assert code == 200 and json.loads(body)["upstream"] == "TLS"
    code, body = status_of(env["port"], "/", "tlsbad.test")
    assert code == 502 and b"localhost" not in body and b"verif" not in body.lower()  # said in the client's log
    assert any("TLS verification failed" in r.getMessage() for r in caplog.records if r.name == "inlets.http")
    code, body = status_of(env["port"], "/", "tlsany.test")  # --upstream-insecure
    assert code == 200 and json.loads(body)["upstream"] == "TLS"


def test_http10_client_gets_dechunked_body(env):
    answer = raw_request(env["port"], b"GET /chunked HTTP/1.0\r\nHost: app.test\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert body == b"part0;part1;part2;"


def test_two_clients_balanced_then_failover(env):
    def who() -> str:
        code, body = status_of(env["port"], "/", "balanced.test")
        assert code == 200
        return json.loads(body)["upstream"]

    seen = [who() for _ in range(8)]
    assert seen.count("B1") >= 3 and seen.count("B2") >= 3, seen
    env["stack"].stop_client(env["b2_task"])
    time.sleep(0.2)
    assert [who() for _ in range(6)] == ["B1"] * 6


def test_idle_keep_alive_connection_is_closed(env, tls, token):
    server = env["stack"].server(tls, token, idle_timeout=0.5)
    with socket.create_connection((LOOPBACK, server.data_port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server, not by the timeout of this socket
        assert 0.4 < time.monotonic() - started < 2.0


def test_client_resets_a_stream_for_a_host_it_did_not_advertise(env):
    """The server cannot make a client dial what it did not advertise."""
    from inlets_py.runtime.http.leg import Leg, LegFailed

    server = env["server"]

    async def attempt() -> str:
        session = server.registry.sessions_for("http:app.test")[0]
        leg = Leg(session, "http:not-advertised.test")
        try:
            await leg.next_event()
        except LegFailed as exc:
            return exc.detail  # what the client said; the user's 502 names no upstream
        return "no reset"

    assert "not served by this client" in env["stack"].run(attempt(), 10)


def test_pipelined_requests_answered_in_order(env):
    requests = b"".join(b"GET /p%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i for i in range(3))
    with socket.create_connection((LOOPBACK, env["port"]), timeout=10) as sock:
        sock.sendall(requests + b"GET /last HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 4
    positions = [answer.find(b'"target": "%s"' % target) for target in (b"/p0", b"/p1", b"/p2", b"/last")]
    assert -1 not in positions and positions == sorted(positions)


def test_upstream_speaking_garbage_is_502(env, tls, token):
    async def garbage(reader, writer):
        await reader.read(1024)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n")
        await writer.drain()
        writer.close()

    port = env["stack"].serve(garbage)
    server = env["stack"].server(tls, token)
    env["stack"].client(server, tls, token, [f"http://{LOOPBACK}:{port}"])
    code, body = status_of(server.data_port, "/", "anything.test")
    assert code == 502 and b"bad" in body.lower()


def test_reused_stream_closed_before_answering_is_retried_once(env):
    """An upstream that closes a kept-alive connection as the next request arrives (its idle timeout)."""
    conn = http.client.HTTPConnection(LOOPBACK, env["port"], timeout=10)
    before = env["app"].stats.connections
    conn.request("GET", "/arm-drop", headers={"Host": "app.test"})
    assert conn.getresponse().read()
    conn.request("GET", "/after", headers={"Host": "app.test"})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["target"] == "/after"
    conn.close()
    assert env["app"].stats.connections == before + 2  # the second on a fresh stream


def _resetting_upstream(stack: Stack) -> tuple[int, list[bytes]]:
    """An upstream that answers a connection's first request, then resets it (no FIN first) as the next one arrives:
    what a server does that closes an idle kept-alive connection with that request unread in its socket (nginx's
    keepalive_timeout firing as it lands). Its port, and the requests it answered."""
    answered: list[bytes] = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        answered.append(head.split(b" ")[1])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if await reader.read(1):  # the next request arrived: reset, unanswered
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    return stack.serve(handle), answered


@pytest.mark.parametrize("method, body, status", [("GET", None, 200), ("POST", None, 502), ("PUT", b"new", 200)])
def test_reused_stream_reset_before_answering_is_retried_once_if_idempotent(env, tls, token, method, body, status):
    """A kept-alive upstream connection reset as the next request arrives: a GET goes once more on a fresh one,
    as nginx sends it (before: 502 for 15 of 60 GETs where nginx gave none); a POST, which the upstream may
    have acted on, gets 502 (RFC 9110 9.2.2). A PUT is idempotent too, and its body is kept with it (up to
    routing.KEPT_REQUEST) until the answer begins: it goes again, body and all, as nginx sends it (it got 502)."""
    port, answered = _resetting_upstream(env["stack"])
    server = env["stack"].server(tls, token)
    env["stack"].client(server, tls, token, [f"reset.test=http://{LOOPBACK}:{port}"])
    conn = http.client.HTTPConnection(LOOPBACK, server.data_port, timeout=10)
    conn.request(method, "/first", headers={"Host": "reset.test"})
    assert conn.getresponse().read() == b"ok"
    conn.request(method, "/second", body=body, headers={"Host": "reset.test"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == status
    assert answered == ([b"/first", b"/second"] if status == 200 else [b"/first"])


def _busy_users(app, port: int, host: str, count: int, seconds: int) -> list[socket.socket]:
    """``count`` users whose requests take ``seconds``, returned once the upstream has them all."""
    users = []
    for _ in range(count):
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        sock.sendall(b"GET /slow?d=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (seconds, host.encode()))
        users.append(sock)
    deadline = time.monotonic() + 5
    while sum(r["target"].startswith("/slow") for r in app.stats.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return users


def test_a_stream_the_client_refuses_for_its_limit_is_tried_again_once_one_closes(env, tls, token):
    """A client at its --max-streams refuses the next stream before any upstream sees the request: while
    every stream carries a request, the server sends it again once a user who left has let go of a stream
    (before: an immediate 502), and answers 503 only when none does: overload, as at the server's own limit (it was
    a 502, a bad gateway, where the README and RFC 9110 15.6.4 say 503; found by a probe)."""
    app, up = env["stack"].upstream("LIMITED")
    server = env["stack"].server(tls, token)
    env["stack"].client(server, tls, token, [f"http://{LOOPBACK}:{up}"], max_streams=2)
    holders = _busy_users(app, server.data_port, "limited.test", 2, 4)  # both streams busy, nothing to give up
    started = time.monotonic()
    code, body = status_of(server.data_port, "/third", "limited.test")  # nobody leaves: refused each time
    assert code == 503 and b"is at its stream limit (its --max-streams)" in body, (code, body)
    assert time.monotonic() - started >= 0.7
    third = http.client.HTTPConnection(LOOPBACK, server.data_port, timeout=10)
    third.request("GET", "/third", headers={"Host": "limited.test"})
    time.sleep(0.05)
    gone = holders.pop()  # one user leaves (a reset): its stream closes, and the waiting request gets it
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()
    response = third.getresponse()
    assert response.status == 200 and json.loads(response.read())["target"] == "/third"
    assert [r["target"] for r in app.stats.requests].count("/third") == 1  # refused tries never reached it
    third.close()
    holders[0].close()


def test_the_servers_max_client_streams_gives_idle_users_streams_up_then_answers_503(env, tls, token):
    """--max-client-streams bounded only the streams a client opened, never the server's own (found by a review
    helper). At the limit, users between requests give theirs up, as at the client's --max-streams; with every
    stream carrying a request, the next user gets a 503 that says why."""
    app, up = env["stack"].upstream("CAPPED")
    server = env["stack"].server(tls, token, max_client_streams=2)
    env["stack"].client(server, tls, token, [f"http://{LOOPBACK}:{up}"])
    idle = []
    for name in ("/a", "/b"):  # two kept-alive users, each holding a stream between requests
        conn = http.client.HTTPConnection(LOOPBACK, server.data_port, timeout=10)
        conn.request("GET", name, headers={"Host": "capped.test"})
        assert conn.getresponse().read()
        idle.append(conn)
    # two users whose requests take 3 s get the idle users' streams, which then all carry a request
    busy = _busy_users(app, server.data_port, "capped.test", 2, 3)
    assert sum(r["target"].startswith("/slow") for r in app.stats.requests) == 2
    code, body = status_of(server.data_port, "/d", "capped.test")
    assert code == 503 and b"is at its stream limit (limit of 2 open streams)" in body, (code, body)
    assert "/d" not in [r["target"] for r in app.stats.requests]
    for conn in idle + busy:
        conn.close()


def test_users_between_requests_do_not_keep_a_new_user_from_a_stream(env, tls, token):
    """Kept-alive users keep their streams between requests; a client at its --max-streams refuses the
    next user's: the users idle longest give theirs up at once (before: every new user got a 502 after
    0.8 s while as many idle users as --max-streams stayed connected), and get new ones when they ask again."""
    app, up = env["stack"].upstream("IDLE")
    server = env["stack"].server(tls, token)
    env["stack"].client(server, tls, token, [f"http://{LOOPBACK}:{up}"], max_streams=2)
    holders = []
    for name in ("/a", "/b"):  # two users keep their connections open, idle, each with its stream
        conn = http.client.HTTPConnection(LOOPBACK, server.data_port, timeout=10)
        conn.request("GET", name, headers={"Host": "idle.test"})
        assert conn.getresponse().read()
        holders.append(conn)
    for name in ("/c", "/d", "/e"):
        started = time.monotonic()
        code, body = status_of(server.data_port, name, "idle.test")
        assert code == 200 and json.loads(body)["target"] == name
        assert time.monotonic() - started < 0.5, "the request waited for a stream that an idle user held"
    for conn, name in zip(holders, ("/a2", "/b2")):  # the idle users carry on, on new streams
        conn.request("GET", name, headers={"Host": "idle.test"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["target"] == name
        conn.close()
    assert [r["target"] for r in app.stats.requests] == ["/a", "/b", "/c", "/d", "/e", "/a2", "/b2"]


def test_an_https_upstream_closing_its_connection_logs_no_asyncio_warning(tls, token, caplog):
    """Each time an https:// upstream closed a connection (Connection: close, its idle timeout), the client's log got
    'returning true from eof_received() has no effect when using ssl' from asyncio (and uvloop): TLS has no half-close."""
    body = b"x" * 100_000

    async def close_after_answering(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    stack = Stack()
    try:
        port = stack.serve(close_after_answering, context)
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"https://localhost:{port}"], upstream_ca=tls.ca)
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                answer = raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(body)
            time.sleep(0.2)  # the upstream's close reaches the client
    finally:
        stack.close()
    assert "eof_received" not in caplog.text


def test_a_client_draining_does_not_wait_for_kept_alive_users_between_requests(tls, token):
    """SIGTERM drains a client: requests in flight finish. A user's kept-alive connection between two requests held its
    stream open, so the drain always took the whole --drain-timeout (30 s) and ended in a drain_timeout warning.
    Now those idle streams end at the client's GOAWAY, and the user's next request goes to another client."""
    stack = Stack()
    try:
        apps = {name: stack.upstream(name) for name in ("X", "Y")}
        server = stack.server(tls, token)
        clients = {name: stack.client(server, tls, token, [f"http://{LOOPBACK}:{port}"])[0]
                   for name, (_, port) in apps.items()}
        with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as user:
            reader = user.makefile("rb")

            def get() -> str:
                user.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                assert reader.readline().startswith(b"HTTP/1.1 200")
                length = 0
                while (line := reader.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                return json.loads(reader.read(length))["upstream"]

            served = get()
            client = clients[served]
            client.config.drain_timeout = 10.0
            started = time.monotonic()
            stack.run(client.shutdown(), 20)
            assert time.monotonic() - started < 3, "the drain waited for a user between requests"
            assert get() != served  # the same user connection, now through the other client
    finally:
        stack.close()


def test_a_websocket_survives_its_clients_rotation(tls, token):
    """The idle streams a draining client's server ends are kept-alive users' between requests, never an upgraded
    connection's: a WebSocket goes on on the old connection while the client reconnects (SIGHUP)."""
    stack = Stack()
    try:
        ws_port = stack.websocket_echo()
        server = stack.server(tls, token)
        client, _ = stack.client(server, tls, token, [f"ws.test=http://{LOOPBACK}:{ws_port}"])
        sock = socket.create_connection((LOOPBACK, server.data_port), timeout=10)
        with ws_connect(f"ws://ws.test:{server.data_port}/", sock=sock, open_timeout=10) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            stack.run(client.rotate(), 10)
            time.sleep(0.2)  # the old connection's GOAWAY reached the server
            ws.send("after")
            assert ws.recv(timeout=10) == "after"
    finally:
        stack.close()
