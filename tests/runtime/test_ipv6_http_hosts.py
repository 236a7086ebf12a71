"""An HTTP tunnel for an IPv6 host, with the real `inlets` commands: its service is said ``http:[::1]`` where people
read it (logs, /status, the status table) while the wire keeps ``http:::1``, and the host is found by any spelling
of the address in Host (``[0:0::1]`` is ``[::1]``), as by the compressed one browsers send."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.process import inlets, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port


def _http_on_ipv6(port: int) -> subprocess.Popen:
    """A one-file web server on [::1]:port answering 200 "v6" (the tunnel client dials it)."""
    code = ("import http.server, socket\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()\n"
            "        self.wfile.write(b'v6')\n"
            "    def log_message(self, *args): pass\n"
            "class S(http.server.ThreadingHTTPServer):\n"
            "    address_family = socket.AF_INET6\n"
            f"S(('::1', {port}), H).serve_forever()\n")
    return subprocess.Popen([sys.executable, "-c", code])


def _status(host: str, port: int) -> bytes:
    """The status line a request for ``Host: host`` gets from the data plane at 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer and (data := sock.recv(4096)):
            answer += data
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("name", ["::1", "0:0::1"])
def test_an_ipv6_http_host_is_said_in_brackets_and_found_by_any_spelling(name: str, tls: TlsFiles, token_file: Path,
                                                                         tmp_path: Path) -> None:
    """``services=http:::1`` (is it host ``::1`` or ``:`` port 1?) in both logs, /status and the table; and
    ``Host: [0:0::1]`` got 503 while ``Host: [::1]`` reached the client (an upstream for ``0:0::1``, the reverse)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"::1 is not usable here: {exc}")
    control, public, upstream = free_port(), free_port(), free_port("::1")
    app = _http_on_ipv6(upstream)
    server = spawn("http", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr",
                   "127.0.0.1", "--port", str(public), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
                   "--token-file", str(token_file), log=tmp_path / "server.log")
    client = None
    try:
        wait_port(control)
        client = spawn("http", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                       "--tls-ca", str(tls.ca), "--upstream", f"{name}=http://[::1]:{upstream}",
                       log=tmp_path / "client.log")
        assert "event=connected url=" in wait_for_text(tmp_path / "client.log", "services=http:[::1]\n")
        wait_for_text(tmp_path / "server.log", "event=client_connected")
        assert "services=http:[::1]\n" in (tmp_path / "server.log").read_text()
        wait_port(upstream, host="::1")
        answers = {host: _status(host, public) for host in ("[::1]", "[0:0::1]", "[0:0::1]:80", "[::0001]")}
        assert answers == dict.fromkeys(answers, b"HTTP/1.1 200 OK"), answers
        asked = ["status", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca",
                 str(tls.ca)]
        table = inlets(*asked)
        assert table.returncode == 0 and " http:[::1] " in table.stdout and "http:::1" not in table.stdout, table
        document = json.loads(inlets(*asked, "--json").stdout)
        assert [c["services"] for c in document["clients"]] == [["http:[::1]"]], document
        stop_all(client)
        assert "event=no_clients service=http:[::1]\n" in wait_for_text(tmp_path / "server.log", "event=no_clients")
    finally:
        stop_all(*(p for p in (client, server) if p is not None))
        app.kill()
        app.wait(10)


@pytest.mark.parametrize("service, shown", [("http:::1", "http:[::1]"), ("http:2001:db8::1", "http:[2001:db8::1]"),
                                            ("http:[::1]", "http:[::1]"), ("http:example.com", "http:example.com"),
                                            ("http:10.0.0.1", "http:10.0.0.1"), ("http:*", "http:*"),
                                            ("tcp:8080", "tcp:8080"), ("forward:[::1]:22", "forward:[::1]:22")])
def test_a_service_is_shown_as_people_read_it_and_nothing_else_changes(service: str, shown: str) -> None:
    from inlets_py.runtime.core.services import shown_service

    assert shown_service(service) == shown
