"""Readable random names for exit servers, and the rule every name must follow.

Names become droplet hostnames and state folder names, so they are restricted to
what both accept: lower-case letters, digits and inner hyphens, at most 63 long.
"""

from __future__ import annotations

import re
import secrets

from .errors import ProvisionError

_ADJECTIVES = (
    "amber", "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen",
    "lively", "lucky", "merry", "nimble", "noble", "proud", "quick", "quiet", "rapid", "sharp",
    "shiny", "steady", "sunny", "swift", "tidy", "vivid", "wise", "witty", "zesty", "bold",
)
_NOUNS = (
    "badger", "beaver", "condor", "dolphin", "falcon", "ferret", "gecko", "heron", "ibis", "jaguar",
    "koala", "lemur", "lynx", "marmot", "narwhal", "otter", "panda", "puffin", "quokka", "raven",
    "salmon", "tapir", "toucan", "turtle", "walrus", "weasel", "wombat", "yak", "zebra", "bison",
)
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # the whole name (fullmatch)


def random_name() -> str:
    """``adjective-noun-xxxx``: easy to read aloud, 4 hex digits make clashes unlikely."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"


def check_name(name: str) -> str:
    """``name`` when it follows the rule; an empty one is an error, never a random name."""
    if not name:
        raise ProvisionError("the exit server's name is empty: use 1-63 lower-case letters, digits and inner hyphens")
    if not NAME_RE.fullmatch(name):
        raise ProvisionError(
            f"invalid name {name!r}: use 1-63 lower-case letters, digits and inner hyphens"
        )
    return name
