"""Log lines a peer can provoke at will are limited per kind, and the count left out is told."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from helpers.logfmt import parse as logfmt_parse
from hypothesis import given
from hypothesis import strategies as st

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


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_stays_in_its_events_line(fmt: str) -> None:
    """``log.exception`` (event=proxy_error, event=stream_handler_failed) lost its traceback in JSON and spread it
    over lines without time or level in text, each a separate event to a log pipeline; it is one field now."""
    script = ("import logging; from inlets_py.runtime.core import logs; logs.setup('info', %r)\n"
              "try:\n    {}['missing']\nexcept KeyError:\n"
              "    logging.getLogger('inlets.http').exception('event=proxy_error peer=%%s', '192.0.2.1')\n"
              "logging.getLogger('inlets').info('event=after')\n" % fmt)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    lines = result.stderr.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    if fmt == "json":
        failed = json.loads(lines[0])
        assert failed["msg"] == "event=proxy_error peer=192.0.2.1" and failed["level"] == "error"
        trace = failed["exc"]
    else:
        assert re.fullmatch(r"\S+ level=ERROR event=proxy_error peer=192\.0\.2\.1 exc=(\".*\")", lines[0]), lines[0]
        trace = json.loads(lines[0].partition(" exc=")[2])
        assert re.fullmatch(r"\S+ level=INFO event=after", lines[1])
    assert trace.startswith("Traceback (most recent call last):") and trace.endswith("KeyError: 'missing'")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_times_are_utc_and_say_so(fmt: str) -> None:
    """Text lines had the host's local time without an offset (JSON lines UTC, without one either): on a host
    not in UTC the two formats disagreed by hours, and a pipeline could not tell which was meant."""
    script = f"import logging; from inlets_py.runtime.core import logs; logs.setup('info', {fmt!r}); " \
             "logging.getLogger('inlets').info('event=now')"
    before = datetime.datetime.now(datetime.timezone.utc)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "TZ": "America/New_York"})
    line = result.stderr.strip()
    stamp = json.loads(line)["time"] if fmt == "json" else line.split(" ", 1)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), line
    written = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - datetime.timedelta(seconds=1) <= written <= datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.parametrize("value, written", [
    ("tcp:8080", "tcp:8080"), ("127.0.0.1:5000", "127.0.0.1:5000"), ("", '""'), ("two words", '"two words"'),
    ("a=b", '"a=b"'), ('say "hi"', r'"say \"hi\""'), ("C:\\dir", r'"C:\\dir"'), ("x\ny", r'"x\ny"'),
    ("\x1b[2J", r'"\u001b[2J"'), ("\u202eevil", r'"\u202eevil"'), ("bücher", '"bücher"'), (8080, "8080"),
])
def test_values_are_bare_when_safe_and_double_quoted_with_escapes_otherwise(value: object, written: str) -> None:
    from inlets_py.runtime.core.logs import logfmt

    assert logfmt(value) == written


@given(st.text())
def test_any_value_reads_back_as_itself_and_adds_no_key(text: str) -> None:
    """Python's ``%r`` quoted with ``'``, which logfmt does not read as a quote: ``reason='a b=c'`` was the keys
    reason, b. Quoted with ``"`` and escaped, any text is one value, however it reads back."""
    from inlets_py.runtime.core.logs import logfmt

    line = f"event=x reason={logfmt(text)} next=1"
    assert "\n" not in line and "\r" not in line
    assert logfmt_parse(line) == [("event", "x"), ("reason", text), ("next", "1")]


