"""A secret file written where another user can never have a hand in it: shared by --auto-tls's keys (``certs``),
Let's Encrypt's store (``acme.store``) and inletsctl's state."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

#: The name ``temporary_beside`` gives: one left by a write cut short (a crash, a full disk) matches it, and ``name``
#: is the file it was to replace, so a folder's owner (``certs``' sweep, ``inletsctl delete``) knows it for its own.
UNFINISHED = re.compile(r"\.(?P<name>[^/]+)\.[0-9a-f]{16}\.tmp")


def write_new(path: Path, data: bytes) -> None:
    """A new file, 0600 whatever the umask, written whole and flushed to disk before it is renamed into use. O_EXCL:
    a file or link someone else left at ``path`` is an error, never written through (it kept its owner)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        left = memoryview(data)
        while left:
            left = left[os.write(fd, left):]
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_beside(path: Path) -> Path:
    """Where to write ``path``'s new content before renaming it over ``path``: random (``.NAME.<16 hex>.tmp``), as a
    fixed ``NAME.tmp`` another user had made first kept its owner, and what was written into it was theirs to read."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
