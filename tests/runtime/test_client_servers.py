"""One client connected to several servers (``--url`` repeated, issue 18): one session per server, the
same services on each, a token per server, each reconnecting on its own; the log and ``inlets status``
say which servers it holds. Real processes on loopback; every wait bounded."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest
from helpers.prov_support import http_upstream
from helpers.process import echo_once, inlets, spawn, terminate, wait_port
from helpers.tunnel import TlsFiles, free_port

DATA_ADDRS = ("127.0.0.2", "127.0.0.3")


def _tokens(tmp_path: Path) -> list[Path]:
    files = []
    for n, addr in enumerate(DATA_ADDRS):
        path = tmp_path / f"token-{n}"
        path.write_text(f"token-for-{addr}-{n}-Zq81x\n")
        path.chmod(0o600)
        files.append(path)
    return files


def _server(mode: str, control: int, tls: TlsFiles, token_file: Path, data_addr: str, log: Path, *extra: str):
    process = spawn(mode, "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr",
                    data_addr, "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file),
                    *extra, log=log)
    wait_port(control)
    return process


def _held(log: Path, text: str, times: int = 1) -> None:
    """Wait until ``text`` is in the log ``times`` times (bounded)."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if log.read_text().count(text) >= times:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not {times}x in {log}:\n{log.read_text()[-3000:]}")


def test_a_tcp_client_serves_through_both_servers_and_survives_one(tmp_path: Path, tls: TlsFiles, echo_port: int) -> None:
    tokens = _tokens(tmp_path)
    controls = [free_port(), free_port()]
    servers = [_server("tcp", controls[n], tls, tokens[n], DATA_ADDRS[n], tmp_path / f"server-{n}.log")
               for n in range(2)]
    client_log = tmp_path / "client.log"
    client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{controls[0]}", "--url", f"wss://127.0.0.1:{controls[1]}",
                   "--token-file", str(tokens[0]), "--token-file", str(tokens[1]), "--tls-ca", str(tls.ca),
                   "--upstream", "127.0.0.1", "--ports", str(echo_port), log=client_log)
    try:
        _held(client_log, "event=servers held=2/2")
        for addr in DATA_ADDRS:
            wait_port(echo_port, host=addr)
            assert echo_once(echo_port, b"via " + addr.encode(), addr) == b"via " + addr.encode()
        args = ["status", "--url", f"wss://127.0.0.1:{controls[0]}", "--url", f"wss://127.0.0.1:{controls[1]}",
                "--token-file", str(tokens[0]), "--token-file", str(tokens[1]), "--tls-ca", str(tls.ca)]
        status = inlets(*args)
        assert status.returncode == 0, status.stderr
        assert "holds 2/2 servers" in status.stdout, status.stdout
        for secret in tokens:
            assert secret.read_text().strip() not in client_log.read_text() + status.stdout
        # kill -9 one server: the client holds the other, which still serves
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait(10)
        _held(client_log, "event=servers held=1/2")
        assert echo_once(echo_port, b"still", DATA_ADDRS[1]) == b"still"
        one = inlets(*args)
        assert one.returncode == 1 and one.stderr.startswith(f"inlets: error: wss://127.0.0.1:{controls[0]}: "), one.stderr
        # the server still up is shown all the same: a server down is when status is asked for
        assert f"wss://127.0.0.1:{controls[1]}\n" in one.stdout, one.stdout
        assert (f"holds 1/2 servers: wss://127.0.0.1:{controls[1]} (not wss://127.0.0.1:{controls[0]})"
                in one.stdout), one.stdout
        as_json = json.loads(inlets(*args, "--json").stdout)
        assert list(as_json["servers"]) == [f"wss://127.0.0.1:{controls[1]}"], as_json
        assert list(as_json["errors"]) == [f"wss://127.0.0.1:{controls[0]}"], as_json
        # it comes back: the client reconnects to it by itself
        servers[0] = _server("tcp", controls[0], tls, tokens[0], DATA_ADDRS[0], tmp_path / "server-0b.log")
        _held(client_log, "event=servers held=2/2", times=2)
        wait_port(echo_port, host=DATA_ADDRS[0])
        assert echo_once(echo_port, b"back", DATA_ADDRS[0]) == b"back"
    finally:
        for process in (client, *servers):
            terminate(process)


