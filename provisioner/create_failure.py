"""What a create that failed (or was interrupted) says and leaves: its ``--json`` result and state word, as ``status
--json`` reports a failure; and what it had made, looked for when the call that made it failed, then deleted
(--delete-on-failure) or left with the delete command that removes it. Never a server nobody knows of."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import replicas
from .errors import (STATE_API_ERROR, STATE_GONE, STATE_INVALID, STATE_NO_IP, LeftBehind, NotFound, ProvisionError,
                     StatusFailed, Transient, interrupted_status)
from .providers import Credentials
from .providers.base import GONE_TIMEOUT, Host, Provisioner, delete_leftovers, leftover_words
from .state import ServerState, delete_command, inletsctl_command
from .status import as_failed
from .wait import Progress, wait_until_gone

if TYPE_CHECKING:
    from .create import CreateOptions


@dataclass
class Learned:
    """What a create that failed had learned, for ``create --json`` to print as ``status --json`` prints its failures:
    the fields status shows, and how far the create got, which picks the state word."""

    result: dict[str, Any]
    asking: bool = False  # the failure is the provider's answer (its API, an ssh host): STATE_API_ERROR
    reserved: ServerState | None = None  # the state folder this create reserved
    meta: dict[str, Any] = field(default_factory=dict)
    ip: str | None = None  # the address the wait saw, which ``meta`` gets only once create succeeds

    def failed(self, exc: ProvisionError) -> StatusFailed:
        """``exc`` with ``result`` and its state: made and kept for its delete command, ``no_ip`` (create did not
        finish, as ``status`` then says too); made and deleted, ``gone``; nothing made, why not. A folder kept for
        what else it holds (``ServerState.remove``) is no exit server's: the error says so, not the state word."""
        self.result |= {"id": self.meta.get("id"), "ip": self.meta.get("ip") or self.ip} if self.meta else {}
        made = self.reserved is not None and self.reserved.exists()
        if isinstance(exc, StatusFailed):  # connect's: the provider unknown, its credentials missing
            state = exc.state
        elif exc.exit_code == 2:  # a UsageError
            state = STATE_INVALID
        elif made or self.meta.get("id"):
            state = STATE_NO_IP if made else STATE_GONE
        else:
            state = STATE_API_ERROR if self.asking else STATE_INVALID
        failed = as_failed(StatusFailed(str(exc), state, None, exc.exit_code), self.result)
        failed.result |= {"error": str(failed), "state": failed.state}
        return failed


def failed_after_making(
    exc: ProvisionError, provider: Provisioner, meta: dict[str, Any], state: ServerState, opts: CreateOptions,
    progress: Progress,
) -> ProvisionError:
    """``exc``, from a create that had made a server (or some of its replicas): deleted with all it made when
    --delete-on-failure asks, else left as it is, the error naming the delete command that removes it."""
    if not state.dir.exists():  # deleted meanwhile (another inletsctl delete): a delete now finds nothing
        return ProvisionError(f"{exc}; it was deleted meanwhile (its local state is gone too)")
    if not opts.delete_on_failure:
        return ProvisionError(f"{exc}; delete it with: {delete_command_for(state, opts)}")
    try:
        timeout, started = min(opts.timeout, GONE_TIMEOUT), time.monotonic()
        if replicas.is_group(meta):
            replicas.delete_group(provider, meta, timeout, progress, started)
        else:
            try:
                provider.delete(str(meta["id"]), timeout)
            except NotFound:  # gone already: what was made with it (a Hetzner or Linode firewall) goes by its name
                delete_leftovers(provider, state.name)
            else:
                wait_until_gone(provider, str(meta["id"]), timeout, progress, interval=1.0, started=started,
                                label=state.name)
    except NotFound:
        pass
    except ProvisionError as again:
        return ProvisionError(f"{exc}; deleting it also failed ({again}): {delete_command_for(state, opts)}")
    kept = state.remove()
    if kept:  # "deleted it" read as if nothing were left: the folder is, for what it holds that is not inletsctl's
        return ProvisionError(f"{exc}; deleted the exit server (--delete-on-failure), but {kept}")
    return ProvisionError(f"{exc}; deleted it (--delete-on-failure)")


def record_id(meta: dict[str, Any], replica: int | None, host_id: str) -> None:
    """Note a host's id in the metadata (its replica's entry in a group), for the delete command to find it by."""
    if replica is not None:
        meta["replicas"][replica]["id"] = host_id
    else:
        meta["id"] = host_id


