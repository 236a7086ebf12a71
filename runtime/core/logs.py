"""Logging set-up: one line per event, ``key=value`` (logfmt) or JSON. Never a token or key.

Values a peer, a user or the OS chose go through ``logfmt``: bare when that reads back as the same value, else in
double quotes with ``"``, ``\\`` and control characters escaped. Python's ``%r`` quoted with ``'``, which logfmt
parsers do not read as quotes: a refusal quoting a client's words (``reason='... admin=true'``) gave a pipeline
fields that client wrote.

A peer can make an event happen as often as it likes (a stream refused per OPEN it
sends), so each kind of line (logger and message template) is written at most
``RepeatLimit.burst`` times per ``RepeatLimit.window`` seconds; the first line of the
next window says how many were left out (``suppressed=N``); at exit, the last line left out of
each kind says so for those no later line told (a flood that ended, then silence, else left no trace).
A line logged with ``extra={"cause": ...}`` (hashable: a dial's upstream and failure) is also said once per window
for its cause, within its kind's limit: one busy cause (a dead upstream's every dial) took all of its kind's lines,
and another's (a second upstream, refused once) was never said.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import sys
import time
from typing import Callable


#: What a bare logfmt value may hold: printable ASCII but the space and ``"``, ``=`` and ``\\`` (which a parser reads
#: as the value's end, a quote, a key, an escape).
_BARE = re.compile(r'[!#-<>-\[\]-~]+')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    """One character inside a quoted value: printable as is, else escaped as JSON escapes it (``\\u001b``)."""
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code > 0xFFFF:  # a surrogate pair, as JSON writes one
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def logfmt(value: object) -> str:
    """``value`` as a logfmt value: bare when safe (``tcp:8080``), else ``"double-quoted"`` with ``"``, ``\\`` and
    control characters escaped, so a value can neither end early, add a key, nor start a line."""
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    if text.isprintable():  # the common case (words and spaces): two replaces, not a call per character
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + "".join(_escaped(c) for c in text) + '"'


#: One ``key=value`` as ``logfmt`` and the message templates write it, and the spaces after it: a key, then a bare
#: value or a quoted one holding only the escapes ``logfmt`` writes (``\"``, ``\\``, ``\n``, ``\r``, ``\t``,
#: ``\uXXXX``) and no raw control character.
_PAIR = re.compile(r'([\w.-]+)=(?:(' + _BARE.pattern + r')|"((?:[^"\\\x00-\x1f]|\\["\\nrt]|\\u[\da-f]{4})*)")(?: +|$)')


def logfmt_fields(text: str) -> dict[str, str]:
    """The fields of a message written as ``key=value`` pairs (the exact inverse of ``logfmt``), or none when any of
    it is not (a library's own words): a field is read as ``logfmt`` wrote it or not at all. A key given twice keeps
    its last value. The pairs found one after another must leave nothing of the text (which then holds only pairs,
    found where they start); a bare value cannot be empty, so an empty one means the quoted one, whose escapes are
    JSON's (a surrogate pair reads as its one character, as in any JSON reader)."""
    return {} if _PAIR.sub("", text) else {k: b or json.loads(f'"{q}"') for k, b, q in _PAIR.findall(text)}


def _one_line(text: str) -> str:
    """A message with any control character left in it escaped: whatever a log call passed, one event, one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else _escaped(c) for c in text)


def _timestamp(record: logging.LogRecord) -> str:
    """When, in UTC with its ``Z`` and milliseconds (RFC 3339), the same in both formats. Text lines had the host's
    local time without an offset, JSON lines UTC without one: a pipeline read one of them hours off, and events
    within one second had no order."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _trace(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """A record's traceback (``log.exception``) and stack as one text, or None. The library's own formatting wrote it
    on the lines after the message (text: lines without time or level, which a pipeline reads as events of their
    own) or not at all (JSON: the traceback was lost)."""
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts) or None


class _JsonFormatter(logging.Formatter):
    """One object per line: time, level, logger, the message whole as ``msg``, then each of its ``key=value`` as a key
    of its own (strings, as written) and any traceback as ``exc``. ``jq 'select(.event=="x")'`` found nothing while
    the fields stayed inside ``msg``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _one_line(record.getMessage()),
        }
        for key, value in logfmt_fields(line["msg"]).items():  # one named as the line's own key: fields.NAME (logrus)
            line["fields." + key if key in line or key == "exc" else key] = value
        trace = _trace(self, record)
        if trace is not None:
            line["exc"] = trace
        return json.dumps(line)


