"""The certificate manager over long runs, on real parts: a real ACME server (pebble) or a closed port,
the tunnel server's real listeners, real TLS handshakes.

What a Caddy or certbot user relies on without looking: retries go on however long the CA stays out of
reach, an expired certificate being served is said, and a certificate due on arrival does not make the
server ask the CA again and again.
"""

from __future__ import annotations

import logging

from helpers.http import Stack
from helpers.letsencrypt import wait_until
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
