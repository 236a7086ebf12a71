"""core/heap.py: freed heap is kept while busy and given back once the process has gone quiet."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from inlets_py import runtime
from inlets_py.runtime.core.heap import IdleTrim

def _is_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False


GLIBC = _is_glibc()


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and mallopt are glibc's")
def test_an_idle_process_gives_back_the_heap_a_burst_left() -> None:
    """Every command's event loop (``run_until_signalled``): 6 MiB freed at the heap's top stays with the
    process (under keep_freed_heap's 8 MiB), until an idle interval follows the busy one."""
    probe = f"""
import asyncio, sys, time
from {runtime.__name__}.core import heap
from {runtime.__name__}.cli import lifecycle
heap.IDLE_TRIM_INTERVAL = 0.3

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def start():
    pass

async def main():
    burst = [bytearray(256 * 1024) for _ in range(24)]  # heap chunks: under the 1 MiB mmap threshold
    began = time.process_time()
    while time.process_time() - began < 0.1:  # busy: more than 1% of an interval's CPU
        pass
    del burst
    await asyncio.sleep(0)
    kept = rss()
    await asyncio.sleep(0.2)  # still within the busy interval: nothing is given back yet
    still = rss()
    await asyncio.sleep(1.0)  # whole idle intervals follow
    print(kept, still, rss())

lifecycle.run_until_signalled(start, main)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    kept, still, after = map(int, result.stdout.split())
    assert kept - still < 1024, (kept, still)  # busy: kept for the next burst
    assert kept - after > 4 * 1024, (kept, still, after)  # idle: given back (6 MiB freed)


def test_trims_once_per_quiet_spell_after_busy_ones() -> None:
    """CPU seconds used per 30 s interval, scripted: busy, busy, idle (trim), idle, busy, idle (trim)."""
    per_interval = [0.5, 2.0, 0.1, 0.0, 0.4, 0.2]
    readings = iter([0.0] + [sum(per_interval[:i + 1]) for i in range(len(per_interval))])
    trims: list[int] = []

    async def looks() -> list[bool]:
        idle = IdleTrim(lambda: trims.append(1) or 1, interval=30, clock=lambda: next(readings))
        idle.start()  # reads the clock once; each look reads it once more
        trimmed = []
        for _ in per_interval:
            before = len(trims)
            idle.look()
            trimmed.append(len(trims) > before)
        idle.stop()
        return trimmed

    assert asyncio.run(looks()) == [False, False, True, False, False, True]  # idle: 0.3 s or less (1% of 30 s)


def _run(code: str) -> str:
    """``code`` in a fresh interpreter (freezing would change this test process's collector)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_start_up_objects_leave_the_collectors_view() -> None:
    frozen = _run(f"import gc\nfrom {runtime.__name__}.core.heap import freeze_startup_objects\n"
                  "before = gc.get_freeze_count()\nfreeze_startup_objects()\nprint(before, gc.get_freeze_count())")
    before, after = map(int, frozen.split())
    assert before == 0 and after > 1000  # every module and object the start-up made


def test_an_interpreter_without_gc_freeze_starts_all_the_same() -> None:
    """PyPy's ``gc`` has no ``freeze``: the HTTP server and client called it at start and ended in a traceback."""
    said = _run(f"import gc\ndel gc.freeze\nfrom {runtime.__name__}.core.heap import freeze_startup_objects\n"
                "freeze_startup_objects()\nprint('started')")
    assert said == "started"