class _TextFormatter(logging.Formatter):
    """``time level=LEVEL message``, and a traceback as ``exc="..."`` on the same line (JSON-quoted)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s level=%(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = _one_line(record.getMessage())
        record.asctime = _timestamp(record)
        line = self.formatMessage(record)
        trace = _trace(self, record)
        return line if trace is None else f"{line} exc={json.dumps(trace)}"


#: Causes followed at once (``RepeatLimit``); a line of a cause past them is limited by its kind alone.
MOST_CAUSES = 1024


class RepeatLimit(logging.Filter):
    """At most ``burst`` lines of one kind per ``window`` seconds, one of each cause (see the module docstring)."""

    def __init__(self, burst: int = 20, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window, self._clock = burst, window, clock
        self._kinds: dict[tuple, list] = {}  # kind -> [window start, lines written, lines left out, last left out]
        self._causes: dict[tuple, list] = {}  # (kind, cause) -> [window start, lines left out, last left out]

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        kind = (record.name, record.levelno, str(record.msg))
        cause = getattr(record, "cause", None)
        told = 0 if cause is None else self._first_of_cause((kind, cause), now, record)
        if told is None:
            return False
        entry = self._kinds.get(kind)
        if entry is None or now - entry[0] >= self.window:
            if len(self._kinds) > 4096:  # message templates are few; forget old windows now and then
                self._kinds = {k: e for k, e in self._kinds.items() if now - e[0] < self.window}
            told += entry[2] if entry is not None else 0
            self._kinds[kind] = [now, 1, 0, None]
        elif entry[1] < self.burst:
            entry[1] += 1
        else:
            entry[2] += 1 + told  # its cause's count goes with it, told by the kind's next line
            entry[3] = record
            return False
        if told:
            record.msg, record.args = f"{record.getMessage()} suppressed={told}", None
        return True

    def _first_of_cause(self, key: tuple, now: float, record: logging.LogRecord) -> int | None:
        """The lines of ``record``'s cause its last window left out, to tell on this one, the first of its window;
        None when one was said in this window (this one is left out, counted)."""
        entry = self._causes.get(key)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            entry[2] = record
            return None
        if entry is None and len(self._causes) >= MOST_CAUSES:
            self._causes = {k: e for k, e in self._causes.items() if now - e[0] < self.window or e[1]}
            if len(self._causes) >= MOST_CAUSES:  # so many at once (a peer choosing them): their kind's limit alone
                return 0
        self._causes[key] = [now, 0, None]
        return entry[1] if entry is not None else 0

    def held_back(self) -> list[logging.LogRecord]:
        """The last line left out of each kind that no later line has told of, saying how many others were
        (``suppressed=N``), oldest first; those kinds then count afresh."""
        lines = []
        for entries, at in ((self._kinds.values(), 2), (self._causes.values(), 1)):  # where each keeps its count
            for entry in entries:
                left_out, last = entry[at], entry[at + 1]
                if left_out and last is not None:
                    if left_out > 1:
                        last.msg, last.args = f"{last.getMessage()} suppressed={left_out - 1}", None
                    entry[at], entry[at + 1] = 0, None
                    lines.append(last)
        return sorted(lines, key=lambda record: record.created)


#: The format ``setup`` gave the log ("text" or "json"); None before it ran (``configured``).
_format: str | None = None


def configured() -> str | None:
    """The log's format once ``setup`` ran, else None: what is said outside a logger (a start-up warning, the error
    that ends the process) is a record when it is "json", where a plain line broke a ``| jq`` pipeline."""
    return _format


def setup(level: str = "info", fmt: str = "text") -> None:
    global _format
    fmt = fmt.lower()  # --log-format JSON, as --log-level WARNING is taken
    _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    limit = RepeatLimit()
    handler.addFilter(limit)
    atexit.register(_tell_held_back, handler, limit)  # before logging's own (flush, close): it runs after this
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The websockets library logs handshake failures with tracebacks at ERROR; ours say enough.
    logging.getLogger("inlets.websockets").setLevel(logging.CRITICAL)


def _tell_held_back(handler: logging.Handler, limit: RepeatLimit) -> None:
    """At exit: the lines ``limit`` left out that no later line told of (past the filter, which would hold them)."""
    for record in limit.held_back():
        handler.acquire()
        try:
            handler.emit(record)
        finally:
            handler.release()
