"""Per-exit-server secrets and metadata on the user's machine.

One folder (0700) per exit server under the state root (``state_root``): the token,
the CA the client pins, the server's key and certificate where the server runs
locally, and ``server.json``. Secret files are 0600 from the moment they exist.
"""

from __future__ import annotations

import json
import datetime
import errno
import functools
import os
import shlex
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inlets_py.runtime.core.files import UNFINISHED

from .errors import NotFound, ProvisionError, os_words
from .output import command_word
from .names import NAME_RE as _NAME_RE
from .state_root import STATE_ENV, state_root  # noqa: F401  # re-exported: the CLI's
from .state_root import check_root, chmod_command, default_root, other_owner, prepare_root

METADATA = "server.json"
TOKEN, CA_CERT, SERVER_CERT, SERVER_KEY = "token", "ca.crt", "server.crt", "server.key"


def _write_private(path: Path, data: bytes) -> None:
    """runtime.core.certs' 0600 writer, imported when a file is written: that module loads ``cryptography``,
    which ``list`` and ``delete`` never need."""
    from inlets_py.runtime.core.certs import write_private

    write_private(path, data)


@dataclass(frozen=True)
class ServerState:
    """The folder of one exit server."""

    root: Path
    name: str

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def token_file(self) -> Path:
        return self.dir / TOKEN

    @property
    def ca_file(self) -> Path:
        return self.dir / CA_CERT

    @property
    def cert_file(self) -> Path:
        return self.dir / SERVER_CERT

    @property
    def key_file(self) -> Path:
        return self.dir / SERVER_KEY

    def exists(self) -> bool:
        """The folder holds a file inletsctl writes (or cannot be looked into): an exit server's state, if damaged."""
        return _holds_ours(self.dir)

    def check_free(self) -> None:
        """Fail, saying what is there, when the name's folder is taken: by an exit server (delete it), or by a
        file or link of someone else's (delete finds no exit server there: it was no help to name it)."""
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise ProvisionError(f"{self.dir} is in the way of an exit server named {self.name!r}: it is a "
                                 f"{'symbolic link' if self.dir.is_symlink() else 'file'}, not inletsctl's; "
                                 "move it away, or choose another name")
        foreign = self.dir.is_dir() and not self.exists() and (not _young(self.dir) or bool(os.listdir(self.dir)))
        if foreign:  # a project's folder, another --state-dir (young and empty: a create under way): delete finds none
            raise ProvisionError(f"{self.dir} is in the way of an exit server named {self.name!r}: it is a folder "
                                 "inletsctl did not make (none of its files are in it); move it away, or choose "
                                 "another name")
        if self.dir.exists():
            raise ProvisionError(f"an exit server named {self.name!r} already exists ({self.dir}); "
                                 f"choose another name, or first: {delete_command(self.name, self.root)}")

    def reserve(self) -> None:
        """Create the folder; fail if an exit server of this name is already kept here."""
        prepare_root(self.root)
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError:
            self.check_free()
            raise ProvisionError(f"{self.dir} appeared meanwhile: choose another name") from None
        try:
            os.chmod(self.dir, 0o700)
        except BaseException:  # Ctrl-C: before create's own clean-up begins, an empty folder blocked the name
            self.dir.rmdir()
            raise

    def write_secret(self, path: Path, data: bytes) -> None:
        _write_private(path, data)

    def write_public(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        os.chmod(path, 0o644)

    def save(self, metadata: dict[str, Any]) -> None:
        tmp = self.dir / (METADATA + ".tmp")
        _write_private(tmp, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
        tmp.replace(self.dir / METADATA)

    def load(self) -> dict[str, Any]:
        """The metadata; NotFound when there is no such exit server, Damaged when it cannot be used."""
        check_root(self.root)
        owner = other_owner(self.dir)
        if owner is not None:  # put there while the root was open to others: its client command, its CA are theirs
            raise Damaged(self, f"is in a folder another user (uid {owner}) made, not inletsctl: it is not used")
        try:
            meta = json.loads(_read_regular(self.dir / METADATA))
        except (FileNotFoundError, NotADirectoryError):
            if not self.dir.is_dir() or not self.exists():  # a project's folder, another --state-dir: never ours
                raise not_here(self.name, self.root) from None
            raise Damaged(self, "is missing") from None
        except PermissionError as exc:  # the state is likely fine, only its mode is not: say how to fix that first
            raise Damaged(self, f"cannot be read ({os_words(exc)})",
                          fix=f"let this user read it ({chmod_command(self.dir)}), or remove it with") from None
        except OSError as exc:
            raise Damaged(self, f"cannot be read ({os_words(exc)})") from None
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            raise Damaged(self, "is not valid JSON, cut short or edited") from None
        why = _unusable(meta, self.name)
        if why:
            provider = meta.get("provider") if isinstance(meta, dict) else None
            raise Damaged(self, why, provider if _known_provider(provider) else None)
        damaged = _provider_damage(self, meta)
        if damaged is not None:
            raise damaged
        return meta

    def token(self) -> str:
        """The tunnel token; the error says what to do, as only this file holds it (no client connects without it)."""
        try:
            return _read_regular(self.token_file).decode().strip()
        except OSError as exc:
            why = os_words(exc)
        except UnicodeDecodeError:
            why = "it is not text, cut short or edited"
        raise ProvisionError(f"cannot read token file {self.token_file}: {why}; put it back (or let this user read "
                             f"it), else no client can connect: {delete_command(self.name, self.root)}, then create it "
                             "again")

    def remove(self) -> str:
        """Remove the files inletsctl writes in this folder (``state_files``), then the folder once empty; never
        anything else, as a folder that only looked like state was a user's (a project, another --state-dir nested
        here). '' when the folder is gone, else a clause saying it was kept and what it still holds."""
        if not _NAME_RE.fullmatch(self.name):  # only ever one exit server's own folder, never the root or beyond
            raise ProvisionError(f"invalid name {self.name!r}: nothing removed")
        if self.dir.is_symlink():  # its files are wherever it leads: not this state root's to remove
            raise ProvisionError(f"{self.dir} is a symbolic link, not a folder inletsctl made: nothing removed; "
                                 "remove the link by hand if it is no longer needed")
        others: list[str] = []
        try:
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    if _ours(entry.name) and not entry.is_dir(follow_symlinks=False):
                        Path(entry.path).unlink(missing_ok=True)
                    else:
                        others.append(repr(entry.name))  # repr: one line, whatever the name holds
            if not others:
                self.dir.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise self._cannot_remove() from None
            others = ["a file written meanwhile"]
        if not others:
            return ""
        shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        return (f"kept {self.dir}: it also holds what inletsctl did not write there ({shown}); move that away, then "
                "remove the folder")

    def _cannot_remove(self) -> ProvisionError:
        parent = self.dir.parent  # removing the folder itself takes write access to the one holding it
        fix = (chmod_command(self.dir) if os.access(parent, os.W_OK | os.X_OK)
               else f"chmod u+rwx {shlex.quote(str(parent))}, the folder holding it")
        return ProvisionError(f"cannot remove {self.dir}: let this user change it ({fix}) and run the command again")


@functools.cache
def state_files() -> frozenset[str]:
    """The files inletsctl writes in an exit server's folder, for any provider: a folder holding none of them was
    never one (list and delete pass it by), and delete removes these only, never what else a folder holds. Named by
    the providers that write them, read when first asked: providers/local imports this module."""
    from .providers import ec2_regions, local, ssh, vultr

    return frozenset({
        METADATA, METADATA + ".tmp",  # ServerState.save
        TOKEN, CA_CERT, SERVER_CERT, SERVER_KEY,  # create: the secrets, and the TLS files of a server run here
        local.PID_FILE, "server.log",  # the local server's pid and log (local.py names the log only where it is used)
        ssh.RECORD, ssh.PINNED,  # how to reach the host, and its pinned key
        ec2_regions.REGION_RECORD,
        vultr.MARKERS,
    })


def _ours(name: str) -> bool:
    """``name`` is one of the files inletsctl writes in an exit server's folder, or what a write of one cut short
    left beside it (``files.temporary_beside``: ".token.<16 hex>.tmp")."""
    unfinished = UNFINISHED.fullmatch(name)
    return name in state_files() or (unfinished is not None and unfinished["name"] in state_files())


def _holds_ours(folder: Path) -> bool:
    """``folder`` holds a file inletsctl writes, or cannot be looked into (said as damaged, never hidden)."""
    try:
        return any(_ours(name) for name in os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


class Damaged(ProvisionError):
    """A state folder whose metadata (``file``: server.json, or a provider's own) cannot be used: ``list`` shows it
    and ``delete`` removes it; ``unchecked``: what delete then says it could not check, where the provider has no
    list of its own to look in (None: delete names the provider's list)."""

    def __init__(self, state: ServerState, why: str, provider: object = None, fix: str = "remove it with",
                 file: str = METADATA, unchecked: str | None = None) -> None:
        self.state, self.why = state, f"{file} {why}"  # why: what is wrong with the file, "is missing"
        self.provider = provider if isinstance(provider, str) and provider else None
        self.advice = f"{fix}: {delete_command(state.name, state.root)}"
        self.unchecked = unchecked
        super().__init__(f"the local state of {state.name!r} is damaged: {state.dir / file} {why}; {self.advice}")


def _provider_damage(state: ServerState, meta: dict[str, Any]) -> Damaged | None:
    """What is wrong with the files a provider keeps beside server.json (ssh's ssh.json, the only way to its host),
    said by the provider module's ``state_damage``; None for providers that keep none."""
    import importlib

    module = importlib.import_module(f".providers.{meta['provider']}", __package__)  # a known provider (_unusable)
    check = getattr(module, "state_damage", None)
    return check(state, meta) if check is not None else None


def _unusable(meta: object, name: str) -> str | None:
    """What makes ``meta`` unusable, in words (the keys inletsctl reads without a default); None: usable."""
    if not isinstance(meta, dict):
        return "holds no JSON object"
    if not isinstance(meta.get("name"), str):
        return "names no exit server"
    if meta["name"] != name:
        return f"names {meta['name']!r}, not {name!r}"
    if not isinstance(meta.get("provider"), str) or not meta["provider"]:
        return "names no provider"
    if not _known_provider(meta["provider"]):  # no command could use it: delete removes it, as any damaged state
        return f"names provider {meta['provider']!r}, which this inletsctl does not know"
    replicas = meta.get("replicas")
    if replicas is not None and not (isinstance(replicas, list) and all(isinstance(r, dict) for r in replicas)):
        return "has a broken list of replicas"
    expires = meta.get("expires_at")  # list --prune compares it (from cron: one bad file stopped every prune)
    if expires is not None and not _utc_time(expires):
        return "has an expiry that is not a UTC time such as 2030-01-02T03:04:05Z"
    return None


def _known_provider(name: object) -> bool:
    from .providers.registry import PROVIDERS  # here: registry's imports reach providers/local, which imports this

    return name in PROVIDERS


def _utc_time(value: object) -> bool:
    """``value`` is a time as create writes it (and manage.expired reads it)."""
    try:
        datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def scan(root: Path) -> tuple[list[dict[str, Any]], list[Damaged]]:
    """Every exit server kept under ``root``: the usable metadata, and the folders whose metadata is damaged."""
    found: list[dict[str, Any]] = []
    damaged: list[Damaged] = []
    check_root(root)
    if not root.is_dir():
        return found, damaged
    for child in sorted(root.iterdir()):
        if not _NAME_RE.fullmatch(child.name) or not _has_metadata(child):  # not ours, or a create under way
            continue
        try:
            found.append(ServerState(root, child.name).load())
        except Damaged as exc:
            damaged.append(exc)
    return found, damaged


#: A create writes server.json within milliseconds of making the folder: one without it for longer was cut short
#: (a kill -9, a power cut) and blocks its name, so it shows as damaged rather than not at all.
CREATE_WRITES_METADATA_WITHIN = 10.0


def _has_metadata(folder: Path) -> bool:
    """``folder`` holds a server.json, or cannot be looked into, or holds other files of inletsctl's and has gone
    without server.json for longer than a create takes to write it (unusable state is shown, never hidden); one
    holding none of inletsctl's files was never an exit server's, however old."""
    try:
        (folder / METADATA).stat()
    except (FileNotFoundError, NotADirectoryError):
        return _holds_ours(folder) and not _young(folder)
    except OSError:
        return True
    return True


def _young(folder: Path) -> bool:
    """Made too recently for a create to have written server.json into it yet."""
    try:
        return time.time() - folder.stat().st_mtime <= CREATE_WRITES_METADATA_WITHIN
    except OSError:
        return False


def all_states(root: Path) -> list[dict[str, Any]]:
    """Metadata of every usable exit server kept under ``root``."""
    return scan(root)[0]


def damage(root: Path, name: str) -> Damaged | None:
    """Why the state folder of ``name`` cannot be used; None when it can, or when there is none."""
    try:
        ServerState(root, name).load()
    except Damaged as exc:
        return exc
    except NotFound:
        pass
    return None


def _read_regular(path: Path) -> bytes:
    """A state file's bytes; OSError for anything but a regular file: a FIFO put in its place (by hand) made every
    ``list`` and ``status`` wait forever on it, as reading a FIFO waits for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        return file.read()


def delete_command(name: str, root: Path) -> str:
    """``inletsctl delete NAME``, naming the state folder when it is not the default one."""
    return inletsctl_command("delete", name, root)


def not_here(name: str, root: Path, elsewhere: str = "") -> NotFound:
    """No state of exit server ``name`` in ``root``; ``elsewhere`` says how ``delete`` or ``status`` reaches one made
    on another machine, with another --state-dir or by Terraform, which this state cannot know of."""
    return NotFound(f"no exit server named {name!r} in {root}" + (f" ({elsewhere})" if elsewhere else ""))


def inletsctl_command(verb: str, name: str, root: Path) -> str:
    """``inletsctl VERB NAME``, with ``--state-dir`` when ``root`` is not the default: a command that acts on it."""
    extra = "" if root == default_root() else f" --state-dir {shlex.quote(str(root))}"
    return f"{shlex.quote(command_word('inletsctl'))} {verb} {name}{extra}"
