"""Header values the proxy reads: the Host it routes on (checked, and remembered), Connection's tokens, keep-alive.

Apart from ``parser.py`` and the readers (the llhttp callbacks and the ``Reader`` state machine) because these are pure functions of
a header's bytes, shared by requests (``parser``) and responses (``response_reader``), and testable alone.
"""

from __future__ import annotations

import functools
import re

from .messages import host_of

#: A Host value the proxy routes: a DNS name or IPv4 address (ASCII; IDNs arrive as punycode) or an IPv6
#: literal, then an optional port of ASCII digits. Anything else (``/``, ``@``, spaces, a second name after a
#: comma, non-ASCII) is a 400, as nginx answers it (RFC 9110 7.2: an invalid Host is a 400); so is a name with
#: an empty label (``a..b``, ``..``: nginx refuses them, as apps that put the name in a path would climb out), and
#: a port without a name (``:80``). An empty Host stays valid (RFC 9110 7.2: a target without an authority).
_VALID_HOST = re.compile(rb"(?:(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?)(?::[0-9]*)?)?")


def routed_host(value: bytes) -> str | None:
    """``host_of(value)``, or None when ``value`` is no valid Host."""
    if not _VALID_HOST.fullmatch(value.strip(b" \t")):
        return None
    return host_of(value)


#: ``routed_host`` for Host values up to this long (any DNS name and port), remembered: a connection's requests,
#: and most users', repeat one Host, and checking and cleaning it cost ~2,500 instructions (measured). Longer ones
#: are never kept, so the cache holds at most 256 short values.
MAX_REMEMBERED_HOST = 300
remembered_host = functools.lru_cache(maxsize=256)(routed_host)


def header_tokens(values: list[bytes] | None) -> set[bytes]:
    """Comma-separated tokens of a header's values, lower case (``Connection: keep-alive, Upgrade``)."""
    tokens: set[bytes] = set()
    for value in values or ():  # loops, not a set comprehension: no frame of its own (once per message)
        for token in value.split(b","):
            tokens.add(token.strip().lower())
    return tokens


def is_keep_alive(version: bytes, tokens: set[bytes]) -> bool:
    """RFC 9112 9.3: ``close`` ends the connection whatever else Connection says (HTTP/1.0's ``keep-alive`` too)."""
    return b"close" not in tokens and (version == b"1.1" or b"keep-alive" in tokens)
