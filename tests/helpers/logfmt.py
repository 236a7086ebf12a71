"""A strict logfmt reader, as log pipelines read the text lines (go-logfmt's rules): ``key=value`` pairs separated by
spaces, a bare value ends at a space and may hold neither ``=`` nor ``"``, a quoted one takes backslash escapes."""

from __future__ import annotations

import json


class LogfmtError(ValueError):
    """Not a logfmt line: a pipeline would drop it or read it wrong."""


def parse(line: str) -> list[tuple[str, str | None]]:
    """The (key, value) pairs of ``line`` in order; a key without ``=`` has the value None."""
    pairs: list[tuple[str, str | None]] = []
    i, end = 0, len(line)
    while i < end:
        if line[i] == " ":
            i += 1
            continue
        j = i
        while j < end and line[j] not in ' ="':
            j += 1
        key = line[i:j]
        if not key or (j < end and line[j] == '"'):
            raise LogfmtError(f"no key at {i}: {line!r}")
        if j == end or line[j] == " ":
            pairs.append((key, None))
            i = j
            continue
        j += 1  # past "="
        if j < end and line[j] == '"':
            k = j + 1
            while k < end and line[k] != '"':
                k += 2 if line[k] == "\\" else 1
            if k >= end:
                raise LogfmtError(f"unterminated quote at {j}: {line!r}")
            value = json.loads(line[j : k + 1])  # the escapes logfmt writers use are JSON's
            i = k + 1
            if i < end and line[i] != " ":
                raise LogfmtError(f"text right after a quoted value at {i}: {line!r}")
        else:
            k = j
            while k < end and line[k] != " ":
                if line[k] in '="':
                    raise LogfmtError(f"{line[k]!r} in a bare value at {k}: {line!r}")
                k += 1
            value, i = line[j:k], k
        pairs.append((key, value))
    return pairs
