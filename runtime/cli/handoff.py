"""Parse the command line in a short-lived child; run the tunnel in a process that never loaded typer.

typer, click and what they import (inspect, ast, difflib, shutil, datetime, ...) are about 2.5 MiB
of Python objects, kept for as long as the process runs, for work done in its first tenth of a
second (issue 17's idle-memory targets). So ``main`` forks first: the child parses the flags with
typer and handles everything that ends quickly itself (``--help``, usage errors, ``--generate``,
``inlets status``); a command that runs a tunnel sends its name and parsed flags back through a
pipe (as JSON) instead of running, and this process, which never imported typer, runs it (same PID, so
signals and service managers see no difference). Without ``fork`` (or when a command function
is called directly) the command runs in the calling process, as before.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from pathlib import Path, PurePath
from types import SimpleNamespace
from typing import Any, Callable

#: The write end of the pipe to the parent, in the child that parses; None elsewhere.
_to_parent: int | None = None
_PLAIN = (type(None), bool, int, float, str, PurePath)
#: A SIGHUP came before the tunnel's event loop took the signal (``hold_sighup``).
_sighup_noted = False


def open_closed_stdio() -> None:
    """Give each of fds 0-2 that was closed at start (``inlets ... <&-``, ``>&-``) /dev/null, and Python a stream on it.

    Else the next file opened takes the free number: uvloop's epoll fd became 0 or 1, and libuv aborts (status 134)
    rather than close a standard fd when the loop ends, so a SIGTERM killed the tunnel instead of draining it; and
    Python's ``sys.stdout`` was None, so printing (``--help``, the child's exit) raised a traceback."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd`` itself, as the ones below are open
        except OSError:  # no /dev/null (a bare chroot): run as before
            return
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            stream = open(fd, mode, closefd=False, encoding="utf-8", errors="backslashreplace")
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)


def drop_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered can never be written (a full disk, a reader gone), and
    the interpreter's own flush at exit would print a second error. inletsctl's too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing is flushed at exit either
        pass


def hold_sighup() -> None:
    """Note SIGHUP until the tunnel's loop handles it (``sighup_noted``). Its default action ends the process: a
    ``systemctl reload`` or a rotation's ``kill -HUP`` in the first 0.3 s of a start (the child parsing, the
    imports) killed a server or client without a line (status 129), where a moment later it reloads."""
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _note_sighup)


def _note_sighup(signum: int, frame: object) -> None:
    global _sighup_noted
    _sighup_noted = True


def sighup_noted() -> bool:
    """Whether a SIGHUP came while held (once: the loop's reload answers it)."""
    global _sighup_noted
    noted, _sighup_noted = _sighup_noted, False
    return noted


def start(command: str, flags: dict[str, Any]) -> None:
    """Run ``command`` (a module of cli/run: ``tcp_server``) with its parsed ``flags``, here or in the parent."""
    for name, value in flags.items():
        values = value if isinstance(value, (list, tuple)) else (value,)
        if not all(isinstance(item, _PLAIN) for item in values):
            raise TypeError(f"flag {name} of {command} is a {type(value).__name__}: the parent may not import its class")
    if _to_parent is None:
        run(command, flags)
        return
    data = memoryview(json.dumps([command, {name: _plain(value) for name, value in flags.items()}]).encode())
    try:
        while data:
            data = data[os.write(_to_parent, data):]
    except BrokenPipeError:  # the parent was stopped while this child parsed: nothing left to run
        _exit(1)
    os.close(_to_parent)
    _exit(0)


def run(command: str, flags: dict[str, Any]) -> None:
    importlib.import_module(f"{__package__}.run.{command}").run(SimpleNamespace(**flags))


def parse_then_run(parse: Callable[[], int], prefetch: Callable[[], None] | None = None) -> int:
    """Fork; the child runs ``parse`` (typer) and exits; run what it handed over, else take its exit status.

    ``prefetch`` runs here while the child parses (imports the command's body: on two cores the
    start then costs about what it did in one process)."""
    global _to_parent
    if not hasattr(os, "fork"):
        return parse()
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        if hasattr(signal, "SIGHUP"):  # a terminal's hangup ends the parse as before (the parent then exits 129)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.close(readable)
        _to_parent = writable
        _exit(_status_of(parse))
    os.close(writable)
    if prefetch is not None:
        prefetch()
    chunks = []
    with os.fdopen(readable, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, wait_status = os.waitpid(pid, 0)
    if not chunks:
        code = os.waitstatus_to_exitcode(wait_status)
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
    command, plain = json.loads(b"".join(chunks))  # from our own child, over a pipe only it holds
    flags = {name: _unplain(value) for name, value in plain.items()}
    run(command, flags)
    return 0


def _plain(value: Any) -> Any:
    """A flag's value as JSON: paths and tuples tagged, so the parent gets back the types typer made.
    JSON, not pickle: the tunnel imports json anyway, pickle would stay loaded (0.4 MiB) for one read."""
    if isinstance(value, PurePath):
        return {"path": str(value)}
    if isinstance(value, tuple):
        return {"tuple": [_plain(item) for item in value]}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        return Path(value["path"]) if "path" in value else tuple(_unplain(item) for item in value["tuple"])
    if isinstance(value, list):
        return [_unplain(item) for item in value]
    return value


def _status_of(parse: Callable[[], int]) -> int:
    """The child's exit status: what ``parse`` returns or exits with; a traceback (a bug) is 1, as Python's own."""
    try:
        return parse()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1


def _exit(status: int) -> None:
    """Leave the child without running the parent's exit handlers twice; what it printed is flushed first."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # no such fd when Python started, and parse_then_run was called without open_closed_stdio
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
