"""The ``inletsctl`` script's entry point: the command is imported inside a Ctrl-C guard.

Importing the command takes a few hundred milliseconds (typer, every provider's module); a Ctrl-C in that
time printed a traceback of whichever import it cut short, where a Ctrl-C a moment later exits quietly (130).
"""

from __future__ import annotations

import sys


def main() -> None:
    """Import and run ``cli.main``; a Ctrl-C while importing exits 130 like one while running."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()
