"""`inlets status` pointed at the wrong thing: a wrong scheme or a server that is not a tunnel
gets one line saying what to change, never OpenSSL's words or a page of HTML."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers.process import client_args, inlets, server_args, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port

from inlets_py.runtime.core.tls import server_context


def status_line(url: str, token_file: Path, *extra: str) -> str:
    result = inlets("status", "--url", url, "--token-file", str(token_file), "--timeout", "3", *extra)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert not any(word in lines[0] for word in ("_ssl.c", "SSL:", "Remote end closed", "<html", "<!DOCTYPE")), lines[0]
    return lines[0]


def test_a_wrong_scheme_is_named_with_its_fix(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    tls_port, plain_port = free_port(), free_port()
    tls_server = spawn(*server_args(tls_port, tls, token_file), log=tmp_path / "tls.log")
    plain_server = spawn("tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(plain_port),
                         "--data-addr", "127.0.0.1", "--plaintext", "--token-file", str(token_file),
                         log=tmp_path / "plain.log")
    try:
        wait_port(tls_port)
        wait_port(plain_port)
        assert "answers plain HTTP, not TLS: for a server run with --plaintext use ws:// in --url; else give its " \
               "control port" in status_line(f"wss://127.0.0.1:{plain_port}", token_file, "--tls-ca", str(tls.ca))
        assert "speaks TLS: use wss://" in status_line(f"ws://127.0.0.1:{tls_port}", token_file)
    finally:
        for process in (tls_server, plain_server):
            process.send_signal(signal.SIGTERM)
            process.wait(15)


@contextlib.contextmanager
def web_answering(status: int, body: str, content_type: str = "text/plain", location: str = "",
                  retry_after: tuple[str, ...] = ()) -> Iterator[int]:
    """A plain web server on loopback answering every GET with ``status`` and ``body``; yields its port."""
    class Fixed(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if location:
                self.send_header("Location", location)
            for value in retry_after:
                self.send_header("Retry-After", value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fixed)
    threading.Thread(target=web.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield web.server_address[1]
    finally:
        web.shutdown()
        web.server_close()


def test_a_web_server_that_is_no_tunnel_gets_one_line(token_file: Path) -> None:
    with web_answering(404, "Not Found\n") as port:
        line = status_line(f"ws://127.0.0.1:{port}", token_file)
    assert "HTTP 404: is --url a tunnel server's control port" in line


def test_a_redirect_says_where_it_pointed_as_the_client_does(token_file: Path) -> None:
    """It said "/status answered HTTP 301: Moved", where the client names the Location and says to check --url."""
    with web_answering(301, "Moved\n", location="https://example.test/\x1b[2Jlogin") as port:
        line = status_line(f"ws://127.0.0.1:{port}", token_file)
    assert line == (f"inlets: error: 127.0.0.1:{port} answers a redirect (HTTP 301) to https://example.test/\\x1b[2Jlogin, "
                    "which a tunnel server never sends: check --url"), line


@pytest.mark.parametrize("given, said", [(("30",), "for 30 s"), (("30", "5"), "for 30 s"), ((), "for up to a minute")],
                         ids=["retry-after", "repeated", "none"])
def test_a_429_says_its_retry_after_as_the_client_reads_it(token_file: Path, given: tuple[str, ...], said: str) -> None:
    """Status read the wait from the server's English body ("try again in N s"), the client from Retry-After: a
    proxy's 429 in front (nginx's limit_req page with Retry-After added) was said "for up to a minute". Now both
    read the header, the first of repeated ones."""
    with web_answering(429, "<html><title>429 Too Many Requests</title></html>", "text/html", retry_after=given) as port:
        line = status_line(f"ws://127.0.0.1:{port}", token_file)
    assert line == (f"inlets: error: the server refuses logins from this address {said} after too many failed ones "
                    "(a wrong token from this address: this client's, or another client's behind the same address): "
                    "try again then"), line


def test_status_takes_the_clients_url_schemes_only(token_file: Path) -> None:
    """Every refused --url gets the same message, and it offers only what is taken (never https://, refused too)."""
    for url in ("http://127.0.0.1:20999", "https://127.0.0.1:20999", "127.0.0.1:20999", "ftp://127.0.0.1"):
        result = inlets("status", "--url", url, "--token-file", str(token_file))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result
        assert result.stderr.strip() == (f"inlets: error: --url must be wss://HOST[:PORT] (or ws://HOST[:PORT] for a "
                                         f"--plaintext server), as the client's is, got {url!r}"), result.stderr


@pytest.mark.parametrize("body", ['[1, 2]', '42', 'null', '{"clients": 5}', '{"clients": [1]}',
                                  '{"uptime_seconds": "x"}', '{"uptime_seconds": Infinity}',
                                  '{"clients": [{"services": "tcp:80", "bytes_in": "zz"}]}'])
def test_json_that_is_no_status_document_gets_one_line(token_file: Path, body: str) -> None:
    """Another service's JSON at /status (a proxy's prefix pointing elsewhere) is one line, not the table's traceback."""
    with web_answering(200, body, "application/json") as port:
        line = status_line(f"ws://127.0.0.1:{port}", token_file)
    assert "/status answered JSON that is not a tunnel server's status: is --url a tunnel server?" in line


def test_json_that_names_a_key_twice_gets_one_line(token_file: Path) -> None:
    """Python's parser kept the last of a repeated key: a status naming ``clients`` twice showed the second list,
    where a reader that keeps the first (jq's --stream, a proxy's own parser) saw another server."""
    body = '{"uptime_seconds": 1, "clients": [{"id": "a", "services": ["tcp:1"]}], "clients": []}'
    with web_answering(200, body, "application/json") as port:
        line = status_line(f"ws://127.0.0.1:{port}", token_file)
    assert line == ('inlets: error: /status answered JSON that names "clients" twice in one object: '
                    "is --url a tunnel server?"), line


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_server_that_answers_a_byte_at_a_time_is_given_up_on_at_the_timeout(
    tls: TlsFiles, token_file: Path, scheme: str
) -> None:
    """--timeout bounds the whole answer: it bounded each read only, so a server (or a proxy before it) that
    sent a byte a second held the command for as long as it liked."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        if scheme == "wss":
            conn = server_context(tls.cert, tls.key).wrap_socket(conn, server_side=True)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        while not done.wait(0.5):
            conn.sendall(b" ")
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    try:
        line = status_line(f"{scheme}://127.0.0.1:{listener.getsockname()[1]}", token_file, "--timeout", "2",
                           "--tls-ca", str(tls.ca))
    finally:
        done.set()
        listener.close()
    assert time.monotonic() - started < 8
    assert line.endswith("no complete answer within 2s"), line


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "1e400"])
def test_json_output_is_standard_json_whatever_the_server_answered(token_file: Path, value: str) -> None:
    """Python's parser takes NaN and Infinity (1e400 reads as Infinity) in any field, and --json printed them back
    as is: not JSON to jq or any other parser. Such an answer is one line now, and never printed."""
    with web_answering(200, f'{{"uptime_seconds": 1, "clients": [], "hostname": {value}}}', "application/json") as port:
        line = status_line(f"ws://127.0.0.1:{port}", token_file, "--json")
    assert "/status answered JSON that is not a tunnel server's status" in line


@pytest.mark.parametrize("body", ['{"uptime_seconds": 1' + "0" * 400 + ', "clients": []}',
                                  '{"clients": [{"id": "a", "bytes_in": 1' + "0" * 400 + '}]}',
                                  '{"clients": [{"id": "a", "bytes_out": -5}]}', '{"uptime_seconds": -100}'])
def test_numbers_no_server_sends_get_one_line_not_a_traceback(token_file: Path, body: str) -> None:
    """A 400-digit integer is a Python int, which the checks took and the table could not make a float of
    (OverflowError: a traceback); negative counts and uptime showed as '-1d23h'."""
    with web_answering(200, body, "application/json") as port:
        line = status_line(f"ws://127.0.0.1:{port}", token_file)
    assert "/status answered JSON that is not a tunnel server's status" in line


def test_control_characters_in_a_servers_answer_stay_in_their_cell(token_file: Path) -> None:
    """A newline in a client id began a row the columns did not count (a forged client in the table), and an ANSI
    escape reached the terminal; both are written as escapes now, in the table and in the holdings."""
    body = ('{"uptime_seconds": 1, "hostname": "h\\u001b]0;x\\u0007", "clients": [{"id": "a\\u001b[2J\\nforged  1.2.3.4",'
            ' "remote": "r", "services": ["tcp:1"]}, {"id": "b", "remote": "r2", "services": ["tcp:2"]}]}')
    with web_answering(200, body, "application/json") as port:
        url = f"ws://127.0.0.1:{port}"
        one = inlets("status", "--url", url, "--token-file", str(token_file), "--timeout", "3")
        two = inlets("status", "--url", url, "--url", url + "/", "--token-file", str(token_file), "--timeout", "3")
    assert one.returncode == 0 and two.returncode == 0, (one, two)
    for output in (one.stdout, two.stdout):
        assert "\x1b" not in output and "\x07" not in output
    lines = one.stdout.splitlines()
    assert lines[0] == r"inlets ? server ? on h\x1b]0;x\x07, up 1s (since ?)"
    assert [line.split()[0] for line in lines[1:]] == ["CLIENT", r"a\x1b[2J\nforged", "b"]
    assert len({line.index("tcp:") for line in lines[2:]}) == 1  # the SERVICES column lines up
    assert r"client a\x1b[2J\nforged  1.2.3.4 holds 2/2 servers" in two.stdout


def test_the_same_url_twice_is_refused_as_the_client_refuses_it(token_file: Path) -> None:
    """The answers are kept per URL: a URL given twice was one server, and the holdings said 'holds 1/1 servers'
    of the two asked for."""
    body = '{"uptime_seconds": 1, "clients": [{"id": "a", "services": ["tcp:1"]}]}'
    with web_answering(200, body, "application/json") as port:
        url = f"ws://127.0.0.1:{port}"
        result = inlets("status", "--url", url, "--url", url, "--token-file", str(token_file), "--timeout", "3")
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.strip() == "inlets: error: the same --url is given twice: each server once"


def test_help_describes_what_status_does_with_several_urls() -> None:
    """Its --url once read as the client's ("serve through several servers ... reconnecting"): status does neither."""
    result = inlets("status", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result
    url_help = " ".join(result.stdout.split("--url <url>", 1)[1].split("--token ", 1)[0].split())
    assert "Repeat it for each server behind one balancer" in url_help, url_help
    assert not any(word in url_help for word in ("serve through", "reconnect", "session")), url_help


def test_help_says_what_json_prints_with_several_urls() -> None:
    """--json said "the server's JSON as is", but several --url print {"servers": ..., "errors": ...}."""
    result = inlets("status", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result
    json_help = " ".join(result.stdout.split("--json", 1)[1].split("--timeout", 1)[0].split())
    assert '"servers"' in json_help and '"errors"' in json_help and "as is" not in json_help, json_help


def test_a_port_that_echoes_what_it_is_sent_is_not_http_in_words(token_file: Path) -> None:
    """The error was '127.0.0.1:PORT: GET /status HTTP/1.1': the request's own first line, echoed back."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def echo_once() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                conn.sendall(conn.recv(65536))

        echo = threading.Thread(target=echo_once, daemon=True)
        echo.start()
        port = listener.getsockname()[1]
        line = status_line(f"ws://127.0.0.1:{port}", token_file)
        echo.join(10)
    assert line == f"inlets: error: 127.0.0.1:{port} does not answer HTTP: is {port} the server's control port?"


def test_a_server_not_running_is_said_with_what_to_check(token_file: Path) -> None:
    """Found by the README walk: a server not started (or a mistyped port) got "cannot reach 127.0.0.1:PORT:
    Connection refused", which said what failed but not what to do; the line now says what to check."""
    closed = free_port()
    line = status_line(f"wss://127.0.0.1:{closed}", token_file)
    assert line == (f"inlets: error: cannot reach 127.0.0.1:{closed}: Connection refused: check that the server is "
                    "running and that --url names its control port (8123 unless set)"), line
    both = inlets("status", "--url", f"wss://127.0.0.1:{closed}", "--url", f"wss://127.0.0.1:{free_port()}",
                  "--token-file", str(token_file), "--timeout", "3")
    assert both.returncode == 1 and both.stderr.count("check that the server is running") == 2, both.stderr


@pytest.fixture
def tls11_port(tmp_path: Path, tls: TlsFiles) -> Iterator[int]:
    """A real TLS 1.1-only port (an old proxy or balancer): ``openssl s_server -tls1_1``, skipped where openssl
    cannot speak TLS 1.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command here to serve TLS 1.1")
    port, log = free_port(), tmp_path / "s_server.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-tls1_1", "-cipher",
                                   "DEFAULT:@SECLEVEL=0", "-www", "-cert", str(tls.cert), "-key", str(tls.key)],
                                  stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "ACCEPT" not in log.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"openssl s_server -tls1_1 did not start here: {log.read_text().strip()[-300:]}")
            time.sleep(0.05)
        yield port
    finally:
        server.kill()
        server.wait(10)


def test_a_port_offering_only_tls_1_1_is_said_so_not_called_a_wrong_port(token_file: Path, tls11_port: int) -> None:
    """`inlets status` said "the TLS handshake failed: is PORT the server's control port?" of a TLS port that is
    only too old, and through an https:// proxy that is, OpenSSL's own words ("[SSL: TLSV1_ALERT_PROTOCOL_VERSION]
    tlsv1 alert protocol version (_ssl.c:1006)")."""
    line = status_line(f"wss://127.0.0.1:{tls11_port}", token_file)
    assert line == (f"inlets: error: 127.0.0.1:{tls11_port} offers no TLS 1.2 or newer (its newest is older): upgrade "
                    f"what serves it, or check that {tls11_port} is the server's control port (an inlets server "
                    "speaks TLS 1.2 and 1.3)"), line
    line = status_line("wss://127.0.0.1:8123", token_file, "--proxy", f"https://127.0.0.1:{tls11_port}")
    assert line == (f"inlets: error: proxy https://127.0.0.1:{tls11_port} offers no TLS 1.2 or newer (its newest is "
                    "older): upgrade the proxy, or use one that speaks TLS 1.2 or 1.3"), line


def test_a_client_through_a_tls_1_1_proxy_says_so_not_in_openssls_words(tmp_path: Path, token_file: Path, tls: TlsFiles,
                                                                        tls11_port: int) -> None:
    """The tunnel client's connect_failed line through such an https:// proxy carried OpenSSL's own words
    ("[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version (_ssl.c:1006)"), as `inlets status` did."""
    log = tmp_path / "client.log"
    client = spawn(*client_args(free_port(), tls, token_file, "--upstream", "127.0.0.1", "--ports", str(free_port()),
                                "--proxy", f"https://127.0.0.1:{tls11_port}"), log=log)
    try:
        line = next(line for line in wait_for_text(log, "event=connect_failed").splitlines() if "connect_failed" in line)
    finally:
        stop_all(client)
    assert "_ssl.c" not in line and "SSL:" not in line, line
    assert (f'error="through proxy https://127.0.0.1:{tls11_port}: the proxy, or the server through it, offers no TLS '
            '1.2 or newer (its newest is older): upgrade it, or use a proxy that speaks TLS 1.2 or 1.3"') in line, line
