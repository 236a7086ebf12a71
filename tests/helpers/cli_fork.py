"""``inlets ARGS`` run to completion in a process forked from one that has imported the runtime already.

A fresh interpreter spent about 0.3 s of CPU importing (typer, websockets, jinja2, the runtime) before it
parsed a flag, and the runtime tests run about 500 such commands: 150 s of CPU, a quarter of the suite's
time on two cores. Each command here is still the real CLI in its own process: ``main()`` with its own
argv, environment, working directory, stdin (/dev/null) and stdout/stderr (files), its own exit status,
killed at the timeout. What it skips is the interpreter's start and the imports, done once in a server
per test worker (``serve``). The server never imports ``inlets_py.runtime.cli``, whose command modules
register themselves on the app as they load: each command loads them itself, as a fresh process does.

``INLETS_TESTS_FRESH=1`` runs every command in a fresh interpreter instead (to rule this module out).
"""

from __future__ import annotations

import io
import json
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: Libraries the commands import, loaded by the server before it forks.
PRELOAD = ("typer", "typer.main", "click", "jinja2", "yaml", "websockets.asyncio.client", "websockets.asyncio.server",
           "asyncio", "ssl", "ipaddress", "cryptography.x509", "prometheus_client")
#: The server's ``python -c``: this file loaded by its path, so this folder's modules (http.py) shadow nothing.
_START = ("import importlib.util, socket, sys\n"
          f"spec = importlib.util.spec_from_file_location('inlets_tests_cli_fork', {__file__!r})\n"
          "module = importlib.util.module_from_spec(spec)\n"
          "spec.loader.exec_module(module)\n"
          "module.serve(socket.socket(fileno=int(sys.argv[1])))\n")
_server: tuple[subprocess.Popen[bytes], socket.socket] | None = None
_lock = threading.Lock()


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """What ``subprocess.run([inlets, *args], capture_output=True, text=True, ...)`` returns or raises."""
    control = _control()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        mine, theirs = socket.socketpair()
        with mine:
            request = json.dumps({"argv": args, "env": env, "cwd": str(cwd)}).encode()
            socket.send_fds(control, [request], [theirs.fileno(), out.fileno(), err.fileno()])
            theirs.close()
            replies = mine.makefile("r")
            mine.settimeout(timeout)
            started = replies.readline()
            if not started:
                raise RuntimeError(f"the test CLI server did not start inlets {' '.join(args)}: see its stderr above")
            pid = int(started)
            try:
                line = replies.readline()
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                mine.settimeout(10)
                replies.readline()
                raise subprocess.TimeoutExpired(["inlets", *args], timeout, _read(out), _read(err)) from None
            if not line:
                raise RuntimeError(f"the test CLI server lost inlets {' '.join(args)}")
        return subprocess.CompletedProcess(["inlets", *args], int(line), _read(out), _read(err))


def _read(file: io.BufferedRandom) -> str:
    file.seek(0)
    return io.TextIOWrapper(io.BytesIO(file.read())).read()  # universal newlines, as text=True


def _control() -> socket.socket:
    global _server
    with _lock:
        if _server is None or _server[0].poll() is not None:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            process = subprocess.Popen([sys.executable, "-c", _START, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                       stdin=subprocess.DEVNULL)
            theirs.close()
            _server = (process, mine)
        return _server[1]


def serve(control: socket.socket) -> None:
    """Load what the commands load, then fork a waiter per request, which forks the command and reports on it."""
    from inlets_py.runtime.core import lazy_modules

    lazy_modules.defer()  # as main() does first
    for name in PRELOAD:
        __import__(name)
    import inlets_py.runtime as runtime

    for module in pkgutil.walk_packages(runtime.__path__, "inlets_py.runtime."):
        if not module.name.startswith("inlets_py.runtime.cli") and not module.name.endswith("__main__"):
            __import__(module.name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    while True:
        message, fds, _, _ = socket.recv_fds(control, 1 << 20, 3)
        if not message:
            return
        if os.fork() == 0:
            control.close()
            _wait_on_command(json.loads(message), *fds)
        for fd in fds:
            os.close(fd)


def _wait_on_command(request: dict, reply_fd: int, out_fd: int, err_fd: int) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    reply = socket.socket(fileno=reply_fd)
    pid = os.fork()
    if pid == 0:
        reply.close()
        _command(request, out_fd, err_fd)
    os.close(out_fd)
    os.close(err_fd)
    reply.sendall(b"%d\n" % pid)
    _, status = os.waitpid(pid, 0)
    reply.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
    os._exit(0)


def _command(request: dict, out_fd: int, err_fd: int) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((null, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["-c", *request["argv"]]
        from inlets_py.runtime.cli.main import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        os._exit(code)
