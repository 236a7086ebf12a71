"""Readable random names for exit servers, and the rule every name must follow.

Names become droplet hostnames and state folder names, so they are restricted to
what both accept: lower-case letters, digits and inner hyphens, at most 63 long.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from .errors import UsageError

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
        raise UsageError("the exit server's name is empty: use 1-63 lower-case letters, digits and inner hyphens")
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid name {name!r}: use 1-63 lower-case letters, digits and inner hyphens"
        )
    return name


@dataclass(frozen=True)
class NameRule:
    """What one cloud takes as a VM's name beyond the rule every name follows (NAME_RE), as its API documents it:
    checked by ``create`` before any API call, so a name the cloud would refuse is one line, not a half-made server."""

    what: str = ""  # the cloud's word for the name, in errors: "a Linode label"
    min_len: int = 1
    max_len: int = 63
    letter_first: bool = False  # GCE: [a-z]([-a-z0-9]*[a-z0-9])?
    single_hyphens: bool = False  # Linode: no "--" in a label (nor in the firewall's, which contains the name)

    def check(self, provider: str, name: str, hosts: list[str]) -> None:
        """A one-line error unless every host name (``name``, or its replicas' NAME-1..NAME-N) fits this cloud."""
        where = f"--provider {provider}: {self.what}"
        if min(len(host) for host in hosts) < self.min_len:
            raise UsageError(f"the name {name!r} is too short for {where} has {self.min_len}-{self.max_len} "
                                 f"characters; use a name of {self.min_len} to {min(self.max_len, 63)}")
        if self.letter_first and not name[:1].isalpha():
            raise UsageError(f"the name {name!r} cannot be used on {where} starts with a letter; "
                                 "start the name with a lower-case letter")
        if self.single_hyphens and "--" in name:
            raise UsageError(f"the name {name!r} cannot be used on {where} never has two hyphens in a row; "
                                 "use single hyphens")
