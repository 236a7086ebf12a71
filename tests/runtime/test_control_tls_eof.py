"""A TLS connection to the control port that closes right after its handshake (a health check, a
scanner) is no news: the server logs nothing about it, asyncio's own warnings included."""

from __future__ import annotations

import signal
import socket
import ssl
import time
from pathlib import Path

from helpers.process import server_args, spawn, wait_port
from helpers.tunnel import TlsFiles, free_port


def test_tls_closed_right_after_the_handshake_logs_no_asyncio_warning(
        tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    context = ssl.create_default_context(cafile=str(tls.ca))
    try:
        wait_port(control)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", control), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.unwrap()  # close_notify at once, with the handshake's last flight
        time.sleep(1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    log = (tmp_path / "server.log").read_text()
    assert "eof_received" not in log, log
    assert "Traceback" not in log
