"""The certificate manager over long runs, on real parts: a real ACME server (pebble) or a closed port,
the tunnel server's real listeners, real TLS handshakes.

What a Caddy or certbot user relies on without looking: retries go on however long the CA stays out of
reach, an expired certificate being served is said, a certificate due on arrival does not make the
server ask the CA again and again, and a full disk does not have the CA issue certificates that are lost.
"""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers.http import Stack
from helpers.letsencrypt import dnsmasq, fill_disk, pebble, wait_until
from helpers.tunnel import free_port
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import RETRY_MAX, configure
from test_letsencrypt import DOMAINS, start_server


def _lines(caplog, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event} " in r.getMessage()]


def test_retries_go_on_after_weeks_of_failures(tmp_path, tls, token, caplog) -> None:
    """The ~1,019th failure in a row raised OverflowError in the retry delay: the renewal task ended, nothing
    was logged, and the certificate was never asked for again until a restart."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    stack = Stack()
    try:
        manager = configure([DOMAINS[0]], tmp_path / "le", issuer=f"https://127.0.0.1:{free_port()}/dir", retry=60.0)
        manager._failures[DOMAINS[0]] = 1100  # what six weeks of hourly retries leave (DNS not yet pointed here)
        start_server(stack, tls, token, HttpsFront(manager, free_port()), free_port())
        wait_until(lambda: _lines(caplog, "certificate_failed"), 15, "the failure logged")
        assert f"retry_in={RETRY_MAX:.0f}s" in _lines(caplog, "certificate_failed")[0]
        assert manager._task is not None and not manager._task.done()
        assert manager.retry_delay(10**6) == RETRY_MAX
    finally:
        stack.close()


def _served_not_after(port: int, name: str) -> datetime.datetime:
    """The notAfter of the certificate the HTTPS port presents (verification off: it is expired)."""
    from cryptography import x509

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as conn:
            return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).not_valid_after_utc


def test_an_expired_certificate_being_served_is_said(tmp_path, tls, token, caplog) -> None:
    """A 3 s certificate from pebble, then pebble gone: a restart after expiry serves the expired certificate
    (better than nothing) and says so; it logged "certificate_loaded" at info, and failures read like any retry."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    http_port, https_port = free_port(), free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns, validity=3) as ca:
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=ca.directory, ca_bundle=ca.api_ca, retry=30.0)
            start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
            wait_until(lambda: manager.issued == 1, 20, "the certificate")
        finally:
            stack.close()
    not_after = manager.store.load(DOMAINS[0]).validity.not_after
    for note in (tmp_path / "le").rglob("retry.json"):  # the 3 s certificate came due at once: a restart would wait
        note.unlink()
    time.sleep(max(0.0, (not_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1.1)
    caplog.clear()
    stack = Stack()
    try:
        manager = configure([DOMAINS[0]], tmp_path / "le", issuer=ca.directory, ca_bundle=ca.api_ca, retry=30.0)
        start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
        assert _served_not_after(https_port, DOMAINS[0]) == not_after  # still served
        expired = [r for r in caplog.records if "event=certificate_expired " in r.getMessage()]
        assert len(expired) == 1 and expired[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
        assert f"domain={DOMAINS[0]}" in expired[0].getMessage()
        wait_until(lambda: _lines(caplog, "certificate_failed"), 15, "the renewal failing (pebble is gone)")
        stamp = not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert f"serving=expired not_after={stamp}" in _lines(caplog, "certificate_failed")[0]
    finally:
        stack.close()


def test_a_certificate_due_on_arrival_is_not_asked_for_again_at_once(tmp_path, tls, token, caplog) -> None:
    """pebble issuing 1 s certificates stands for a clock months ahead: each certificate is due as it arrives.
    The server re-issued back to back (3 in 8 s), as it would have spent Let's Encrypt's duplicate limit."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    http_port, https_port = free_port(), free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns, validity=1) as ca:
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=ca.directory, ca_bundle=ca.api_ca, retry=30.0)
            start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
            wait_until(lambda: manager.issued == 1, 20, "the certificate")
            time.sleep(5)
            assert manager.issued == 1
            warned = _lines(caplog, "certificate_due_on_arrival")
            assert len(warned) == 1 and "is this machine's clock right?" in warned[0] and "retry_in=30s" in warned[0]
        finally:
            stack.close()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 64 KiB tmpfs, for a disk that fills up (root only: mount)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_is_said_before_the_ca_issues_certificates_that_are_lost(tmp_path, tls, token, caplog,
                                                                          small_disk) -> None:
    """With the disk full at renewal, each retry had the CA issue a certificate that could not be stored (pebble
    issued one per retry): against Let's Encrypt, its 5 duplicate certificates a week spent in minutes."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    http_port, https_port = free_port(), free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns, validity=4) as ca:
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], small_disk / "le", issuer=ca.directory, ca_bundle=ca.api_ca, retry=0.5)
            start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
            wait_until(lambda: manager.issued == 1, 20, "the certificate")
            fill_disk(small_disk)
            wait_until(lambda: len(_lines(caplog, "certificate_failed")) >= 3, 30, "three renewals failing")
        finally:
            stack.close()
        issued = [line for line in ca.log.read_text().splitlines() if "Issued certificate" in line]
    assert len(issued) == 1, issued
    line = _lines(caplog, "certificate_failed")[0]
    assert f"cannot store certificates in {manager.store.dir}: no space left on device (nothing was asked of the CA)" \
        in line, line
    assert manager.store.load(DOMAINS[0]) is not None  # the stored certificate and key are intact
