"""Parse the command line in a short-lived child; run the tunnel in a process that never loaded typer.

typer, click and what they import (inspect, ast, difflib, shutil, datetime, ...) are about 2.5 MiB
of Python objects, kept for as long as the process runs, for work done in its first tenth of a
second (issue 17's idle-memory targets). So ``main`` forks first: the child parses the flags with
typer and handles everything that ends quickly itself (``--help``, usage errors, ``--generate``,
``inlets status``); a command that runs a tunnel sends its name and parsed flags back through a
pipe (as JSON) instead of running, and this process, which never imported typer, runs it (same PID, so
signals and service managers see no difference). Without ``fork`` (or when a command function
is called directly) the command runs in the calling process, as before.

While the child lives, SIGTERM, SIGINT and SIGHUP sent to this process's PID are passed on to it
(but a SIGHUP while a tunnel command is parsed: the reload ``hold_sighup`` notes), and this process
then ends as the child did; the child dies with this process, SIGKILL included (Linux). Else ``kill
PID`` (``Popen.terminate()``) left ``inlets status``'s child running on its own until ``--timeout``,
printing the status table after its command had exited.
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


def parse_then_run(parse: Callable[[], int], prefetch: Callable[[], None] | None = None,
                   runs_tunnel: bool = False) -> int:
    """Fork; the child runs ``parse`` (typer) and exits; run what it handed over, else take its exit status.

    ``prefetch`` runs here while the child parses (imports the command's body: on two cores the
    start then costs about what it did in one process). ``runs_tunnel``: the command hands a tunnel
    over (not ``--help``, ``--generate`` or ``inlets status``), so a SIGHUP meanwhile is noted for its
    reload, as ``hold_sighup`` does, not passed on to end the parse."""
    global _to_parent
    if not hasattr(os, "fork"):
        return parse()
    parent = os.getpid()
    readable, writable = os.pipe()
    passed = [sig for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None))  # one ignored (a
              if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN]  # background job's SIGINT) stays so
    signal.pthread_sigmask(signal.SIG_BLOCK, passed)  # until each side has its handlers: none is lost or misrouted
    try:
        pid = os.fork()
    except OSError:  # EAGAIN, ENOMEM: parsed here instead, with the signals as they were
        signal.pthread_sigmask(signal.SIG_UNBLOCK, passed)
        os.close(readable)
        os.close(writable)
        return parse()
    if pid == 0:
        _die_with(parent)
        if hasattr(signal, "SIGHUP"):  # a terminal's hangup ends the parse as before (the parent then exits 129)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupt_once)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, passed)
        os.close(readable)
        _to_parent = writable
        _exit(_status_of(parse))
    os.close(writable)
    stopped: list[int] = []  # the stop signals passed on: what the child handed over is not run

    def pass_on(signum: int, frame: object) -> None:
        if signum == getattr(signal, "SIGHUP", None) and runs_tunnel:
            _note_sighup(signum, frame)
            return
        stopped.append(signum)
        os.kill(pid, signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in passed}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, passed)
    try:
        if prefetch is not None:
            prefetch()
        chunks = []
        with os.fdopen(readable, "rb") as pipe:
            while chunk := pipe.read(65536):
                chunks.append(chunk)
    finally:  # the pipe's end: the child is exiting (or a prefetch failed: the child dies with this process)
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: a handler set outside Python
    _, wait_status = os.waitpid(pid, 0)  # reaped once nothing is passed on: ``pid`` was the child's for every kill
    code = os.waitstatus_to_exitcode(wait_status)
    if stopped and (code < 0 or chunks):  # it ended by what was passed on, or handed over as that came: nothing runs
        return _end_as(-code if code < 0 else stopped[0])
    if not chunks:
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
    command, plain = json.loads(b"".join(chunks))  # from our own child, over a pipe only it holds
    flags = {name: _unplain(value) for name, value in plain.items()}
    run(command, flags)
    return 0


def _die_with(parent: int) -> None:
    """In the child: end when ``parent`` does, SIGKILL included, which passes nothing on (Linux's
    PR_SET_PDEATHSIG). ctypes only here: the child is short-lived, and a tunnel imports it anyway (core/heap.py)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl in this libc: the signals passed on still reach the child
            pass
    if os.getppid() != parent:  # it died before that took effect
        os._exit(128 + signal.SIGKILL)


def _end_as(signum: int) -> int:
    """End as ``signum`` ends a process alone, as it ended this one before the fork: killed by it (a service manager
    tells a stop by SIGTERM from a failure by that); SIGINT was a KeyboardInterrupt, exit status 130."""
    if signum != signal.SIGINT:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    return 128 + signum  # a signal whose default is not to end a process


def _interrupt_once(signum: int, frame: object) -> None:
    """The child's Ctrl-C: one KeyboardInterrupt. The terminal's SIGINT reaches it and the parent's passed-on copy
    too; a second one, raised while the first unwound, printed a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


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
