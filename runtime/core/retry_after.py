"""How long a server asked us to wait: its ``Retry-After`` (RFC 9110 10.2.3): an ACME server's (RFC 8555 6.6), a
cloud API's, a tunnel server's that refuses logins from this address for a while (its 429).

Let's Encrypt sends it with a rate-limit refusal (HTTP 429, ``urn:ietf:params:acme:error:rateLimited``) and
when down for maintenance (HTTP 503). Retrying sooner only meets the same refusal, and each refused try can
count against the limit again. Pure functions: the clock is an argument.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re

#: The longest wait taken from a server (a wrong clock or a typo in the CA's answer must not stop renewals
#: for months). Let's Encrypt's longest limit, 5 duplicate certificates a week, refills one every 34 hours.
RETRY_AFTER_MAX = 3 * 24 * 3600.0
#: Statuses whose Retry-After is a schedule for the next try (on a 200, it paces polling: acme's own business).
STATUSES = (429, 503)
RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"
_DELTA = re.compile(r"[0-9]+")  # delta-seconds is 1*DIGIT: ASCII digits only, no sign, no fraction


def parse(value: str | None, now: datetime.datetime) -> float | None:
    """Seconds to wait from ``now`` (aware, UTC) for a ``Retry-After`` value, either form: delta-seconds
    (``120``) or an HTTP-date (``Wed, 21 Oct 2026 07:28:00 GMT``), in [0, ``RETRY_AFTER_MAX``]. A date
    already past is 0. None when absent or malformed: the normal backoff applies."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA.fullmatch(text):
        digits = text.lstrip("0") or "0"
        return clamp(float(digits) if len(digits) <= 12 else RETRY_AFTER_MAX)  # 13 digits and more: centuries
    if not text or text[0].isdigit():
        return None  # "1.5", "-5", "120s": neither form (a date starts with a day name)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime form, or "-0000": HTTP-dates are in GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return clamp((when - now).total_seconds())


def clamp(seconds: object) -> float | None:
    """``seconds`` as a wait in [0, ``RETRY_AFTER_MAX``]; None unless it is a finite number."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    return min(max(float(seconds), 0.0), RETRY_AFTER_MAX)
