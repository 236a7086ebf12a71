"""Failed logins per source address: a token guesser is slowed to a crawl, and logged once.

A fixed window per source (an IPv6 address's /64, ``hosts.source_key``): after ``limit`` failures within ``window`` seconds, every
request from that source that takes a token is answered 429 until the window ends, the right token's too,
without comparing it (as OpenSSH's PerSourcePenalties): if the right one got in, the one answer that was not
429 told a guesser which it was. The price: a client behind the same address as a guesser (one NAT) is kept
out for the rest of that window; on the control port, sources in --login-limit-exempt are never asked here (as
OpenSSH's PerSourcePenaltyExemptList). The table is bounded, so a spray of sources cannot grow it without end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from ..core.hosts import source_key


@dataclass
class _Window:
    started: float
    failures: int = 0
    reported: bool = False  # logged once per window


class FailedLoginLimiter:
    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        self._clock = clock
        self._sources: dict[str, _Window] = {}

    def _current(self, source: str) -> _Window | None:
        """``source``'s window (an IPv6 source's /64's: ``source_key``), None when it has none or it has ended."""
        entry = self._sources.get(source_key(source))
        if entry is not None and self._clock() - entry.started >= self.window:
            del self._sources[source_key(source)]
            return None
        return entry

    def blocked(self, source: str) -> bool:
        entry = self._current(source)
        return entry is not None and entry.failures >= self.limit

    def retry_after(self, source: str) -> int:
        """Whole seconds until ``source``'s window ends (at least 1): a 429's Retry-After (RFC 6585), so a client
        that reads it waits that long instead of guessing."""
        entry = self._current(source)
        if entry is None:
            return 1
        return max(1, math.ceil(entry.started + self.window - self._clock()))

    def failed(self, source: str) -> bool:
        """Record a failure; True when this one crossed the limit (log it, once per window)."""
        entry = self._current(source)
        if entry is None:
            if len(self._sources) >= self.max_sources:
                self._evict()
            entry = self._sources[source_key(source)] = _Window(self._clock())
        entry.failures += 1
        if entry.failures >= self.limit and not entry.reported:
            entry.reported = True
            return True
        return False

    def _evict(self) -> None:
        now = self._clock()
        for source in [s for s, e in self._sources.items() if now - e.started >= self.window]:
            del self._sources[source]
        while len(self._sources) >= self.max_sources:  # still full: drop the oldest windows
            del self._sources[min(self._sources, key=lambda s: self._sources[s].started)]
