"""The ``inlets`` command: ``inlets tcp|http server|client``, ``inlets status``.

Each command lives in its own module, imported here only when installed: the exit
server's wheel (provisioner/wheel.py) carries just its own server command, so a TCP
server has no ``inlets http`` and neither has ``inlets tcp client``. Every error a user
can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import sys

try:  # a Ctrl-C while these load (a fresh install compiles them first) is exit 130, as it is a moment later
    import importlib
    import importlib.util
    from typing import Any, Callable

    from ..core import lazy_modules
    from . import handoff
    from .usage import shown, usage_line
except KeyboardInterrupt:
    sys.exit(130)

#: (group, command modules) in the order ``--help`` lists them.
COMMANDS = ((None, ("status",)), ("tcp", ("tcp_server", "tcp_client")), ("http", ("http_server", "http_client")))


def _register(argv: list[str]) -> None:
    """Import the installed command modules (each adds its command); a group without one is left out.

    When ``argv`` names one command (``tcp client ...``) only its module is imported: a client's
    process never loads the server's code (nor prometheus), and the other way round.
    """
    from .app import app, http_app, tcp_app

    groups = {"tcp": tcp_app, "http": http_app}
    chosen = [(group, m) for group, modules in COMMANDS if group for m in modules if argv[:2] == m.split("_")]
    for group, modules in COMMANDS:
        found = [m for m in modules if (not chosen or (group, m) in chosen)
                 and importlib.util.find_spec(f"{__package__}.{m}") is not None]
        for module in found:
            importlib.import_module(f"{__package__}.{module}")
        if group is not None and found:
            app.add_typer(groups[group], name=group)


def _command_path(argv: list[str]) -> str:
    """``inlets status`` for a usage error click raised before it had the command's context
    (``inlets status --url`` without a value): the command words at the head of argv."""
    words = [w for group, modules in COMMANDS for m in modules for w in [m.split("_")] if argv[:len(w)] == w]
    return " ".join(["inlets", *max(words, key=len)]) if words else "inlets"


def main() -> None:
    """Entry point: flags are parsed in a child process, the tunnel runs in this one (cli/handoff.py)."""
    handoff.open_closed_stdio()  # before anything opens a file (or the loop its epoll fd) on a free fd 0-2
    lazy_modules.defer()  # before typer and websockets: memory kept for the life of the process
    handoff.hold_sighup()  # a reload asked for while starting is one once running, not the end of the process
    argv = sys.argv[1:]
    sys.exit(quiet_ctrl_c(handoff.parse_then_run, lambda: quiet_ctrl_c(_run, argv), lambda: _prefetch(argv),
                          _tunnel_command(argv) is not None))


#: Flags whose command ends in the parsing child (help text, a printed unit): the body is never run.
ENDS_IN_CHILD = ("--help", "--generate")


def _tunnel_command(argv: list[str]) -> str | None:
    """The module of the tunnel command ``argv`` runs (``tcp_server``); None for one that ends in the child."""
    if any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in ENDS_IN_CHILD):
        return None
    for group, modules in COMMANDS:
        for module in modules:
            if group is not None and argv[:2] == module.split("_"):
                return module
    return None


def _prefetch(argv: list[str]) -> None:
    """Import the body of the tunnel command ``argv`` names (``tcp server ...``), if installed and run.

    Not for ``--help`` or ``--generate``: the import would cost as much CPU as the child's whole
    parse (0.3 s measured) for a command that prints and exits."""
    module = _tunnel_command(argv)
    if module is not None:
        try:
            importlib.import_module(f"{__package__}.run.{module}")
        except ImportError:  # not in this installation: the child says so
            pass


def quiet_ctrl_c(function: Callable[..., int], *args: Any) -> int:
    """``function(*args)``; Ctrl-C at any moment is exit status 130 without a traceback, imports included
    (typer and the command's modules take a quarter of a second to load, the window a user is most likely to press it in)."""
    try:
        return function(*args)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:  # Ctrl-C inside a class body being imported ("Error calling __set_name__")
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            return 130
        raise


def _run(argv: list[str]) -> int:
    """``_parse``; output that cannot be written (a full disk) is one line on stderr and exit status 1, as inletsctl
    says it; a reader gone (``| head -1``) is exit status 1 without a word."""
    try:
        try:
            status = _parse(argv)
        except SystemExit:  # --generate's exit: what it wrote may still be in the buffer
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # here, not at the child's exit, which cannot say that it failed
        return status
    except BrokenPipeError:
        handoff.drop_stdout()
        return 1
    except OSError as exc:
        if exc.filename:  # not the output's: a file a command failed to say in its own words, a bug to show
            raise
        handoff.drop_stdout()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        line = f"inlets: error: {reason} writing the output: make room (or write elsewhere) and run it again"
        try:
            print(shown(line), file=sys.stderr, flush=True)
        except OSError:  # stderr cannot take it either: the status says it
            pass
        return 1


def _parse(argv: list[str]) -> int:
    """Usage errors as one line (``inlets: error: ...``), exit status 2; the command's status otherwise."""
    import typer

    from .app import app

    _register(argv)
    try:
        status_code = app(prog_name="inlets", standalone_mode=False)  # not "-c" or "__main__.py"
    except typer.TyperException as exc:  # usage errors: bad flags and values
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare command: show its help
            typer.echo(exc.format_message(), err=True)
            return 2
        command = ctx.command_path if ctx is not None else _command_path(argv)
        message = usage_line(exc)  # click's "'x' is not a valid int range." in words
        typer.echo(shown(f"{command}: error: {message} (see --help)"), err=True)
        return 2 if ctx is not None else exc.exit_code
    except typer.Abort:
        return 130
    return status_code if isinstance(status_code, int) else 0

