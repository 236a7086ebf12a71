"""An ACME server's Retry-After on a refusal sets the next try (RFC 8555 6.6, RFC 9110 10.2.3).

Let's Encrypt answers a rate-limited order with HTTP 429 ``urn:ietf:params:acme:error:rateLimited`` and a
Retry-After, and everything with 503 and a Retry-After while down for maintenance. Neither was read: the
next try came after the usual backoff (60 s doubling to 1 h), refused again each time. Pebble has no rate
limits, so a small ACME server on loopback (helpers/fake_acme.py) answers here, over real HTTPS, as Let's
Encrypt does on the wire: a directory, nonces, an account, then the refusal. The server runs its real ACME
child process against it.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from helpers.fake_acme import AcmeHandler, serve
from helpers.http import Stack
from helpers.letsencrypt import wait_until
from helpers.tunnel import free_port
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import configure
from inlets_py.runtime.core.retry_after import RETRY_AFTER_MAX, parse
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

    class Refusing(AcmeHandler):
        now = 0.0  # the server's clock at this answer, in its Date header and a Retry-After made from it

        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(self.now, usegmt=True)

        def _answer(self, status: int, body: dict | str | None, headers: dict[str, str] | None = None) -> None:
            if not self.now:  # not set by _refusal for this answer
                self.now = time.time() + skew
            super()._answer(status, body, headers)

        def _refusal(self) -> None:
            self.now = time.time() + skew
            value = retry_after(self.now) if callable(retry_after) else retry_after
            headers = {} if value is None else {"Retry-After": value}
            self._answer(status, RATE_LIMITED if status == 429 else "down for maintenance", headers)

        def on_get(self) -> None:
            self._refusal() if refuse == "directory" else self.directory()

        def on_post(self) -> None:
            self._refusal()

    with serve(Refusing, tls) as found:
        yield found


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
