"""IPv6 in the address-taking flags, with the real `inlets` command: ``::`` listens for IPv4 users too (as the
default, and a UDP port on ``::``, do), and an address written in brackets where a bare host is read is refused
in a line that gives the form accepted, or taken where brackets are how the address is written (a Host header)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.process import echo_once, inlets, one_line_error, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port


def _ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"::1 is not usable here: {exc}")


def _echo_on_ipv6(port: int) -> subprocess.Popen:
    """A one-file echo server on [::1]:port, in a process of its own (the tunnel client dials it)."""
    code = ("import socket, socketserver\n"
            "class H(socketserver.StreamRequestHandler):\n"
            "    def handle(self):\n"
            "        self.wfile.write(self.rfile.read())\n"
            "class S(socketserver.ThreadingTCPServer):\n"
            "    address_family = socket.AF_INET6\n"
            "    daemon_threads = True\n"
            f"S(('::1', {port}), H).serve_forever()\n")
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_tcp_port_on_the_any_ipv6_address_takes_ipv4_users_too(tls: TlsFiles, token_file: Path, tmp_path: Path) -> None:
    """``--data-addr ::`` listened on IPv6 alone for TCP (asyncio sets IPV6_V6ONLY), while a UDP port of the same
    server on ``::`` took IPv4 too, and so does Linux's ``::`` by default: 127.0.0.1 was refused (0 of 2 families
    for IPv4). Now both families reach the tunnel, and the control port on ``::`` as well."""
    _ipv6_loopback()
    control, public, upstream = free_port("::"), free_port("::"), free_port("::1")
    echo = _echo_on_ipv6(upstream)
    server = spawn("tcp", "server", "--control-addr", "::", "--control-port", str(control), "--data-addr", "::",
                   "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file),
                   log=tmp_path / "server.log")
    client = None
    try:
        wait_port(control, host="::1")
        wait_port(control, host="127.0.0.1")  # the control port on :: as well
        client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                       "--tls-ca", str(tls.ca), "--upstream", f"{public}=[::1]:{upstream}", log=tmp_path / "client.log")
        wait_for_text(tmp_path / "client.log", "event=connected")
        wait_port(upstream, host="::1")
        assert echo_once(public, b"over IPv6", host="::1") == b"over IPv6"
        assert echo_once(public, b"over IPv4", host="127.0.0.1") == b"over IPv4"
        # the client came over IPv4 to the dual-stack control port: said as IPv4, as Go's inlets says it
        log = (tmp_path / "server.log").read_text()
        assert "event=client_connected" in log and "::ffff:" not in log, log
        assert re.search(r"event=client_connected client=\S+ remote=127\.0\.0\.1:\d+ ", log), log
    finally:
        stop_all(*(p for p in (client, server) if p is not None))
        echo.kill()
        echo.wait(10)


@pytest.mark.parametrize("flags, accepted", [
    (["tcp", "server", "--plaintext", "--token", "x", "--control-addr", "[::1]"], "--control-addr: give ::1"),
    (["tcp", "server", "--plaintext", "--token", "x", "--data-addr", "[::]"], "--data-addr: give ::"),
    (["http", "server", "--plaintext", "--token", "x", "--data-addr", "[fd00::1]"], "--data-addr: give fd00::1"),
    (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--local", "15432:[::1]:5432", "--local-addr", "[::1]"],
     "--local-addr: give ::1"),
])
def test_a_bracketed_address_where_a_bare_host_is_read_says_the_form_accepted(flags: list[str], accepted: str) -> None:
    """``--control-addr [::1]`` was refused as "not a valid host name: give an IP address or a DNS name", though
    it is one: the line did not say to leave the brackets out."""
    line = one_line_error(inlets(*flags, env={"INLETS_TOKEN": ""}), accepted)
    assert "without brackets" in line, line


def test_an_http_upstream_for_a_bracketed_ipv6_host_serves_that_host() -> None:
    """Users write ``[::1]`` in the Host header; ``--upstream [::1]=URL`` was refused ("invalid host name"),
    though ``::1=URL`` served ``Host: [::1]``. Both now name the same host."""
    from inlets_py.runtime.client.http_upstreams import parse_upstreams

    assert parse_upstreams(["[::1]=http://[::1]:3000"]).keys() == parse_upstreams(["::1=http://[::1]:3000"]).keys()
    assert parse_upstreams(["[2001:DB8::1]=http://[::1]:3000"]).keys() == {"http:2001:db8::1"}


@pytest.mark.parametrize("seen, said", [("::ffff:127.0.0.1", "127.0.0.1"), ("::FFFF:10.1.2.3", "10.1.2.3"),
                                        ("::1", "::1"), ("127.0.0.1", "127.0.0.1"), ("::ffff:7f00:1", "127.0.0.1"),
                                        ("fe80::ffff:1.2.3.4", "fe80::ffff:1.2.3.4"), ("::ffff:not.an.address", "::ffff:not.an.address")])
def test_an_ipv4_users_mapped_address_is_said_as_ipv4(seen: str, said: str) -> None:
    """What a dual-stack listener's peername gives for an IPv4 user (``::ffff:a.b.c.d``) is the IPv4 address in logs,
    /status, X-Forwarded-For and per-source limits; anything else is left as it is."""
    from inlets_py.runtime.core.hosts import unmapped

    assert unmapped(seen) == said
