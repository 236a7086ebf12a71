"""Seconds flags (``--keepalive``, ``--drain-timeout``, ``--timeout``...), parsed by one rule.

click's FLOAT takes "nan" and "inf", and its ``min=`` lets nan through (every comparison with
nan is false): ``asyncio.sleep(nan)`` then raises inside the keepalive task (on uvloop), and
``socket.settimeout(nan)`` raises ValueError as a traceback. A duration must be a finite number.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Callable

import typer

_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def seconds_parser(lowest: float, highest: float = 7 * 24 * 3600.0) -> Callable[[str | float], float]:
    """A typer ``parser=``: plain decimal seconds from ``lowest`` to ``highest`` (a week), else one line."""

    def parse(value: str | float) -> float:
        if isinstance(value, float):  # typer passes the default through as is
            return value
        text = str(value).strip()
        number = float(text) if _NUMBER.fullmatch(text) else math.nan
        if not lowest <= number <= highest:  # nan fails both comparisons
            raise typer.BadParameter(f"{str(value)!r} is not a number of seconds from {lowest:g} to {highest:g}")
        return number

    return parse


def seconds_option(help: str, lowest: float, *names: str) -> Any:
    """A seconds flag: parsed by ``seconds_parser(lowest)``, shown as SECONDS in --help."""
    return typer.Option(*names, parser=seconds_parser(lowest), metavar="SECONDS", help=help)


Keepalive = Annotated[float, seconds_option("Seconds within which a dead peer is detected.", 1.0)]
DrainTimeout = Annotated[float, seconds_option("On SIGTERM, seconds open connections get to finish before exit.", 0.0)]
