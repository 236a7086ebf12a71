"""`GET /metrics` of both servers: scraped over TLS with the token, parsed with prometheus-client's parser."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http import HTTPStatus

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.http import LOOPBACK, Stack, need, raw_request, received
from helpers.tunnel import echo_server, port_of, run, start_client, start_server, stop
from inlets_py.runtime.client.tcp_upstreams import Upstream


def scrape(control: tuple, tls, token: str | None) -> tuple[int, str]:
    host, port = control[:2]
    context = ssl.create_default_context(cafile=str(tls.ca))
    request = urllib.request.Request(f"https://{host}:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} from the exposition text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def key(name: str, **labels: str) -> tuple:
    return name, tuple(sorted(labels.items()))


def test_http_metrics_match_the_requests_made(tls, token):
    need("curl")
    stack = Stack()
    try:
        _, up = stack.upstream("M")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"m.test=http://{LOOPBACK}:{up}"])
        port, control = server.data_port, server.control.addresses[0]

        def curl(host: str, path: str, *args: str) -> None:
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "10", "-H", f"Host: {host}", *args,
                            f"http://{LOOPBACK}:{port}{path}"], check=True, timeout=20)

        for _ in range(3):
            curl("m.test", "/hello")
        curl("M.Test:8080", "/status/404")  # same host: case and port do not matter
        curl("m.test", "/hello", "-I")
        curl("m.test", "/hello", "-X", "PROPFIND")  # a method outside the standard set
        for i in range(2):
            curl(f"random-{i}.example", "/")  # 503, and no label for a name nobody advertised
        assert raw_request(port, b"GET / HTTP/1.1\r\nHost: m.test\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")

        assert scrape(control, tls, None)[0] == 401
        assert scrape(control, tls, "wrong-token")[0] == 401
        status, text = scrape(control, tls, token)
        assert status == 200
        found = samples(text)
        total = "http_dataplane_requests_total"
        assert found[key(total, code="200", host="m.test", method="GET")] == 3
        assert found[key(total, code="404", host="m.test", method="GET")] == 1
        assert found[key(total, code="200", host="m.test", method="HEAD")] == 1
        assert found[key(total, code="200", host="m.test", method="_other")] == 1
        assert found[key(total, code="503", host="_other", method="GET")] == 2
        assert found[key(total, code="400", host="_other", method="_other")] == 1
        assert sum(v for (name, _), v in found.items() if name == total) == 9
        assert found[key("http_dataplane_request_duration_seconds_count", code="200", host="m.test", method="GET")] == 3
        buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in found.items()
                         if name == "http_dataplane_request_duration_seconds_bucket"
                         and dict(labels)["code"] == "200" and dict(labels)["method"] == "GET")
        assert buckets[-1] == (float("inf"), 3) and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
        assert 0 < found[key("http_dataplane_request_duration_seconds_sum", code="200", host="m.test",
                             method="GET")] < 3
        assert not any("random" in str(labels) for _, labels in found)  # bounded label values
        assert found[key("http_controlplane_connected_gauge")] == 1
        control_total = "http_controlplane_requests_total"
        assert found[key(control_total, code="101", path="/connect")] == 1
        assert found[key(control_total, code="401", path="/metrics")] == 2
    finally:
        stack.close()


def test_status_codes_an_upstream_makes_up_do_not_each_become_a_label(tls, token):
    """An upstream may answer any three digits (an app echoing ``/status/N``): 800 codes were 800 series
    per host and method, a 1.5 MB scrape; codes outside the registry count as ``_other``."""

    async def any_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            writer.write(b"HTTP/1.1 %s Made Up\r\nContent-Length: 0\r\n\r\n" % line.split()[1][1:])
            await writer.drain()
        writer.close()

    stack = Stack()
    try:
        up = stack.serve(any_status)
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"m.test=http://{LOOPBACK}:{up}"])
        with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as sock:
            for code in range(200, 1000):
                sock.sendall(b"GET /%d HTTP/1.1\r\nHost: m.test\r\n\r\n" % code)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += received(sock, answer)
                assert answer.startswith(b"HTTP/1.1 %d " % code), answer
        found = samples(scrape(server.control.addresses[0], tls, token)[1])
        codes = {dict(labels)["code"]: value for (name, labels), value in found.items()
                 if name == "http_dataplane_requests_total"}
        own = {int(code) for code in HTTPStatus if code >= 200} | {499}  # nginx's "client closed request" too
        assert codes["200"] == codes["418"] == codes["499"] == codes["511"] == 1
        assert codes["_other"] == 800 - len(own)
        assert len(codes) == 1 + len(own)
    finally:
        stack.close()


def _hosts(server, tls, token) -> dict[str, float]:
    found = samples(scrape(server.control.addresses[0], tls, token)[1])
    counts: dict[str, float] = {}
    for (name, labels), value in found.items():
        if name == "http_dataplane_requests_total":
            host = dict(labels)["host"]
            counts[host] = counts.get(host, 0) + value
    return counts


def _until_no_clients(server) -> None:
    for _ in range(100):  # bounded: 100 x 50 ms
        if not server.control.clients:
            return
        time.sleep(0.05)
    raise AssertionError("the client is still connected")


def test_a_protected_name_no_client_serves_any_more_is_no_label_past_the_grace(tls, token):
    """A protected name outlives its clients (401, then 503): its requests made series under the name again
    after the last client left, which forget_host had just dropped and nothing would drop again. Within the
    grace they count under the name; past it under _other, and the name's series are gone."""
    from inlets_py.runtime.http.options import HttpOptions

    stack = Stack()
    try:
        _, up = stack.upstream("G")
        server = stack.server(tls, token)
        server.metrics.grace = 60.0  # the test shortens it below, once the first request has counted
        _, task = stack.client(server, tls, token, [f"gone.test=http://{LOOPBACK}:{up}"],
                               HttpOptions.build(basic_auth=("alice", "pw")))
        stack.stop_client(task)
        _until_no_clients(server)
        answer = raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: gone.test\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401 "), answer  # still protected
        assert _hosts(server, tls, token) == {"gone.test": 1}  # within the grace
        server.metrics.grace = 0.0  # the next sweep (at most 1 s away) finds it past
        for _ in range(100):  # bounded: 100 x 50 ms
            if "gone.test" not in _hosts(server, tls, token):
                break
            time.sleep(0.05)
        answer = raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: gone.test\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401 "), answer
        assert _hosts(server, tls, token) == {"_other": 1}
    finally:
        stack.close()


