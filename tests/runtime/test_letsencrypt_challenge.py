"""A domain whose HTTP-01 challenge fails, as users meet it: `inlets http server` processes, a real pebble.

The failure line has to say what to check, as certbot's and Caddy's do: the CA's own words ("dial tcp
127.0.0.1:PORT: connect: connection refused", "could not resolve") name no DNS record and no port 80, and
the user is left guessing which of the two, or a firewall, is wrong. The other domains get theirs meanwhile.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers.letsencrypt import dnsmasq, pebble
from helpers.process import spawn, stop_all, wait_for_text
from helpers.tunnel import free_port


def _server(tmp_path: Path, ca, token_file: Path, port: int, domains: list[str]):
    args = [f"--letsencrypt-domain={d}" for d in domains]
    return spawn("http", "server", "--token-file", str(token_file), "--plaintext", "--control-addr", "127.0.0.1",
                 "--control-port", str(free_port()), "--data-addr", "127.0.0.1", "--port", str(port),
                 "--https-port", str(free_port()), *args, "--letsencrypt-issuer", ca.directory,
                 "--letsencrypt-ca", str(ca.api_ca), "--letsencrypt-path", str(tmp_path / "le"),
                 log=tmp_path / "server.log")


class _NotFound(BaseHTTPRequestHandler):
    """Another web server on port 80: knows nothing of the challenge."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_error(404)

    def log_message(self, *args) -> None:
        pass


def _failures(log: str) -> list[str]:
    return [line for line in log.splitlines() if "event=certificate_failed" in line]


def test_port_80_out_of_reach_says_to_check_the_dns_record_and_port_80(tmp_path: Path, token_file: Path) -> None:
    """Pebble validates on a port nothing listens on (a firewall, a port forward to the wrong port)."""
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", free_port(), dns) as ca:
        server = _server(tmp_path, ca, token_file, free_port(), ["site.example.test"])
        try:
            log = wait_for_text(tmp_path / "server.log", "event=certificate_failed", timeout=60)
        finally:
            stop_all(server)
    [line] = _failures(log)
    assert "domain=site.example.test" in line and "connection refused" in line, line
    assert "check that the DNS A/AAAA records of site.example.test point at this server" in line, line
    assert "port 80 is open to the internet" in line, line


def test_a_name_without_dns_says_so_and_the_other_domain_is_issued(tmp_path: Path, token_file: Path) -> None:
    """dnsmasq answers only *.example.test: nowhere.invalid has no record; site.example.test is issued all the same."""
    port = free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", port, dns) as ca:
        server = _server(tmp_path, ca, token_file, port, ["nowhere.invalid", "site.example.test"])
        try:
            log = wait_for_text(tmp_path / "server.log", "event=certificate_issued domain=site.example.test", 60)
        finally:
            stop_all(server)
    [line] = _failures(log)
    assert "domain=nowhere.invalid" in line and "could not resolve" in line, line
    assert "check that the DNS A/AAAA records of nowhere.invalid point at this server" in line, line


def test_another_web_server_on_port_80_is_named(tmp_path: Path, token_file: Path) -> None:
    """Port 80 answered by something else (an nginx left running, a proxy): the CA gets its 404, not the token."""
    other = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", other.server_address[1], dns) as ca:
            server = _server(tmp_path, ca, token_file, free_port(), ["site.example.test"])
            try:
                log = wait_for_text(tmp_path / "server.log", "event=certificate_failed", timeout=60)
            finally:
                stop_all(server)
    finally:
        other.shutdown()
    [line] = _failures(log)
    assert "the CA reached site.example.test on port 80 but not this server's answer" in line, line
    assert "nothing else (a proxy, a CDN, another web server) answers port 80" in line, line
