"""click's usage-error messages in the user's words, for ``inlets`` and ``inletsctl`` alike.

click names its parameter types ("'x' is not a valid int range.", "'abc' is not a valid float."):
Python's words, which tell a user who typed a flag nothing about what to give instead.
"""

from __future__ import annotations

import re

#: click's number types by name (typer's int is "int" or "integer", a min=/max= one adds " range").
_NUMBER_TYPE = re.compile(r" is not a valid (int|integer|float)(?: range)?\b")
_WORDS = {"int": "a whole number", "integer": "a whole number", "float": "a number"}


def users_words(message: str) -> str:
    """``message`` with click's type names replaced: "'x' is not a whole number.", "'abc' is not a number."."""
    return _NUMBER_TYPE.sub(lambda match: f" is not {_WORDS[match[1]]}", message)
