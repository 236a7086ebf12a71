"""A refused TLS handshake ends with OpenSSL's alert, then the close, on both TLS ports and both event loops.

The loops' TLS layers closed the socket on a failed handshake with the alert still unsent: a TLS 1.0 client
(control port or HTTPS) and a browser asking for a domain whose certificate was not issued yet saw an EOF
("unexpected eof while reading", curl's SSL_ERROR_SYSCALL), which reads like a network fault. Real sockets
through the real admission (``server.admission``), as the server listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from pathlib import Path

import pytest

from helpers.tunnel import make_tls, old_tls_client
from inlets_py.runtime.acme.letsencrypt import configure
from inlets_py.runtime.core.tls import server_context
from inlets_py.runtime.server.admission import Admission

NAME = "site.example.test"


def _modern_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _handshake(port: int, client: ssl.SSLContext) -> str:
    """What the client's handshake ended with: the alert's reason, or "eof"."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            client.wrap_socket(raw, server_hostname=NAME).close()
        except ssl.SSLEOFError:
            return "eof"
        except ssl.SSLError as exc:
            return str(exc.reason)
        except ConnectionResetError:
            return "reset"
    return "completed"


def _silent(port: int, client: ssl.SSLContext) -> tuple[bytes, float]:
    """A peer that sends its ClientHello and then neither reads the alert nor closes: what it got, and when
    the server closed (it used to wait for the 10 s handshake timeout)."""
    probe = client.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        probe.do_handshake()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        raw.sendall(outgoing.read())
        began, received = time.monotonic(), b""
        while data := raw.recv(4096):
            received += data
        return received, time.monotonic() - began


async def _refusals(context: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, tuple[bytes, float]]:
    loop = asyncio.get_running_loop()
    admission = Admission(16, 16, listener="https")
    server = await loop.create_server(lambda: admission.connection(asyncio.Protocol, context), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        told = await loop.run_in_executor(None, _handshake, port, client)
        silent = await loop.run_in_executor(None, _silent, port, client)
        return told, silent
    finally:
        server.close()
        admission.abort_handshakes()


def _run(loop_name: str, context: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, tuple[bytes, float]]:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed: only asyncio's TLS layer is checked")
        return uvloop.run(_refusals(context, client))
    return asyncio.run(_refusals(context, client))


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_tls_1_0_on_the_control_port_gets_the_protocol_version_alert(loop_name: str, tmp_path: Path) -> None:
    files = make_tls(tmp_path)
    told, (received, seconds) = _run(loop_name, server_context(files.cert, files.key), old_tls_client())
    assert told == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert received[:1] == b"\x15" and received[-2:] == b"\x02\x46", received.hex()  # alert record: fatal, 70
    assert seconds < 2, f"closed after {seconds:.1f}s"


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_domain_with_no_certificate_yet_gets_internal_error_as_from_caddy(loop_name: str, tmp_path: Path) -> None:
    manager = configure([NAME], tmp_path / "le", issuer="https://127.0.0.1:9/dir")  # never started: nothing issued
    told, (received, seconds) = _run(loop_name, manager.context, _modern_client())
    assert told == "TLSV1_ALERT_INTERNAL_ERROR"
    assert received[:1] == b"\x15" and received[-2:] == b"\x02\x50", received.hex()  # alert record: fatal, 80
    assert seconds < 2, f"closed after {seconds:.1f}s"


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_domain_not_issued_yet_gets_internal_error_not_another_domains_certificate(loop_name: str,
                                                                                     tmp_path: Path) -> None:
    """Its neighbour issued, this one not (its DNS not pointed here yet): a name mismatch read as misconfigured."""
    issued = "www.example.test"
    site = make_tls(tmp_path / "site", [issued])
    manager = configure([issued, NAME], tmp_path / "le", issuer="https://127.0.0.1:9/dir")
    manager.store.save(issued, site.cert.read_bytes(), site.key.read_bytes())
    manager.load()
    told, (received, seconds) = _run(loop_name, manager.context, _modern_client())  # SNI: NAME
    assert told == "TLSV1_ALERT_INTERNAL_ERROR"
    assert received[-2:] == b"\x02\x50" and seconds < 2, (received.hex(), seconds)
