"""The one exception type inletsctl turns into a one-line error and a non-zero exit."""

from __future__ import annotations

import os
import socket


class ProvisionError(Exception):
    """A user-facing failure: the message is one line that says what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(ProvisionError):
    """A flag or argument the command cannot take (a bad value, one missing, two that conflict), found before anything
    is made: exit status 2, as click's own usage errors and every ``inlets`` one have (1 was a failure at run time)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken as Ctrl-C is (the same words on what is left), with that signal's exit status: 143
    for a TERM, 129 for a HUP."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__()
        self.signum = signum


class _Signals:
    """The SIGTERM or SIGHUP that came during this command: typer turns a KeyboardInterrupt no command caught (one
    while click parses the flags, say) into its exit status 130, and the Interrupted under it is lost."""

    signum: int | None = None


def interrupted_status(exc: BaseException | None = None) -> int:
    """128 + the signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP."""
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    return 128 + (_Signals.signum or 2)


def catch_signals() -> None:
    """SIGTERM (a ``timeout``, a CI job's end) and SIGHUP (the terminal closed) are taken as Ctrl-C is: both killed
    create without a word, a VM or server left running and a SIGHUP's state folder perhaps half written. A SIGHUP
    already ignored (``nohup inletsctl create``) stays ignored."""
    import signal

    signal.signal(signal.SIGTERM, raise_interrupted)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
        signal.signal(signal.SIGHUP, raise_interrupted)


def finished() -> None:
    """The command's work is done and said: from here a Ctrl-C or SIGTERM could only turn its success into a
    failure (or a kill by the signal, as one during the interpreter's exit was), so both are ignored."""
    import signal

    if signal.getsignal(signal.SIGTERM) is not raise_interrupted:
        return  # cli.main called by a program of its own (the tests): not the inletsctl script's signals to change
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signal.getsignal(signal.SIGHUP) is raise_interrupted:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def raise_interrupted(signum: int, frame: object) -> None:
    """The SIGTERM and SIGHUP handler: a ``timeout``, a CI job's end or a closed terminal ended create without a
    word, its server left running."""
    _Signals.signum = signum
    raise Interrupted(signum)


def command_starts() -> None:
    """Forget a SIGTERM or SIGHUP of an earlier command run in this process (the tests run many)."""
    _Signals.signum = None


class NotFound(ProvisionError):
    """The exit server (VM, process or local state) does not exist."""


# StatusFailed.state, and ``--json``'s "state": words scripts read, named here so that a typo fails at import
STATE_INVALID = "invalid"  # a name that cannot be one, an unknown provider
STATE_NOT_FOUND = "not_found"  # no local state of that name
STATE_DAMAGED = "damaged"  # a local state (server.json, its token or CA) that cannot be read
STATE_NO_CREDENTIALS = "no_credentials"  # the provider's credentials are missing or cannot be read
STATE_API_ERROR = "api_error"  # the provider's API failed (refused the credentials, unreachable, in trouble)
STATE_GONE = "gone"  # the provider says the exit server no longer exists
STATE_STOPPED = "stopped"  # the VM or process will not run again
STATE_NO_IP = "no_ip"  # create did not finish: no address to ask
STATE_UNREACHABLE = "unreachable"  # the exit server did not answer on its control port (a result, not a StatusFailed)


class StatusFailed(ProvisionError):
    """``inletsctl status`` could not tell how the exit server is, or ``list --provider`` how its cloud's are:
    ``state``, a word for scripts (STATE_GONE, STATE_API_ERROR, ... above), and ``result``, what was learned before, for
    ``--json`` to print with the error."""

    def __init__(self, message: str, state: str, result: dict | None = None, exit_code: int = 1) -> None:
        super().__init__(message, exit_code)
        self.state, self.result = state, result or {}


class Transient(ProvisionError):
    """The API could not answer now (rate limited, unreachable, in trouble): a wait asks again instead of giving
    up, no sooner than ``retry_after`` seconds when the API said when (its Retry-After)."""

    def __init__(self, message: str, exit_code: int = 1, retry_after: float | None = None,
                 maybe_done: bool = False) -> None:
        super().__init__(message, exit_code)
        self.retry_after = retry_after
        self.maybe_done = maybe_done  # the request went out and no answer came: the API may still carry it out


class LeftBehind(ProvisionError):
    """A create call failed after making something its own clean-up could not remove, which only the local state
    shows to be inletsctl's (a Vultr firewall group's marker): create looks for it again before that state goes."""


def os_words(exc: OSError) -> str:
    """The OS's reason for ``exc`` ("Permission denied"), not Python's wrapper around it."""
    if isinstance(exc, socket.gaierror):  # getaddrinfo's codes are no errno: strerror(-2) is "Unknown error -2"
        return f"the host name does not resolve ({exc.strerror or exc})"
    return os.strerror(exc.errno) if exc.errno else str(exc)