def test_a_client_serving_a_host_named_other_takes_no_counts_with_it_when_it_leaves(tls, token):
    """Found by a probe: a client advertising the host _other, the label of every unadvertised host, left; past the
    grace forget_host dropped every _other series: counters that went backwards, which any token holder could do."""
    stack = Stack()
    try:
        _, up = stack.upstream("O")
        server = stack.server(tls, token)
        server.metrics.grace = 0.0  # the sweep (at most 1 s away) forgets a host at once
        for n in range(3):
            raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: nobody%d.test\r\nConnection: close\r\n\r\n" % n)
        assert _hosts(server, tls, token) == {"_other": 3}
        _, task = stack.client(server, tls, token, [f"_other=http://{LOOPBACK}:{up}", f"seen.test=http://{LOOPBACK}:{up}"])
        raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: seen.test\r\nConnection: close\r\n\r\n")
        stack.stop_client(task)
        _until_no_clients(server)
        for _ in range(200):  # bounded: 200 x 50 ms; seen.test's series gone is the sweep's proof it ran
            if "seen.test" not in _hosts(server, tls, token):
                break
            time.sleep(0.05)
        assert _hosts(server, tls, token) == {"_other": 3}
    finally:
        stack.close()


def test_a_host_whose_client_reconnects_keeps_its_counters_and_its_gap_is_counted_under_it(tls, token):
    """The series of a host went the moment its last client left: a client's restart reset its counters, and the
    503s of the gap counted under _other."""
    stack = Stack()
    try:
        _, up = stack.upstream("R")
        server = stack.server(tls, token)
        upstreams = [f"back.test=http://{LOOPBACK}:{up}"]
        _, task = stack.client(server, tls, token, upstreams)
        request = b"GET / HTTP/1.1\r\nHost: back.test\r\nConnection: close\r\n\r\n"  # read to the close: no 5 s wait each
        for _ in range(3):
            assert raw_request(server.data_port, request).startswith(b"HTTP/1.1 200 ")
        stack.stop_client(task)
        _until_no_clients(server)
        assert raw_request(server.data_port, request).startswith(b"HTTP/1.1 503 ")
        stack.client(server, tls, token, upstreams)
        for _ in range(2):
            assert raw_request(server.data_port, request).startswith(b"HTTP/1.1 200 ")
        found = samples(scrape(server.control.addresses[0], tls, token)[1])
        codes = {dict(labels)["code"]: value for (name, labels), value in found.items()
                 if name == "http_dataplane_requests_total" and dict(labels)["host"] == "back.test"}
        assert codes == {"200": 5, "503": 1}, codes
        assert not server.metrics.unserved
    finally:
        stack.close()


