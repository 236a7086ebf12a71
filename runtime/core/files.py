"""A secret file written where another user can never have a hand in it: shared by --auto-tls's keys (``certs``),
Let's Encrypt's store (``acme.store``) and inletsctl's state."""

from __future__ import annotations

import os
from pathlib import Path


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
