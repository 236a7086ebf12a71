"""cli/handoff.py: flags parsed by typer in a child, the tunnel run by a process that never loaded typer."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers.process import INLETS, ROOT, server_args, spawn, terminate, wait_for_text, wait_port
from helpers.tunnel import free_port
from inlets_py import runtime
from inlets_py.runtime.cli import handoff

PACKAGE = runtime.__name__


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_parent_runs_what_the_child_parsed_and_takes_its_status_otherwise() -> None:
    probe = (
        "import os, signal, sys\n"
        f"from {PACKAGE}.cli import handoff\n"
        "handoff.run = lambda command, flags: print('RAN', command, flags, os.getpid() == parent)\n"
        "parent = os.getpid()\n"
        "def hand_over():\n"
        "    handoff.start('tcp_server', {'control_port': 8123, 'token_file': None, 'auto_tls_san': ['a', 'b']})\n"
        "    print('NOT REACHED')\n"
        "print('STATUS', handoff.parse_then_run(hand_over))\n"
        "print('STATUS', handoff.parse_then_run(lambda: 3))\n"
        "print('STATUS', handoff.parse_then_run(lambda: sys.exit('bad flag')))\n"
        "print('STATUS', handoff.parse_then_run(lambda: os.kill(os.getpid(), signal.SIGKILL)))\n"
        "sys.stdout.flush()\n"
        "print('STATUS', handoff.parse_then_run(lambda: 1 / 0))\n"
    )
    result = _python(probe)
    assert result.returncode == 0, result.stderr
    assert "NOT REACHED" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "RAN tcp_server {'control_port': 8123, 'token_file': None, 'auto_tls_san': ['a', 'b']} True"
    assert lines[1:] == ["STATUS 0", "STATUS 3", "STATUS 1", "STATUS 137", "STATUS 1"]
    assert "bad flag" in result.stderr and "ZeroDivisionError" in result.stderr  # a bug shows its traceback


def test_the_parent_gets_the_values_and_types_typer_made() -> None:
    """Paths, tuples, lists of paths, non-finite floats, non-ASCII and undecodable (surrogate-escaped) text."""
    probe = (
        "import math, os, sys\n"
        "from pathlib import Path\n"
        f"from {PACKAGE}.cli import handoff\n"
        "sent = {'token_file': Path('/t/ök en'), 'upstream': ('a=1', 'b'), 'tls': [Path('x'), Path('/y')],\n"
        "        'proxy': None, 'insecure': True, 'port': 8123, 'drain': math.inf, 'wait': 2.5,\n"
        "        'name': 'caf\\u00e9 \\udcff', 'empty': [], 'none_list': ()}\n"
        "handoff.run = lambda command, flags: print('SAME', command, flags == sent,\n"
        "    all(type(flags[k]) is type(v) for k, v in sent.items()),\n"
        "    [type(p).__name__ for p in flags['tls']], os.getpid() == parent)\n"
        "parent = os.getpid()\n"
        "print('STATUS', handoff.parse_then_run(lambda: handoff.start('tcp_client', sent)))\n"
    )
    result = _python(probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["SAME tcp_client True True ['PosixPath', 'PosixPath'] True", "STATUS 0"]


def test_flags_of_a_class_the_parent_would_have_to_import_are_refused() -> None:
    class Choice:
        pass

    with pytest.raises(TypeError, match="flag log_level of tcp_server is a Choice"):
        handoff.start("tcp_server", {"log_level": Choice()})


def test_a_running_tcp_server_never_loaded_typer(tmp_path: Path) -> None:
    """The real command as users run it: after SIGTERM it reports what its process had imported (nor
    pickle: the flags come over as JSON, which the tunnel imports anyway)."""
    control = free_port()
    token = tmp_path / "token"
    token.write_text("a-token-of-enough-length-0123456789\n")
    token.chmod(0o600)
    report = tmp_path / "modules"
    probe = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(report)!r}, 'w').write(' '.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('typer', 'click', 'pickle')))))\n"
        f"sys.argv = ['inlets', 'tcp', 'server', '--control-addr', '127.0.0.1', '--control-port', '{control}', "
        f"'--data-addr', '127.0.0.1', '--plaintext', '--token-file', {str(token)!r}]\n"
        f"from {PACKAGE}.cli.main import main\n"
        "main()\n"
    )
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([sys.executable, "-c", probe], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(control)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0, log.read_text()
    finally:
        server.kill()
    assert "event=started mode=tcp" in log.read_text()
    assert report.read_text() == "", f"the running server imported {report.read_text()}"


def test_while_the_child_parses_the_parent_imports_only_the_named_commands_body() -> None:
    probe = (
        "import sys\n"
        f"from {PACKAGE}.cli.main import _prefetch\n"
        "_prefetch(['status', '--url', 'x'])\n"
        "_prefetch(['tcp'])\n"
        "print(sorted(m for m in sys.modules if '.cli.run.' in m), 'typer' in sys.modules)\n"
        "_prefetch(['tcp', 'server', '--control-port', '1'])\n"
        "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if '.cli.run.' in m), 'typer' in sys.modules)\n"
        "_prefetch(['tcp', 'client', '--help'])\n"
        "_prefetch(['http', 'client', '--url', 'wss://h', '--generate=systemd'])\n"
        "_prefetch(['http', 'server', '--generate', 'k8s_yaml'])\n"
        "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if '.cli.run.' in m))\n"
    )
    result = _python(probe)
    assert result.returncode == 0, result.stderr
    # --help and --generate end in the child: their command's body would be imported for nothing
    assert result.stdout.splitlines() == ["[] False", "['tcp_server'] False", "['tcp_server']"]


def test_a_sighup_while_the_child_parses_is_a_reload_once_running(tmp_path: Path, tls) -> None:
    """A SIGHUP (`systemctl reload`, a rotation's `kill -HUP`) in the first moments of a start, while the child parsed
    the flags, took its default action: the server died without a line (status 129). Now it is noted and runs one
    reload once the server runs."""
    control = free_port()
    token = tmp_path / "token"
    token.write_text("a-token-of-enough-length-0123456789\n")
    token.chmod(0o600)
    log = tmp_path / "server.log"
    server = spawn(*server_args(control, tls, token), log=log)
    try:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        deadline = time.monotonic() + 15
        while not children.read_text().strip():  # the parent forked: its child parses the flags now
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.001)
        server.send_signal(signal.SIGHUP)
        wait_for_text(log, "event=tokens_reloaded count=1")
        assert server.poll() is None, log.read_text()
        wait_port(control)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0, log.read_text()
    finally:
        terminate(server)



@contextlib.contextmanager
def _status_against_a_deaf_server(**popen: Any) -> Iterator[tuple[subprocess.Popen, int]]:
    """``inlets status`` asking a server that accepts and never answers, its child waiting out ``--timeout``: the
    command and its child's PID once the child has connected."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        command = subprocess.Popen([*INLETS, "status", "--timeout", "60", "--url",
                                    f"wss://127.0.0.1:{listener.getsockname()[1]}", "--token", "x"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **popen)
        try:
            listener.settimeout(15)
            held, _ = listener.accept()  # the child asks now
            with held:
                children = Path(f"/proc/{command.pid}/task/{command.pid}/children").read_text().split()
                assert len(children) == 1, children
                yield command, int(children[0])
        finally:
            command.kill()
            command.wait(10)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left to an init that does not reap has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _ended(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _running(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["term", "hup"])
def test_status_killed_by_its_pid_ends_its_child_and_dies_of_that_signal(sig: signal.Signals) -> None:
    """Found by a probe: ``kill PID`` (``Popen.terminate()``) ended the parent only, and the child ran on alone until
    its --timeout, then printed the status table; a SIGHUP to the PID was noted for a reload nothing would run. Now the
    signal is passed on and the parent ends as the child did, as one process would."""
    with _status_against_a_deaf_server() as (command, child):
        command.send_signal(sig)
        assert command.wait(timeout=10) == -sig
        assert _ended(child), f"the child {child} runs on after its parent"
        assert command.communicate(timeout=5) == ("", "")


@pytest.mark.parametrize("group", [False, True], ids=["pid", "ctrl-c"])
def test_sigint_by_its_pid_or_by_ctrl_c_ends_status_and_its_child_quietly(group: bool) -> None:
    """SIGINT to the PID ended the parent (130) only. Ctrl-C signals the whole group: the child gets the terminal's
    SIGINT and the parent's copy, and must still end in one quiet exit status 130 (a second KeyboardInterrupt while
    the first unwound would print a traceback)."""
    with _status_against_a_deaf_server(start_new_session=group) as (command, child):
        (os.killpg if group else os.kill)(command.pid, signal.SIGINT)
        assert command.wait(timeout=10) == 130
        assert _ended(child), f"the child {child} runs on after its parent"
        assert command.communicate(timeout=5) == ("", "")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_status_whose_parent_is_killed_with_sigkill_ends_too() -> None:
    """SIGKILL passes nothing on: the child asks the kernel to end it when its parent dies (PR_SET_PDEATHSIG)."""
    with _status_against_a_deaf_server() as (command, child):
        command.kill()
        assert command.wait(timeout=10) == -signal.SIGKILL
        assert _ended(child), f"the child {child} runs on after its parent"