def test_an_http_client_serves_the_same_host_through_both_servers(tmp_path: Path, tls: TlsFiles) -> None:
    tokens = _tokens(tmp_path)
    (tmp_path / "shared").write_text(tokens[0].read_text())
    controls, port, site = [free_port(), free_port()], free_port(), free_port()
    servers = [_server("http", controls[n], tls, tmp_path / "shared", DATA_ADDRS[n], tmp_path / f"server-{n}.log",
                       "--port", str(port)) for n in range(2)]
    client_log = tmp_path / "client.log"
    client = spawn("http", "client", "--url", f"wss://127.0.0.1:{controls[0]}", "--url", f"wss://127.0.0.1:{controls[1]}",
                   "--token-file", str(tmp_path / "shared"), "--tls-ca", str(tls.ca),
                   "--upstream", f"app.example.test=http://127.0.0.1:{site}", log=client_log)
    try:
        _held(client_log, "event=servers held=2/2")
        with http_upstream(site):
            for addr in DATA_ADDRS:
                request = urllib.request.Request(f"http://{addr}:{port}/x", headers={"Host": "app.example.test"})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    assert answer.read() == b"hello from the upstream, path=/x"
    finally:
        for process in (client, *servers):
            terminate(process)


@pytest.mark.parametrize("extra, message", [
    (["--token-file", "a", "--token-file", "b", "--token-file", "c"], "--token-file given 3 times for 2 --url"),
    (["--token-file", "a", "--url", "wss://127.0.0.1:1"], "the same --url is given twice"),
])
def test_several_servers_take_one_token_file_or_one_each(tmp_path: Path, extra: list[str], message: str) -> None:
    for name in "abc":
        (tmp_path / name).write_text("t\n")
    result = inlets("tcp", "client", "--url", "wss://127.0.0.1:1", "--url", "wss://127.0.0.1:2",
                    *[str(tmp_path / e) if len(e) == 1 else e for e in extra], "--upstream", "127.0.0.1", "--ports", "80")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_refusing_the_token_costs_only_its_own_session(tmp_path: Path, tls: TlsFiles, echo_port: int) -> None:
    """HTTP 401 from one server: one log line saying what to do, the other serves; fixed + SIGHUP: it joins."""
    tokens = _tokens(tmp_path)
    wrong = tmp_path / "wrong-for-0"
    wrong.write_text("not-the-token-of-server-0\n")
    controls = [free_port(), free_port()]
    servers = [_server("tcp", controls[n], tls, tokens[n], DATA_ADDRS[n], tmp_path / f"server-{n}.log")
               for n in range(2)]
    client_log = tmp_path / "client.log"
    urls = [f"wss://127.0.0.1:{port}" for port in controls]
    client = spawn("tcp", "client", "--url", urls[0], "--url", urls[1], "--token-file", str(wrong),
                   "--token-file", str(tokens[1]), "--tls-ca", str(tls.ca),
                   "--upstream", "127.0.0.1", "--ports", str(echo_port), log=client_log)
    try:
        _held(client_log, "event=server_refused")
        _held(client_log, "event=servers held=1/2")
        refused = [line for line in client_log.read_text().splitlines() if "event=server_refused" in line]
        assert len(refused) == 1 and f"url={urls[0]}" in refused[0] and "HTTP 401" in refused[0], refused
        assert "SIGHUP" in refused[0] and refused[0].count(urls[0]) == 1, refused
        assert f"serving through {urls[1]}" in refused[0] or "no other server holds this client now" in refused[0]
        wait_port(echo_port, host=DATA_ADDRS[1])
        assert echo_once(echo_port, b"through the other", DATA_ADDRS[1]) == b"through the other"
        assert client.poll() is None  # still running
        wrong.write_text(tokens[0].read_text())  # the fix, then SIGHUP to try it at once
        client.send_signal(signal.SIGHUP)
        _held(client_log, "event=servers held=2/2")
        wait_port(echo_port, host=DATA_ADDRS[0])
        assert echo_once(echo_port, b"joined", DATA_ADDRS[0]) == b"joined"
        assert not any(t.read_text().strip() in client_log.read_text() for t in tokens)
    finally:
        for process in (client, *servers):
            terminate(process)


