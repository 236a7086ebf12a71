"""Network namespaces a test makes for itself (``ip netns``): only ``lo`` in them, so nothing leaves this machine."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from typing import Iterator

import pytest


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def namespace(prefix: str, *steps: tuple[str, ...]) -> Iterator[str]:
    """A namespace with ``lo`` up, then each ``ip -n NAME`` step done; skipped, with why, where none can be made
    (no root, no iproute2); deleted after."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    try:
        made = ip("netns", "add", name)
    except OSError as exc:
        pytest.skip(f"cannot create a network namespace: {exc}")
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        for step in (("link", "set", "lo", "up"), *steps):
            done = ip("-n", name, *step)
            assert done.returncode == 0, done.stderr
        yield name
    finally:
        ip("netns", "del", name)
