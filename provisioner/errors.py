"""The one exception type inletsctl turns into a one-line error and a non-zero exit."""

from __future__ import annotations

import os
import socket


class ProvisionError(Exception):
    """A user-facing failure: the message is one line that says what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C is (the same words on what is left), with the exit status of a TERM: 143."""


def interrupted_status(exc: BaseException | None = None) -> int:
    """128 + the signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 143 if isinstance(exc, Interrupted) else 130


def raise_interrupted(signum: int, frame: object) -> None:
    """The SIGTERM handler: a ``timeout`` or a CI job ending create left its server running without a word."""
    raise Interrupted


class NotFound(ProvisionError):
    """The exit server (VM, process or local state) does not exist."""


class Transient(ProvisionError):
    """The API could not answer now (rate limited, unreachable): a wait asks again instead of giving up."""


def os_words(exc: OSError) -> str:
    """The OS's reason for ``exc`` ("Permission denied"), not Python's wrapper around it."""
    if isinstance(exc, socket.gaierror):  # getaddrinfo's codes are no errno: strerror(-2) is "Unknown error -2"
        return f"the host name does not resolve ({exc.strerror or exc})"
    return os.strerror(exc.errno) if exc.errno else str(exc)
