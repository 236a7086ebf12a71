"""What the server says when the --letsencrypt-issuer's own HTTPS fails, each case a real socket on loopback
(a plain-HTTP server, TLS servers with real certificates) reached by the real ACME child process."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from helpers.http import Stack
from helpers.letsencrypt import wait_until
from helpers.process import inlets, one_line_error
from helpers.tunnel import free_port, make_tls
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import configure
from test_letsencrypt import DOMAINS, start_server


class _Nothing(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def plain_http() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Nothing)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def tls_server(tmp_path) -> Iterator[tuple[int, object]]:
    """A TLS server presenting a certificate for other.test only; yields (port, its TlsFiles)."""
    files = make_tls(tmp_path / "ca-tls", ["other.test"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                context.wrap_socket(conn, server_side=True).close()
            except OSError:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], files
    done.set()
    thread.join(5)
    listener.close()


def _failure(tmp_path, tls, token, caplog, issuer: str, ca_bundle=None) -> str:
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    stack = Stack()
    try:
        manager = configure([DOMAINS[0]], tmp_path / "le", issuer=issuer, ca_bundle=ca_bundle, retry=30.0)
        start_server(stack, tls, token, HttpsFront(manager, free_port()), free_port())
        failed = lambda: [r.getMessage() for r in caplog.records if "event=certificate_failed " in r.getMessage()]  # noqa: E731
        wait_until(failed, 15, "the failure")
        return failed()[0]
    finally:
        stack.close()


def test_a_plain_http_port_is_not_called_a_certificate_problem(tmp_path, tls, token, caplog, plain_http) -> None:
    line = _failure(tmp_path, tls, token, caplog, f"https://127.0.0.1:{plain_http}/dir")
    assert "does not speak HTTPS on that port (plain HTTP?): check the port in --letsencrypt-issuer" in line, line
    assert "--letsencrypt-ca" not in line


def test_a_certificate_for_another_name_is_said(tmp_path, tls, token, caplog, tls_server) -> None:
    port, files = tls_server
    line = _failure(tmp_path, tls, token, caplog, f"https://127.0.0.1:{port}/dir", ca_bundle=files.ca)
    assert "its HTTPS certificate is for another name: give the name it was issued for" in line, line


def test_a_letsencrypt_ca_already_given_is_named_not_asked_for(tmp_path, tls, token, caplog, tls_server) -> None:
    port, _files = tls_server
    line = _failure(tmp_path, tls, token, caplog, f"https://127.0.0.1:{port}/dir", ca_bundle=tls.ca)  # another CA
    assert f"its HTTPS certificate is not signed by a CA in --letsencrypt-ca {tls.ca.resolve()}" in line, line


@pytest.mark.parametrize("issuer", [
    "https://acme:S3CRETPW@127.0.0.1:{dead}/dir",
    "http://acme:S3CRETPW@127.0.0.1:{dead}/dir",  # refused for its scheme, in words that quoted the URL
    "https://acme:S3CRETPW@[::1/dir",  # malformed, likewise
    "acme:S3CRETPW@127.0.0.1/dir",  # https:// left out
], ids=["https", "http", "malformed", "no-scheme"])
def test_an_issuer_url_with_a_password_is_refused_without_showing_it(tmp_path, issuer: str) -> None:
    """A user name and password in --letsencrypt-issuer went into the log at every retry ("cannot reach the ACME
    server https://acme:S3CRETPW@..."), or into the error refusing the URL: refused as --url and --upstream refuse
    them, before anything quotes the URL."""
    result = inlets("http", "server", "--plaintext", "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
                    "--data-addr", "127.0.0.1", "--port", str(free_port()), "--https-port", str(free_port()),
                    "--token", "tok12345", "--letsencrypt-domain", "example.com",
                    "--letsencrypt-path", str(tmp_path / "le"), "--letsencrypt-issuer",
                    issuer.format(dead=free_port()), timeout=10)
    one_line_error(result, "--letsencrypt-issuer must not carry a user name or password (the ACME account key is the "
                           "credential): leave out the part up to '@'")
    assert "S3CRETPW" not in result.stderr + result.stdout and not (tmp_path / "le").exists()
