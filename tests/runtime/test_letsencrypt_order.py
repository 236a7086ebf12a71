"""An order the ACME server validated but does not issue (it stays "processing"), as the server meets it.

Let's Encrypt answers "processing" while it signs; a CA in trouble can keep an order there. Pebble never
does, so a small ACME server on loopback (helpers/fake_acme.py) answers it over real HTTPS to the server's
real ACME child process.
"""

from __future__ import annotations

import dataclasses
import logging

from helpers.fake_acme import stuck_acme
from helpers.http import Stack
from helpers.letsencrypt import dnsmasq, pebble, wait_until
from helpers.tunnel import free_port
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import configure
from test_letsencrypt import DOMAINS, start_server


def test_an_order_stuck_processing_is_not_called_a_failed_validation(tmp_path, tls, token, caplog) -> None:
    """It read "the ACME server did not validate within 90s": the domain had been validated, and the line sent
    the user to check DNS and port 80. Now it says validation passed and the CA did not issue, and what next."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    failed = lambda: [r.getMessage() for r in caplog.records if "certificate_failed" in r.getMessage()]  # noqa: E731
    with stuck_acme(tls, DOMAINS[0]) as (url, seen):
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=url, ca_bundle=tls.ca, retry=30.0)
            manager.account = dataclasses.replace(manager.account, timeout=3.0)
            start_server(stack, tls, token, HttpsFront(manager, free_port()), free_port())
            wait_until(failed, 40, "the stuck order given up")
        finally:
            stack.close()
    line = failed()[0]
    assert "POST /finalize/1" in seen and seen.count("POST /order/1") >= 1, seen
    assert "did not validate" not in line, line
    assert "validated" in line and " stayed 'processing'" in line and "did not issue" in line, line
    assert "asked again" in line and " retry_in=30s " in line and "\n" not in line, line
    assert manager.certs == {}


def test_a_refused_nonce_is_said_as_the_cas_doing_and_retried(tmp_path, tls, token, caplog) -> None:
    """Pebble refusing every nonce (badNonce; acme retries each request once): the line read "the ACME server
    refused a.example.test: ...badNonce :: JWS has an invalid anti-replay nonce: ...", as if the domain were
    refused, with nothing to do. Now it names the nonce, says there is nothing to change here, and it is retried."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    failed = lambda: [r.getMessage() for r in caplog.records if "certificate_failed" in r.getMessage()]  # noqa: E731
    http_port = free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns, nonce_reject=100) as ca:
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=ca.directory, ca_bundle=ca.api_ca, retry=30.0)
            start_server(stack, tls, token, HttpsFront(manager, free_port()), http_port)
            wait_until(failed, 30, "the refused nonce logged")
        finally:
            stack.close()
    line = failed()[0]
    assert "refused a.example.test" not in line, line
    assert "badNonce" in line and "nonce" in line and "nothing to change" in line and "asked again" in line, line
    assert " retry_in=30s " in line and "\n" not in line, line
