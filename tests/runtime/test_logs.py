"""Log lines a peer can provoke at will are limited per kind, and the count left out is told."""

from __future__ import annotations

import logging

from inlets_py.runtime.core.logs import RepeatLimit


def record(msg: str, *args: object, name: str = "inlets.tcp") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_each_kind_of_line_is_limited_per_window_and_the_next_window_says_how_many_were_left_out() -> None:
    now = [0.0]
    limit = RepeatLimit(burst=3, window=10.0, clock=lambda: now[0])
    refused = "event=refused_stream target=%r reason=not_advertised"
    shown = [limit.filter(record(refused, f"tcp:{i}")) for i in range(1000)]
    assert shown == [True] * 3 + [False] * 997
    assert limit.filter(record("event=client_connected client=%s", "a"))  # another kind is not held back
    now[0] = 10.0
    later = record(refused, "tcp:5")
    assert limit.filter(later)
    assert later.getMessage() == "event=refused_stream target='tcp:5' reason=not_advertised suppressed=997"
    again = record(refused, "tcp:6")
    assert limit.filter(again) and again.getMessage().endswith("reason=not_advertised")  # counted afresh
