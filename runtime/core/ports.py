"""Port numbers from text, by one rule everywhere: 1 to 5 ASCII digits, 1-65535.

``str.isdigit`` is true for "²" (which ``int`` then refuses), and ``int`` takes
"٣", " 80", "+80" and "8_0": neither says whether text is a port. Hello frames,
command-line flags, URLs and generated definitions all parse ports here.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult

_DIGITS = re.compile(r"[0-9]{1,5}")


def parse_port(text: str, *, lowest: int = 1) -> int | None:
    """The port ``text`` spells, or None when it is not ``lowest``-65535 in ASCII digits."""
    if not _DIGITS.fullmatch(text):
        return None
    port = int(text)
    return port if lowest <= port <= 65535 else None


def parse_port_list(text: str) -> list[int]:
    """``80,443`` -> [80, 443] (blank entries skipped); ValueError naming the first bad entry."""
    ports = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        port = parse_port(item)
        if port is None:
            raise ValueError(f"{item!r} is not a port between 1 and 65535")
        ports.append(port)
    return ports


def url_port(parts: SplitResult, default: int) -> int:
    """The port of a split URL, ``default`` when it names none; ValueError for a bad one."""
    text = parts.netloc.rpartition("@")[2].rpartition("]")[2]
    _, colon, number = text.partition(":")  # the first: "h:443:1" is no port (it was 1), as urllib's .port says
    if not colon or not number:
        return default
    port = parse_port(number)
    if port is None:
        raise ValueError(f"{number!r} is not a port between 1 and 65535")
    return port
