"""The process heap: kept while the tunnel is busy, given back once it has gone quiet.

glibc hands freed heap back to the system whenever 2x the largest freed chunk (~512 KiB here)
is free at its top, so every 256 KiB frame buffer grew the heap again and faulted its pages back
in: ~375,000 page faults and ~10,000 brk calls per GiB tunnelled, ~20-30% of the CPU per GiB.
``keep_freed_heap`` lets up to 8 MiB stay free instead. That is right while bytes flow, and
wrong for the hours a tunnel then sits idle holding it (an idle client at 29 MiB was at 33-37 MiB
after a bulk transfer). ``IdleTrim`` gives it back once a whole interval has passed with almost
no CPU used after a busy one: one ``malloc_trim`` per burst, nothing while traffic flows.

A user's MALLOC_* or GLIBC_TUNABLES settings win over both; other libcs are left alone.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import time
from typing import Callable

log = logging.getLogger("inlets")

#: Seconds between looks at the CPU the process used.
IDLE_TRIM_INTERVAL = 30.0
#: Share of an interval's CPU at or under which the process counts as idle: keepalive pings and a
#: few requests use far less than 1%; a bulk transfer or a busy site far more.
IDLE_CPU_SHARE = 0.01


def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc and the user has not tuned its allocator."""
    if any(name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError):
        return None
    return ctypes.CDLL(None)


def freeze_startup_objects() -> None:
    """Start-up objects leave the collector's view: full collections stop costing ms at p99. PyPy's
    collector has no such call (and no such cost): there it does nothing."""
    freeze = getattr(gc, "freeze", None)
    if freeze is not None:
        freeze()


def keep_freed_heap() -> None:
    """Up to 8 MiB may stay free at the heap's top; chunks of 1 MiB and more still come from mmap."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-1, 8 * 1024 * 1024)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD (setting either one stops glibc's own tuning)


def trimmer() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` (free pages anywhere in the heap go back), where there is one."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class IdleTrim:
    """Calls ``trim`` after the first idle interval that follows a busy one."""

    def __init__(self, trim: Callable[[], int], interval: float | None = None,
                 idle_share: float = IDLE_CPU_SHARE, clock: Callable[[], float] = time.process_time) -> None:
        self.trim, self.clock = trim, clock
        self.interval = IDLE_TRIM_INTERVAL if interval is None else interval
        self.idle_cpu = self.interval * idle_share
        self.busy = False
        self._used = 0.0  # CPU time at the last look (set by start)
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def for_this_process(cls) -> IdleTrim | None:
        """None where there is nothing to trim: not glibc, or the user tuned its allocator."""
        if _glibc() is None:
            return None
        trim = trimmer()
        return cls(trim) if trim is not None else None

    def start(self) -> None:
        self._used = self.clock()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self.look)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def look(self) -> None:
        """Once per interval (the timer's callback): trim if the interval was idle and the one before busy."""
        now = self.clock()
        used, self._used = now - self._used, now
        if used > self.idle_cpu:
            self.busy = True
        elif self.busy:
            self.busy = False
            released = self.trim()
            log.debug("event=heap_trimmed released=%s", bool(released))
        self._timer = asyncio.get_running_loop().call_later(self.interval, self.look)