def test_a_refusal_while_no_other_server_is_held_says_so(tmp_path: Path, tls: TlsFiles) -> None:
    """The line said 'serving through the other servers' while the only other one was down."""
    tokens = _tokens(tmp_path)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token-of-server-0\n")
    control, down = free_port(), free_port()
    server = _server("tcp", control, tls, tokens[0], DATA_ADDRS[0], tmp_path / "server.log")
    client_log = tmp_path / "client.log"
    client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--url", f"wss://127.0.0.1:{down}",
                   "--token-file", str(wrong), "--tls-ca", str(tls.ca), "--upstream", "127.0.0.1", "--ports", "80",
                   log=client_log)
    try:
        _held(client_log, "event=server_refused")
        refused = [line for line in client_log.read_text().splitlines() if "event=server_refused" in line]
        assert "no other server holds this client now" in refused[0] and "serving through" not in refused[0], refused
        assert client.poll() is None  # the other server may come up: it keeps trying both
    finally:
        for process in (client, server):
            terminate(process)


def test_the_client_exits_only_when_every_server_refused_it(tmp_path: Path, tls: TlsFiles) -> None:
    tokens = _tokens(tmp_path)
    wrong = tmp_path / "wrong"
    wrong.write_text("no-server-has-this-token\n")
    controls = [free_port(), free_port()]
    servers = [_server("tcp", controls[n], tls, tokens[n], DATA_ADDRS[n], tmp_path / f"server-{n}.log")
               for n in range(2)]
    urls = [f"wss://127.0.0.1:{port}" for port in controls]
    try:
        both = inlets("tcp", "client", "--url", urls[0], "--url", urls[1], "--token-file", str(wrong),
                      "--tls-ca", str(tls.ca), "--upstream", "127.0.0.1", "--ports", "80")
        assert both.returncode == 1, both.stderr
        last = both.stderr.splitlines()[-1]
        assert last.startswith("inlets: error: every server refused this client: ") and "Traceback" not in both.stderr
        assert all(f"{url}: the server refused the token (HTTP 401)" in last for url in urls), last
        one = inlets("tcp", "client", "--url", urls[0], "--token-file", str(wrong), "--tls-ca", str(tls.ca),
                     "--upstream", "127.0.0.1", "--ports", "80")  # a single server: exits at once, as ever
        assert one.returncode == 1
        assert one.stderr.splitlines()[-1] == "inlets: error: the server refused the token (HTTP 401): " \
                                              "check --token/--token-file", one.stderr
    finally:
        for process in servers:
            terminate(process)


def test_a_refusal_worded_around_its_url_keeps_it_in_the_log_line(tmp_path: Path, tls: TlsFiles) -> None:
    """A --url that answers plain HTTP logged error=" answers plain HTTP, not TLS: ...": the URL was cut off the
    front of a message that is not "URL: reason", leaving a sentence without its subject and a leading space."""
    tokens = _tokens(tmp_path)
    control = free_port()
    server = _server("tcp", control, tls, tokens[0], DATA_ADDRS[0], tmp_path / "server.log")
    plain = free_port()
    with http_upstream(plain):  # a plain HTTP site where a control port should be
        plain_url = f"wss://127.0.0.1:{plain}"
        client_log = tmp_path / "client.log"
        client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--url", plain_url,
                       "--token-file", str(tokens[0]), "--tls-ca", str(tls.ca), "--upstream", "127.0.0.1", "--ports", "80",
                       log=client_log)
        try:
            _held(client_log, "event=server_refused")
            (refused,) = [line for line in client_log.read_text().splitlines() if "event=server_refused" in line]
            assert f'error="{plain_url} answers plain HTTP, not TLS' in refused, refused
        finally:
            for process in (client, server):
                terminate(process)
