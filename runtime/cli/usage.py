"""click's usage-error messages in the user's words, for ``inlets`` and ``inletsctl`` alike.

click names its parameter types ("'x' is not a valid int range.", "'abc' is not a valid float."):
Python's words, which tell a user who typed a flag nothing about what to give instead. And for an
unknown flag it offers whatever difflib finds at 0.6 alike ("--bogus": "Possible options: --host").
"""

from __future__ import annotations

import re
from typing import Any

#: click's number types by name (typer's int is "int" or "integer", a min=/max= one adds " range").
_NUMBER_TYPE = re.compile(r" is not a valid (int|integer|float)(?: range)?\b")
_WORDS = {"int": "a whole number", "integer": "a whole number", "float": "a number"}


def users_words(message: str) -> str:
    """``message`` with click's type names replaced: "'x' is not a whole number.", "'abc' is not a number."."""
    return _NUMBER_TYPE.sub(lambda match: f" is not {_WORDS[match[1]]}", message)


#: A command-line byte that is not UTF-8 reaches Python as a lone surrogate (surrogateescape: b"\xe9" is "\udce9"),
#: raw in a message or escaped by repr(); an escape's backslash may not itself be escaped ("\\udce9" was typed so).
_RAW_BYTE = re.compile("[\udc80-\udcff]")
_ESCAPED_BYTE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def shown(message: str) -> str:
    """``message`` with each command-line byte that was not UTF-8 shown as the user knows it (``\\xe9``): errors
    showed Python's surrogate escape (``\\udce9``), a character nobody typed."""
    message = _RAW_BYTE.sub(lambda match: f"\\x{ord(match[0]) - 0xDC00:02x}", message)
    return _ESCAPED_BYTE.sub(lambda match: f"{match[1]}\\x{match[2]}", message)


#: How alike an unknown flag and a real one must be to be offered (difflib's ratio): "--prot" -> "--port"
#: (0.91) and "--tokn" -> "--token" (0.91) pass, "--bogus" -> "--host" (0.67) does not.
CLOSE_ENOUGH = 0.75


def usage_line(exc: Any) -> str:
    """A click usage error as the one line after "error: ", in the user's words; an unknown flag offers only
    the real flags that look like a typo of it."""
    name, possibilities = getattr(exc, "option_name", None), getattr(exc, "possibilities", None)
    if name is None or not possibilities:
        return users_words(exc.format_message())
    from difflib import SequenceMatcher

    close = [flag for flag in possibilities if SequenceMatcher(None, name, flag).ratio() >= CLOSE_ENOUGH]
    return exc.message + (f" (did you mean {' or '.join(close)}?)" if close else "")