def made_anyway(exc: BaseException, provider: Provisioner, name: str, hosts: list[Host], meta: dict[str, Any],
                state: ServerState, opts: CreateOptions) -> tuple[BaseException, bool]:
    """A create call was interrupted (Ctrl-C: a VM requested, a host half set up over SSH, a process started), or a
    cloud's failed after it may have been sent (no answer in time, a 500, an answer that cannot be read): it may
    exist and bill or serve all the same, so look for it by name.

    Returns the error to go on with and whether it is known what exists: found, the VM joins ``hosts`` and is
    reported (or deleted) like one that never came up; not found, ``exc`` stands. Unknown (Ctrl-C, the API still
    failing): the state must stay, so that the delete command the error names finds the VM by name if it exists."""
    delete = delete_command_for(state, opts)
    if isinstance(exc, KeyboardInterrupt):  # no API calls after Ctrl-C
        if hosts:
            return exc, True  # _interrupted says what is left
        return ProvisionError(f"interrupted while creating {name!r} on {opts.provider}, which may have made it: "
                              f"`{delete}` deletes it if so, and removes the local state",
                              exit_code=interrupted_status(exc)), False
    try:
        found = next((h for h in provider.list() if h.name == name), None)
    except ProvisionError as again:
        return ProvisionError(f"{exc}; whether {opts.provider} created {name!r} all the same could not be checked "
                              f"({again}): `{delete}` deletes it if it did, and removes the local state"), False
    if found is None and isinstance(exc, Transient) and exc.maybe_done:  # the API may still be making it, unlisted
        return ProvisionError(f"{exc}; {opts.provider} does not list {name!r} yet but may still make it: `{delete}` "
                              "deletes it if so, and removes the local state"), False
    if found is None and not isinstance(exc, (Transient, LeftBehind)):
        return exc, True
    if found is None:  # what it made first may exist all the same (a firewall whose POST timed out): named
        # inlets-NAME, it made the next create of NAME fail ("label must be unique"), and no state was left to delete it
        try:
            removed = delete_leftovers(provider, name)
        except NotFound:
            removed = []
        except ProvisionError as again:
            return ProvisionError(f"{exc}; whether {opts.provider} made a firewall for {name!r} all the same could not "
                                  f"be checked ({again}): `{delete}` deletes it if it did, and removes the local "
                                  "state"), False
        return (ProvisionError(f"{exc}; {leftover_words(removed)}") if removed else exc), True
    hosts.append(found)
    replica = next((i for i, r in enumerate(meta.get("replicas") or []) if r.get("name") == name), None)
    record_id(meta, replica, found.id)
    state.save(meta)
    return ProvisionError(f"{exc}; {opts.provider} created {name!r} all the same (id {found.id})"), True


def interrupted_after_making(exc: KeyboardInterrupt, hosts: list[Host], state: ServerState,
                             opts: CreateOptions) -> ProvisionError:
    """Ctrl-C (or SIGTERM) once something exists: say what is left and how to remove it (as a failed wait does),
    never a silent exit that leaves a server nobody knows of."""
    ids = ", ".join(host.id for host in hosts)
    return ProvisionError(f"interrupted: exit server {state.name!r} was left on {opts.provider} (id {ids}) without "
                          f"its client command; delete it with: {delete_command_for(state, opts)}",
                          exit_code=interrupted_status(exc))


def interrupted_when_ready(exc: KeyboardInterrupt, name: str, root: Path, flags: str = "") -> ProvisionError:
    """Ctrl-C (or SIGTERM) once the server is up and its client command recorded: where to see that command."""
    return ProvisionError(f"interrupted: exit server {name!r} is ready; see its client command with: "
                          f"{inletsctl_command('status', name, root)}{flags}", exit_code=interrupted_status(exc))


def credential_flags(creds: Credentials) -> str:
    """The credential files create was given, as flags of the delete and status commands it prints: without them
    those failed as printed ("no DigitalOcean access token"). Paths only: a token given inline is never printed."""
    files = (("--access-token-file", creds.token_file), ("--secret-key-file", creds.secret_file))
    return "".join(f" {flag} {shlex.quote(str(path))}" for flag, path in files if path is not None)


def delete_command_for(state: ServerState, opts: CreateOptions) -> str:
    """The delete command that removes what this create made, with the credential files it was given."""
    return delete_command(state.name, state.root) + credential_flags(opts.creds)