def test_a_log_call_that_passes_a_raw_newline_still_writes_one_line() -> None:
    """The formatter's own guard: a value a call forgot to quote cannot start a line of its own."""
    script = ("import logging; from inlets_py.runtime.core import logs; logs.setup('info', 'text')\n"
              "logging.getLogger('inlets').info('event=x value=%s', 'a\\n2026-01-01T00:00:00.000Z level=INFO event=forged')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    lines = result.stderr.splitlines()
    assert result.returncode == 0 and len(lines) == 1, result.stderr
    assert lines[0].endswith(r"event=x value=a\n2026-01-01T00:00:00.000Z level=INFO event=forged"), lines[0]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_lines_left_out_that_no_later_line_told_of_are_told_at_exit(fmt: str) -> None:
    """500 users asking for a host nobody serves made 20 lines and then silence: the 480 left out were told only
    by a line of the same kind in a later window, so a flood that ended (then a restart) left no trace of them.
    At exit the last one left out of each kind is written, saying how many others were."""
    script = ("import logging; from inlets_py.runtime.core import logs; logs.setup('info', %r)\n"
              "log = logging.getLogger('inlets.http')\n"
              "for i in range(25):\n    log.info('event=answered status=503 host=%%s', f'h{i}.test')\n"
              "for i in range(21):\n    log.info('event=refused reason=%%s', i)\n"
              "log.info('event=stopped')\n" % fmt)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    lines = result.stderr.splitlines()
    messages = [json.loads(line)["msg"] if fmt == "json" else line.partition(" level=INFO ")[2] for line in lines]
    assert result.returncode == 0 and len(lines) == 20 + 20 + 1 + 2, result.stderr
    assert messages[40] == "event=stopped"
    assert messages[41:] == ["event=answered status=503 host=h24.test suppressed=4", "event=refused reason=20"]


def _no_surrogate_pair(text: str) -> bool:
    """False for a high surrogate right before a low one: ``logfmt`` writes them as JSON does a pair
    (``\\ud83d\\ude00``), which reads back, as in any JSON reader, as the one character they make."""
    return not any("\ud800" <= a <= "\udbff" and "\udc00" <= b <= "\udfff" for a, b in zip(text, text[1:]))


@given(st.text(st.characters(blacklist_categories=())).filter(_no_surrogate_pair))
def test_parsing_is_the_exact_inverse_of_logfmt(text: str) -> None:
    """JSON lines carry each field as a key, read back from the message: any value ``logfmt`` wrote (control
    characters, quotes, backslashes, lone surrogates from a file name included) reads back as itself."""
    from inlets_py.runtime.core.logs import logfmt, logfmt_fields

    assert logfmt_fields(f"event=x reason={logfmt(text)} next=1") == {"event": "x", "reason": text, "next": "1"}
    assert logfmt_fields(f"v={logfmt(text)}") == {"v": text}


@pytest.mark.parametrize("message", [
    "Starting server", "", " event=x", "x event=y", "event=x reason=two words", "event=x (browsers refuse it)",
    'a="unterminated', 'a=b"c"', 'a="b"c', "a=b=c", "=v", 'a="\\x"', 'a="\\u001B"', 'a="\\b"', "a=\\n", 'a="\x01"',
])
def test_a_message_that_is_not_logfmt_gives_no_fields(message: str) -> None:
    """Strict: a field is read as ``logfmt`` wrote it or not at all (a library's line keeps only ``msg``)."""
    from inlets_py.runtime.core.logs import logfmt_fields

    assert logfmt_fields(message) == {}


def test_json_lines_carry_each_field_as_a_key() -> None:
    """``{"msg": "event=x ..."}`` hid every field from ``jq 'select(.event=="x")'``; now each is a key (a string, as
    written), ``msg`` stays whole, a field named like the line's own keys becomes ``fields.NAME``, and a library's
    words keep only ``msg``."""
    script = ("import logging; from inlets_py.runtime.core import logs; logs.setup('info', 'json')\n"
              "log = logging.getLogger('inlets.tcp')\n"
              "log.info('event=connected client=%s remote=%s n=%d', 'abc', logs.logfmt('[::1]:5555'), 7)\n"
              "log.warning('event=odd level=%s msg=%s time=1 logger=x', logs.logfmt('a \"b\"\\n'), 'm')\n"
              "logging.getLogger('inlets.websockets.x').critical('connection closed: code 1006')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.returncode == 0 and len(lines) == 3, result.stderr
    connected, odd, library = lines
    assert list(connected)[:5] == ["time", "level", "logger", "msg", "event"]
    assert {k: connected[k] for k in ("level", "logger", "event", "client", "remote", "n")} == {
        "level": "info", "logger": "inlets.tcp", "event": "connected", "client": "abc", "remote": "[::1]:5555",
        "n": "7"}
    assert connected["msg"] == "event=connected client=abc remote=[::1]:5555 n=7"
    assert odd["level"] == "warning" and odd["logger"] == "inlets.tcp" and odd["msg"].startswith("event=odd level=")
    assert (odd["fields.level"], odd["fields.msg"], odd["fields.time"], odd["fields.logger"]) == ('a "b"\n', "m", "1", "x")
    assert set(library) == {"time", "level", "logger", "msg"} and library["msg"] == "connection closed: code 1006"


def test_a_line_with_a_cause_is_said_once_per_window_and_no_other_cause_takes_its_place() -> None:
    """A busy cause (a dead upstream's every dial) took all 20 lines of its kind, and another's was not said."""
    now = [0.0]
    limit = RepeatLimit(burst=3, window=10.0, clock=lambda: now[0])
    failed = "event=upstream_failed upstream=%s error=%s"

    def dial_failed(upstream: str) -> logging.LogRecord:
        line = record(failed, upstream, "refused")
        line.cause = (upstream, "refused")
        return line

    assert [limit.filter(dial_failed("a:1")) for _ in range(100)] == [True] + [False] * 99
    assert limit.filter(dial_failed("b:2"))
    assert [limit.filter(dial_failed(f"c:{port}")) for port in range(1000)] == [True] + [False] * 999, (
        "causes a peer chooses (a server's --local targets) got a line each: the kind's limit holds for them all")
    now[0] = 10.0
    later = dial_failed("a:1")
    assert limit.filter(later)  # the first of the kind's next window: its 99 and the kind's 999 others
    assert later.getMessage() == "event=upstream_failed upstream=a:1 error=refused suppressed=1098"
    for _ in range(5):
        assert not limit.filter(dial_failed("a:1"))  # said in this window already
    assert [line.getMessage() for line in limit.held_back()] == [  # at exit: the last left out, and the others
        "event=upstream_failed upstream=a:1 error=refused suppressed=4"]
