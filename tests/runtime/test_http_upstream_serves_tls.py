"""An ``http://`` upstream that serves TLS, through a real ``inlets http client`` process: a TLS server never speaks
first and ends a plain-HTTP connection without a byte (OpenSSL with a FIN, Python's ssl with a reset), so every user
got 502 "upstream closed the connection" and the client, the one side that knows the upstream's URL, logged nothing.
Now it says so once per upstream, with the https:// URL to give; not for an upstream that answers, then closes."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from helpers.http import LOOPBACK, Stack, need, raw_request
from helpers.process import spawn, terminate, wait_for_text, wait_port

from inlets_py.runtime.core.certs import generate_ca, issue_server_cert

OPENSSL_PORT = 22450  # openssl s_server takes no port 0: one of this test's fixed ports
EVENT = "event=upstream_closed_without_answer"


@pytest.fixture
def stack():
    stack = Stack()
    yield stack
    stack.close()


def _tls_files(folder: Path) -> tuple[Path, Path]:
    pem = issue_server_cert(generate_ca("upstream CA"), ["localhost"])
    (folder / "up.crt").write_bytes(pem.cert)
    (folder / "up.key").write_bytes(pem.key)
    return folder / "up.crt", folder / "up.key"


async def _answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plain HTTP upstream that answers each connection's first request with ``Connection: close``, then closes."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


def test_an_http_upstream_serving_tls_is_said_once_with_its_https_url(stack, tmp_path, tls, token, token_file) -> None:
    openssl = need("openssl")
    cert, key = _tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    python_tls = stack.upstream("python-tls", ssl=context)[1]  # answers plain HTTP with a reset
    answers = stack.serve(_answer_then_close)
    server = stack.server(tls, token)
    host, port = server.control.addresses[0][:2]
    ossl = subprocess.Popen([openssl, "s_server", "-accept", f"{LOOPBACK}:{OPENSSL_PORT}", "-www", "-quiet",
                             "-cert", str(cert), "-key", str(key)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # answers it with a FIN
    log = tmp_path / "client.log"
    client = None
    try:
        wait_port(OPENSSL_PORT)
        client = spawn("http", "client", "--url", f"wss://{host}:{port}", "--token-file", str(token_file),
                       "--tls-ca", str(tls.ca), "--upstream", f"python.test=http://{LOOPBACK}:{python_tls}",
                       "--upstream", f"openssl.test=http://{LOOPBACK}:{OPENSSL_PORT}",
                       "--upstream", f"answers.test=http://{LOOPBACK}:{answers}", log=log)
        wait_for_text(log, "event=connected")
        for _ in range(4):
            for name, status in (("python.test", b"502"), ("openssl.test", b"502"), ("answers.test", b"200")):
                request = f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
                answer = raw_request(server.data_port, request)
                assert answer.startswith(b"HTTP/1.1 " + status + b" "), (name, answer)
        deadline = time.monotonic() + 10  # the client logs as the upstream closes; the 502 comes after it
        while log.read_text().count(EVENT) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if client is not None:
            terminate(client)
        ossl.terminate()
        ossl.wait(5)
    lines = [line for line in log.read_text().splitlines() if EVENT in line]
    assert len(lines) == 2, lines  # one per upstream that closed without answering, not one per request
    for upstream in (f"{LOOPBACK}:{python_tls}", f"{LOOPBACK}:{OPENSSL_PORT}"):
        line = next((line for line in lines if f"upstream=http://{upstream} " in line), None)
        assert line is not None, (upstream, lines)
        assert "level=WARNING" in line and f"use https://{upstream}" in line, line
    assert not any(f":{answers}" in line for line in lines), lines  # it answered, then closed: no hint
