"""An ACME server's Retry-After on a refusal sets the next try (RFC 8555 6.6, RFC 9110 10.2.3).

Let's Encrypt answers a rate-limited order with HTTP 429 ``urn:ietf:params:acme:error:rateLimited`` and a
Retry-After, and everything with 503 and a Retry-After while down for maintenance. Neither was read: the
next try came after the usual backoff (60 s doubling to 1 h), refused again each time. Pebble has no rate
limits, so a small ACME server on loopback answers here, over real HTTPS, as Let's Encrypt does on the wire:
a directory, nonces, an account, then the refusal. The server runs its real ACME child process against it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest

from helpers.http import Stack
from helpers.letsencrypt import wait_until
from helpers.tunnel import free_port
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import configure
from inlets_py.runtime.acme.retry_after import RETRY_AFTER_MAX, parse
from inlets_py.runtime.core.tls import server_context
from test_letsencrypt import DOMAINS, start_server

RATE_LIMITED = {"type": "urn:ietf:params:acme:error:rateLimited", "status": 429,
                "detail": "too many certificates (5) already issued for this exact set of domains in the last 168h0m0s"}


RetryAfter = str | Callable[[float], str] | None  # a value, or one made from the server's clock at the answer


@contextmanager
def refusing_acme(tls, refuse: str, status: int, retry_after: RetryAfter,
                  skew: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """An ACME server on loopback (HTTPS with ``tls``) refusing at ``refuse`` ("directory" or "order") with
    ``status`` and ``retry_after``, its clock ``skew`` seconds off; yields its directory URL and the requests
    it saw."""
    seen: list[str] = []

    class Acme(BaseHTTPRequestHandler):
        now = 0.0  # the server's clock at this answer, in its Date header and a Retry-After made from it

        def log_message(self, *_args) -> None:
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(self.now, usegmt=True)

        def _answer(self, status: int, body: dict | str | None, headers: dict[str, str] | None = None) -> None:
            data = (json.dumps(body) if isinstance(body, dict) else body or "").encode()
            if not self.now:  # not set by _refusal for this answer
                self.now = time.time() + skew
            self.send_response(status)  # with a Date header, as every HTTP server sends
            self.send_header("Replay-Nonce", base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode())
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/problem+json" if status >= 400 and isinstance(body, dict)
                             else "application/json" if isinstance(body, dict) else "text/plain")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _refusal(self) -> None:
            self.now = time.time() + skew
            value = retry_after(self.now) if callable(retry_after) else retry_after
            headers = {} if value is None else {"Retry-After": value}
            self._answer(status, RATE_LIMITED if status == 429 else "down for maintenance", headers)

        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            if refuse == "directory":
                return self._refusal()
            base = f"https://127.0.0.1:{self.server.server_port}"
            self._answer(200, {"newNonce": f"{base}/nonce", "newAccount": f"{base}/account",
                               "newOrder": f"{base}/order"})

        def do_HEAD(self) -> None:
            seen.append(f"HEAD {self.path}")
            self._answer(200, None)

        def do_POST(self) -> None:
            seen.append(f"POST {self.path}")
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/account":
                base = f"https://127.0.0.1:{self.server.server_port}"
                return self._answer(201, {"status": "valid"}, {"Location": f"{base}/account/1"})
            self._refusal()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Acme)
    server.socket = server_context(tls.cert, tls.key).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/directory", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _failure(tmp_path, tls, token, caplog, refuse: str, status: int, retry_after: RetryAfter, skew: float = 0.0):
    """The manager's first failure against the refusing server: (log line, seconds to its next look, when it was
    looked at, the requests the server saw)."""
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    with refusing_acme(tls, refuse, status, retry_after, skew) as (url, seen):
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=url, ca_bundle=tls.ca, retry=1.0)
            start_server(stack, tls, token, HttpsFront(manager, free_port()), free_port())
            wait_until(lambda: _failed(caplog), 30, "the refusal logged")
            now = datetime.datetime.now(datetime.timezone.utc)
            wait = stack.run(_next_look(manager, now))
        finally:
            stack.close()
    return _failed(caplog)[0], wait, now, list(seen)


def _failed(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "certificate_failed" in r.getMessage()]


async def _next_look(manager, now: datetime.datetime) -> float:
    """Seconds until the manager looks again, asked on its own loop (its retry deadlines are in that clock)."""
    return manager.next_check(now, asyncio.get_running_loop().time())


def _retry_at(line: str) -> datetime.datetime:
    found = re.search(r" retry_at=(\S+)", line)
    assert found, line
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def test_a_rate_limited_order_is_tried_again_after_the_retry_after_seconds(tmp_path, tls, token, caplog) -> None:
    line, wait, now, seen = _failure(tmp_path, tls, token, caplog, "order", 429, "7200")
    assert seen[-1] == "POST /order", seen
    assert "rateLimited" in line and "too many certificates (5) already issued" in line, line
    assert " retry_in=7200s " in line and " retry_after=7200s" in line, line  # not the 1 s backoff
    assert 7190 <= wait <= 7200, wait
    assert abs((_retry_at(line) - now).total_seconds() - 7200) <= 5, line  # the next try's time, in UTC


def test_maintenance_with_an_http_date_is_waited_for_and_said_in_words(tmp_path, tls, token, caplog) -> None:
    """A 503 on the directory (Let's Encrypt's maintenance): it read "is not an ACME directory (HTTP 503 ...)",
    sending the user to check the URL, and the HTTP-date form was not read either. The CA's clock is a day
    behind this one here: its date, three hours ahead of its own Date, still means three hours."""
    in_3_hours = lambda now: email.utils.formatdate(now + 3 * 3600, usegmt=True)  # noqa: E731 - "Wed, 02 Dec ..."
    line, wait, now, seen = _failure(tmp_path, tls, token, caplog, "directory", 503, in_3_hours, skew=-86400)
    assert seen == ["GET /directory"], seen
    assert "answered HTTP 503 Service Unavailable (busy or down for maintenance)" in line, line
    assert "not an ACME directory" not in line, line
    assert " retry_in=10800s " in line and " retry_after=10800s" in line, line  # counted from the answer's Date
    assert 3 * 3600 - 15 <= wait <= 3 * 3600, wait
    assert abs((_retry_at(line) - now).total_seconds() - 3 * 3600) <= 5, line


@pytest.mark.parametrize("value", ["soon", None])
def test_a_refusal_without_a_usable_retry_after_keeps_the_backoff(tmp_path, tls, token, caplog, value) -> None:
    line, wait, _, _ = _failure(tmp_path, tls, token, caplog, "order", 429, value)
    assert " retry_in=1s " in line and "retry_after=" not in line, line
    assert wait <= 1.0, wait


# ------------------------------------------------------------------ the header alone

NOW = datetime.datetime(2026, 10, 21, 7, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0),
    (" 120 ", 120.0),  # whitespace around a field value is not part of it
    ("0", 0.0),
    ("Wed, 21 Oct 2026 07:28:00 GMT", 1680.0),  # IMF-fixdate
    ("Wednesday, 21-Oct-26 07:28:00 GMT", 1680.0),  # RFC 850, obsolete but to be read
    ("Wed Oct 21 07:28:00 2026", 1680.0),  # asctime, obsolete but to be read
    ("Wed, 21 Oct 2026 06:00:00 GMT", 0.0),  # already past: at once (the backoff still applies)
    ("31536000", RETRY_AFTER_MAX),  # a year: capped
    ("Wed, 21 Oct 2036 07:28:00 GMT", RETRY_AFTER_MAX),
    ("9" * 5000, RETRY_AFTER_MAX),  # beyond int()'s 4,300 digits: capped, no ValueError
    ("-5", None), ("1.5", None), ("120s", None), ("", None), ("soon", None), (None, None),
    ("\u0661\u0662\u0660", None),  # Arabic-Indic digits: int() takes them, HTTP does not
    ("Wed, 32 Oct 2026 07:28:00 GMT", None), ("Wed, 21 Oct 2026 25:00:00 GMT", None),
])
def test_retry_after_values(value, seconds) -> None:
    assert parse(value, NOW) == seconds


def test_the_schedule_takes_the_longer_of_the_backoff_and_the_retry_after(tmp_path) -> None:
    manager = configure([DOMAINS[0]], tmp_path / "le", issuer="staging", retry=60.0)
    assert manager.retry_delay(1) == 60.0 and manager.retry_delay(1, 7200.0) == 7200.0
    assert manager.retry_delay(3, 10.0) == 240.0  # a shorter wait asked for does not hurry the backoff
    assert manager.retry_delay(1, 10**9) == RETRY_AFTER_MAX  # from the child: clamped again
    assert manager.retry_delay(1, -5.0) == 60.0 and manager.retry_delay(1, float("nan")) == 60.0
