"""JSON from a peer or a file, each object's keys once.

``json.loads`` keeps the last of a repeated key: ``{"mode": "tcp", "mode": "http"}`` was read as http here, and
as tcp by a parser that keeps the first (Go's keeps the last, others refuse), so what one side checked need not
be what another reads. Such a document is refused instead, as any other malformed one is.
"""

from __future__ import annotations

import json
import re

#: A key shown in an error as it is: short, and nothing a terminal or a log line would read as more than a word.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")


class RepeatedKey(ValueError):
    """An object names ``key`` twice. A ``ValueError``, as ``json.JSONDecodeError`` is."""

    def __init__(self, key: str) -> None:
        super().__init__("an object names a key twice")
        self.key = key

    @property
    def shown(self) -> str:
        """The key for a message: ``"mode"``, or ``a key`` when it is long or holds more than letters and digits."""
        return f'"{self.key}"' if _PLAIN_KEY.fullmatch(self.key) else "a key"


def _unique(pairs: list[tuple[str, object]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):  # the common case costs one dict and one comparison
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return document


def loads(text: str | bytes) -> object:
    """``json.loads``, but ``RepeatedKey`` for an object that names a key twice."""
    return json.loads(text, object_pairs_hook=_unique)