def test_tcp_metrics_count_connections_and_bytes(tls, token):
    async def scenario() -> None:
        echo = await echo_server()
        server = await start_server(tls, token)
        url = f"wss://127.0.0.1:{server.control.addresses[0][1]}"
        public = port_of(echo) + 1 if port_of(echo) < 65000 else port_of(echo) - 1000
        from helpers.tunnel import free_port

        public = free_port()
        client, task = await start_client(url, token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
        try:
            conns = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", public)
                writer.write(b"x" * 1000)
                assert await reader.readexactly(1000) == b"x" * 1000
                conns.append(writer)
            conns[0].close()
            await conns[0].wait_closed()
            await asyncio.sleep(0.2)
            status, text = await asyncio.to_thread(scrape, server.control.addresses[0], tls, token)
            assert status == 200
            found = samples(text)
            p = str(public)
            assert found[key("tcp_dataplane_connections_total", port=p)] == 2
            assert found[key("tcp_dataplane_connections_gauge", port=p)] == 1
            assert found[key("tcp_dataplane_bytes_total", port=p, direction="in")] == 2000
            assert found[key("tcp_dataplane_bytes_total", port=p, direction="out")] == 2000
            assert found[key("tcp_controlplane_connected_gauge")] == 1
            assert (await asyncio.to_thread(scrape, server.control.addresses[0], tls, None))[0] == 401
            conns[1].close()
        finally:
            await stop(task)
            await server.stop()
            echo.close()

    run(scenario(), 30)


def test_tcp_users_the_client_refuses_for_its_upstream_down_are_counted_refused(tls, token):
    """A client whose upstream is down resets each user: that must show as a refusal, not as carried connections."""
    async def scenario() -> None:
        from helpers.tunnel import free_port

        server = await start_server(tls, token)
        public, dead = free_port(), free_port()
        client, task = await start_client(f"wss://127.0.0.1:{server.control.addresses[0][1]}", token, tls,
                                          {public: Upstream("127.0.0.1", dead)})
        try:
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", public)
                with pytest.raises(ConnectionResetError):
                    await reader.read()
                writer.close()
            p, found = str(public), {}
            for _ in range(50):  # the reset and its count arrive together; the scrape may come first
                found = samples((await asyncio.to_thread(scrape, server.control.addresses[0], tls, token))[1])
                if found.get(key("tcp_dataplane_refused_total", port=p, reason="upstream_failed")) == 2:
                    break
                await asyncio.sleep(0.02)
            assert found.get(key("tcp_dataplane_refused_total", port=p, reason="upstream_failed")) == 2
            assert found[key("tcp_dataplane_connections_total", port=p)] == 2  # they reached the client
        finally:
            await stop(task)
            await server.stop()

    run(scenario(), 30)


@pytest.mark.parametrize("path", ["/metrics?x=1", "/nothing-here"])
def test_control_plane_paths_are_bounded_labels(tls, token, path):
    stack = Stack()
    try:
        server = stack.server(tls, token)
        host, port = server.control.addresses[0][:2]
        context = ssl.create_default_context(cafile=str(tls.ca))
        request = urllib.request.Request(f"https://{host}:{port}{path}", headers={"Authorization": f"Bearer {token}"})
        try:
            urllib.request.urlopen(request, context=context, timeout=10).read()
        except urllib.error.HTTPError:
            pass
        found = samples(scrape(server.control.addresses[0], tls, token)[1])
        expected = ("200", "/metrics") if path.startswith("/metrics") else ("404", "_other")
        assert found[key("http_controlplane_requests_total", code=expected[0], path=expected[1])] == 1
    finally:
        stack.close()


def test_every_route_the_control_port_serves_is_its_own_label(tls, token):
    """/status was counted as _other: the label set was a list of its own that missed it, not the routes served."""

    async def scenario() -> None:
        server = await start_server(tls, token)
        try:
            control = server.control.addresses[0]
            for path in ("/status", "/status", "/status", "/healthz"):
                request = urllib.request.Request(f"https://{control[0]}:{control[1]}{path}",
                                                 headers={"Authorization": f"Bearer {token}"})
                context = ssl.create_default_context(cafile=str(tls.ca))
                await asyncio.to_thread(lambda: urllib.request.urlopen(request, context=context, timeout=10).read())
            found = samples((await asyncio.to_thread(scrape, control, tls, token))[1])
        finally:
            await server.stop()
        assert found[key("tcp_controlplane_requests_total", code="200", path="/status")] == 3
        assert found[key("tcp_controlplane_requests_total", code="200", path="/healthz")] == 1
        assert key("tcp_controlplane_requests_total", code="200", path="_other") not in found

    run(scenario(), 30)


def test_the_bearer_scheme_is_taken_in_any_case_and_the_token_still_exactly(tls, token):
    """``Authorization: bearer TOKEN`` got a 401 from the control port (found by a review helper) while the HTTP
    data plane's --bearer-token took it: the scheme is case-insensitive (RFC 9110 11.1), the token is not."""

    async def scenario() -> dict[str, int]:
        server = await start_server(tls, token)
        codes: dict[str, int] = {}
        try:
            control = server.control.addresses[0]
            context = ssl.create_default_context(cafile=str(tls.ca))
            for value in (f"bearer {token}", f"BEARER {token}", f"Bearer {token}", f"Bearer {token.upper()}",
                          f"Basic {token}", f"Bearer{token}"):
                request = urllib.request.Request(f"https://{control[0]}:{control[1]}/status",
                                                 headers={"Authorization": value})
                try:
                    await asyncio.to_thread(lambda: urllib.request.urlopen(request, context=context, timeout=10).read())
                    codes[value.replace(token, "T").replace(token.upper(), "UPPER")] = 200
                except urllib.error.HTTPError as exc:
                    codes[value.replace(token, "T").replace(token.upper(), "UPPER")] = exc.code
        finally:
            await server.stop()
        return codes

    assert token != token.upper()
    assert run(scenario(), 30) == {"bearer T": 200, "BEARER T": 200, "Bearer T": 200, "Bearer UPPER": 401,
                                   "Basic T": 401, "BearerT": 401}


def test_a_request_too_large_to_parse_is_logged_and_counted(tls, token, caplog):
    """Headers over 8 KiB got the websockets library's own 431 before any hook of ours: no log line, no
    *_controlplane_requests_total sample (a security review helper's finding). An over-long request line alike (414)."""

    async def scenario() -> tuple[bytes, bytes, dict]:
        server = await start_server(tls, token)
        try:
            control = server.control.addresses[0]
            big = await asyncio.to_thread(_tls_exchange, control, tls, b"GET /status HTTP/1.1\r\nHost: x\r\n"
                                          b"Authorization: Bearer " + b"a" * 9000 + b"\r\n\r\n")
            long = await asyncio.to_thread(_tls_exchange, control, tls, b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\n\r\n")
            for _ in range(100):  # the hook runs once the library has closed the connection
                found = samples((await asyncio.to_thread(scrape, control, tls, token))[1])
                if key("tcp_controlplane_requests_total", code="414", path="_other") in found:
                    break
                await asyncio.sleep(0.02)
        finally:
            await server.stop()
        return big, long, found

    with caplog.at_level(logging.WARNING, logger="inlets"):
        big, long, found = run(scenario(), 30)
    assert big.startswith(b"HTTP/1.1 431 ") and long.startswith(b"HTTP/1.1 414 "), (big[:40], long[:40])
    assert found[key("tcp_controlplane_requests_total", code="431", path="_other")] == 1
    assert found[key("tcp_controlplane_requests_total", code="414", path="_other")] == 1
    assert "event=request_refused" in caplog.text and "status=431 reason=\"header fields too large\"" in caplog.text
    assert "a" * 100 not in caplog.text and "remote=127.0.0.1:" in caplog.text  # the header is not logged


def _tls_exchange(control: tuple, tls, request: bytes) -> bytes:
    """Send one raw request to the control port over TLS; everything until the server closes."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    with socket.create_connection(control[:2], timeout=10) as raw, context.wrap_socket(raw, server_hostname=control[0]) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_head_is_answered_without_a_body_and_other_methods_are_not_allowed(tls, token):
    """HEAD /healthz got its GET's body, which a keep-alive client reads as the start of the next answer;
    POST /metrics with the token was answered as a GET."""
    stack = Stack()
    try:
        server = stack.server(tls, token)
        control = server.control.addresses[0]
        head = _tls_exchange(control, tls, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Length: 3\r\n" in head
        assert head.endswith(b"\r\n\r\n"), head  # no body
        auth = f"Authorization: Bearer {token}\r\n".encode()
        head = _tls_exchange(control, tls, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n"), head
        posted = _tls_exchange(control, tls, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + auth + b"\r\n")
        assert posted.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and b"\r\nAllow: GET, HEAD\r\n" in posted, posted
        assert posted.endswith(b"method not allowed: /metrics answers GET and HEAD\n")
        unknown = _tls_exchange(control, tls, b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert unknown.startswith(b"HTTP/1.1 404 Not Found\r\n"), unknown
    finally:
        stack.close()


def test_a_connect_the_websocket_library_refuses_counts_by_its_real_status(tls, token):
    """A /connect with the right token but no Upgrade is answered 426 by websockets; it was counted as a 101,
    a client connection that never happened."""
    stack = Stack()
    try:
        server = stack.server(tls, token)
        host, port = server.control.addresses[0][:2]
        context = ssl.create_default_context(cafile=str(tls.ca))
        request = urllib.request.Request(f"https://{host}:{port}/connect", headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, context=context, timeout=10).read()
        assert refused.value.code == 426
        found = samples(scrape(server.control.addresses[0], tls, token)[1])
        assert found[key("http_controlplane_requests_total", code="426", path="/connect")] == 1
        assert key("http_controlplane_requests_total", code="101", path="/connect") not in found
    finally:
        stack.close()


def test_a_server_nobody_scrapes_does_not_load_prometheus_client():
    """Counting is plain ints; the library (about 2 MiB of RSS) comes with the first scrape."""
    from inlets_py import runtime

    package = runtime.__name__
    probe = (
        "import sys\n"
        f"import {package}.cli.run.tcp_server, {package}.cli.run.http_server\n"
        f"from {package}.server.metrics import HttpMetrics, TcpMetrics\n"
        "tcp, http = TcpMetrics(lambda: 1, {'/metrics'}.__contains__), HttpMetrics(lambda: 2, {'/metrics'}.__contains__)\n"
        "counters = tcp.port(8080); counters.total += 3; counters.bytes_in += 5; counters.refused['no_client'] = 1\n"
        "http.observe(200, 'a.test', b'GET', 0.002); tcp.control_request('/metrics', 200)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported before any scrape'\n"
        "print(tcp.route()[2].decode()); print(http.route()[2].decode())\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = samples(result.stdout)
    assert found[key("tcp_dataplane_connections_total", port="8080")] == 3
    assert found[key("tcp_dataplane_bytes_total", port="8080", direction="in")] == 5
    assert found[key("tcp_dataplane_refused_total", port="8080", reason="no_client")] == 1
    assert found[key("tcp_controlplane_requests_total", code="200", path="/metrics")] == 1
    assert found[key("tcp_controlplane_connected_gauge")] == 1
    assert found[key("http_controlplane_connected_gauge")] == 2
    assert found[key("http_dataplane_request_duration_seconds_bucket", code="200", host="a.test", method="GET",
                     le="0.0025")] == 1


def test_udp_counters_keep_counting_when_the_client_reconnects(tls, token):
    """A UDP port's counters lived on its listener, which goes with the port's last client: a client that
    reconnected started them again at 0 (datagrams_total 3, then 1), a counter going down while the server
    ran. They are kept per port now, as the TCP ports' are; the flows gauge says 0 while no client serves it."""
    from helpers.tunnel import control_url, udp_free_port
    from helpers.udp import ask, udp_echo

    async def scenario() -> None:
        echo = await udp_echo()
        server = await start_server(tls, token)
        public = udp_free_port()
        mapping = {f"udp:{public}": Upstream("127.0.0.1", echo)}
        client, task = await start_client(control_url(server), token, tls, mapping)
        try:
            assert await ask(public, [b"a", b"bb", b"ccc"]) == [b"a", b"bb", b"ccc"]
            await stop(task)
            for _ in range(100):  # bounded: the server releases the port within moments
                if f"udp:{public}" not in server.udp_ports:
                    break
                await asyncio.sleep(0.05)
            found = samples((await asyncio.to_thread(scrape, server.control.addresses[0], tls, token))[1])
            p = str(public)
            assert found[key("udp_dataplane_datagrams_total", port=p, direction="in")] == 3
            assert found[key("udp_dataplane_flows_gauge", port=p)] == 0
            client, task = await start_client(control_url(server), token, tls, mapping)
            assert await ask(public, [b"dddd"]) == [b"dddd"]
            found = samples((await asyncio.to_thread(scrape, server.control.addresses[0], tls, token))[1])
            assert found[key("udp_dataplane_datagrams_total", port=p, direction="in")] == 4
            assert found[key("udp_dataplane_datagrams_total", port=p, direction="out")] == 4
            assert found[key("udp_dataplane_bytes_total", port=p, direction="in")] == 10
            assert found[key("udp_dataplane_flows_gauge", port=p)] == 1
        finally:
            await stop(task)
            await server.stop()

    run(scenario(), 30)


def test_a_port_whose_client_was_refused_at_the_handshake_has_no_series(tls, token):
    """Found by a review helper: a client refused because one of its ports was in use left every port it asked
    for in the scrape (udp_dataplane_*, tcp_dataplane_* at 0), as ports the server served; none is there now."""
    from helpers.tunnel import control_url, udp_free_port
    from helpers.udp import ask, udp_echo

    async def scenario() -> None:
        echo = await udp_echo()
        server = await start_server(tls, token)
        udp_busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp_busy = socket.socket()
        try:
            udp_busy.bind(("127.0.0.1", udp_free_port()))
            tcp_busy.bind(("127.0.0.1", udp_free_port()))
            tcp_busy.listen()
            taken_udp, taken_tcp, free = udp_busy.getsockname()[1], tcp_busy.getsockname()[1], udp_free_port()
            asked = [{f"udp:{taken_udp}": Upstream("127.0.0.1", echo)},  # its own bind fails
                     {f"udp:{free}": Upstream("127.0.0.1", echo), f"tcp:{taken_tcp}": Upstream("127.0.0.1", 1)}]
            for mapping in asked:
                client, task = await start_client(control_url(server), token, tls, mapping, wait=False)
                with pytest.raises(Exception, match="port in use"):
                    await asyncio.wait_for(task, 10)
            found = samples((await asyncio.to_thread(scrape, server.control.addresses[0], tls, token))[1])
            ports = {labels.get("port") for (name, items) in found for labels in [dict(items)]} - {None}
            assert not ports & {str(taken_udp), str(taken_tcp), str(free)}, sorted(ports)
            assert not server.udp_ports and not server.listeners
            client, task = await start_client(control_url(server), token, tls, {f"udp:{free}": Upstream("127.0.0.1", echo)})
            assert await ask(free, [b"served"]) == [b"served"]  # a port served is in the scrape, as before
            found = samples((await asyncio.to_thread(scrape, server.control.addresses[0], tls, token))[1])
            assert found[key("udp_dataplane_datagrams_total", port=str(free), direction="in")] == 1
            await stop(task)
        finally:
            udp_busy.close()
            tcp_busy.close()
            await server.stop()

    run(scenario(), 30)
