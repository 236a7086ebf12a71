"""A real ACME server for the Let's Encrypt tests: Debian's pebble on loopback.

Pebble validates HTTP-01 by resolving the domain with a dnsmasq started here
(``*.example.test`` -> 127.0.0.1) and connecting to ``http_port``, the port the tunnel
server under test answers challenges on. Its own HTTPS API uses a certificate made
here (the Debian package ships none); the roots it issues from are fetched from its
management port, so clients verify the served chains for real.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from helpers.http import need
from helpers.tunnel import free_port, make_tls, udp_free_port

DOMAIN_SUFFIX = "example.test"



@dataclass
class Pebble:
    directory: str  # ACME directory URL
    api_ca: Path  # trust for pebble's own HTTPS (its API and management port)
    http_port: int  # where pebble connects to validate http-01
    management_port: int
    log: Path

    def root_pem(self) -> bytes:
        """The root pebble issues from (new on every pebble start)."""
        context = ssl.create_default_context(cafile=str(self.api_ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management_port}/roots/0", context=context,
                                    timeout=5) as response:
            return response.read()

    def client_context(self, directory: Path) -> ssl.SSLContext:
        """A TLS client that trusts only pebble's root: how a browser would trust Let's Encrypt."""
        root = directory / "pebble-root.pem"
        root.write_bytes(self.root_pem())
        context = ssl.create_default_context(cafile=str(root))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited early ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened: {log.read_text()[-2000:]}")


@contextmanager
def dnsmasq(directory: Path) -> Iterator[int]:
    """A DNS server on loopback answering 127.0.0.1 for every name under example.test.

    dnsmasq binds the port for UDP and TCP: a port another test just took for TCP makes it
    exit, so up to three ports are tried.
    """
    exe = need("dnsmasq")
    log = directory / "dnsmasq.log"
    for _attempt in range(3):
        port = udp_free_port()
        argv = [exe, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root",
                f"--pid-file={directory / 'dnsmasq.pid'}", f"--address=/{DOMAIN_SUFFIX}/127.0.0.1",
                "--log-facility=-"]
        process = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        time.sleep(0.2)
        if process.poll() is None:
            break
    else:
        raise AssertionError(f"dnsmasq did not start: {log.read_text()}")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(5)


@contextmanager
def pebble(directory: Path, http_port: int, dns_port: int, validity: int | None = None,
           nonce_reject: int = 0) -> Iterator[Pebble]:
    """Pebble on loopback; ``validity`` (seconds) makes short-lived certificates for renewal tests; ``nonce_reject``
    is the percentage of good nonces it refuses as ``badNonce``."""
    exe = need("pebble")
    directory.mkdir(parents=True, exist_ok=True)
    tls = make_tls(directory / "pebble-tls", ["127.0.0.1", "localhost"])
    listen, management, tls_port = free_port(), free_port(), free_port()
    config = {
        "listenAddress": f"127.0.0.1:{listen}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(tls.cert),
        "privateKey": str(tls.key),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity is not None:
        config["certificateValidityPeriod"] = validity
    path = directory / "pebble.json"
    path.write_text(json.dumps({"pebble": config}))
    log = directory / "pebble.log"
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": str(nonce_reject), "PEBBLE_AUTHZREUSE": "0"}
    process = subprocess.Popen([exe, "-config", str(path), "-dnsserver", f"127.0.0.1:{dns_port}"],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=directory)
    try:
        _wait_port(listen, process, log)
        _wait_port(management, process, log)
        yield Pebble(f"https://127.0.0.1:{listen}/dir", tls.ca, http_port, management, log)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def served_certificate(port: int, name: str, context: ssl.SSLContext) -> dict:
    """The certificate the HTTPS port presents for SNI ``name``, verified by ``context``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return {"cert": tls.getpeercert(), "der": tls.getpeercert(binary_form=True), "version": tls.version()}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def fill_disk(folder: Path) -> None:
    """Fill the small tmpfs ``folder`` is on until it refuses (ENOSPC): a full disk. Bounded (40 MiB at most)."""
    import errno

    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(10_000):  # a tmpfs of a few hundred KiB ends the loop at ENOSPC long before
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
