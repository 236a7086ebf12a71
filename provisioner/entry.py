"""The ``inletsctl`` script's entry point: the command is imported inside a Ctrl-C guard.

Importing the command takes a few hundred milliseconds (typer, every provider's module); a Ctrl-C in that
time printed a traceback of whichever import it cut short, where a Ctrl-C a moment later exits quietly (130).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Import and run ``cli.main``; a Ctrl-C while importing exits 130 like one while running (143 for SIGTERM,
    129 for SIGHUP, each taken as a Ctrl-C is: what was made is said, and nothing more is asked of a cloud)."""
    try:
        from .errors import catch_signals, interrupted_status
        from inlets_py.runtime.cli.handoff import open_closed_stdio

        open_closed_stdio()  # ``inletsctl list >&-``: sys.stdout was None, and the next file opened took a free fd 0-2
        catch_signals()
        from .cli import main as run
    except KeyboardInterrupt as exc:
        sys.exit(interrupted_status(exc))
    run()
