"""Per-exit-server secrets and metadata on the user's machine.

One folder (0700) per exit server under the state root: the token, the CA the
client pins, the server's key and certificate where the server runs locally, and
``server.json``. Secret files are 0600 from the moment they exist.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inlets_py.runtime.core.certs import write_private

from .errors import NotFound, ProvisionError

STATE_ENV = "INLETSCTL_STATE_DIR"
METADATA = "server.json"


def state_root(override: Path | None = None) -> Path:
    """``--state-dir``, else $INLETSCTL_STATE_DIR, else $XDG_CONFIG_HOME/inletsctl (~/.config)."""
    if override is not None:
        return override.expanduser().absolute()
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser().absolute()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return (Path(base) / "inletsctl").absolute()


def prepare_root(root: Path) -> None:
    """Create the state root (0700) before anything is made, or say in one line why it cannot be."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
    except OSError as exc:
        if isinstance(exc, PermissionError) and exc.filename:
            why = f"no permission to write in {Path(exc.filename).parent}"
        else:
            why = _file_in_the_way(root) or (os.strerror(exc.errno) if exc.errno else str(exc))
        raise ProvisionError(f"cannot keep exit servers in {root}: {why}; {_CHOOSE}") from None


def check_root(root: Path) -> None:
    """A state root that is (or lies under) a file is a mistake, never a root with no exit servers."""
    why = _file_in_the_way(root)
    if why:
        raise ProvisionError(f"cannot read exit servers from {root}: {why}; {_CHOOSE}")


_CHOOSE = f"give --state-dir (or ${STATE_ENV}) a folder you can write"


def _file_in_the_way(path: Path) -> str | None:
    """``path`` or the first of its parents that is a file, said in words; None when there is none."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else f"{part} is a file, not a folder"
    return None


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
        return self.dir / "token"

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def cert_file(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.dir / "server.key"

    def exists(self) -> bool:
        return (self.dir / METADATA).exists()

    def reserve(self) -> None:
        """Create the folder; fail if an exit server of this name is already kept here."""
        prepare_root(self.root)
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError:
            raise ProvisionError(
                f"an exit server named {self.name!r} already exists ({self.dir}); "
                f"choose another name or run: inletsctl delete {self.name}"
            ) from None
        os.chmod(self.dir, 0o700)

    def write_secret(self, path: Path, data: bytes) -> None:
        write_private(path, data)

    def write_public(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        os.chmod(path, 0o644)

    def save(self, metadata: dict[str, Any]) -> None:
        tmp = self.dir / (METADATA + ".tmp")
        write_private(tmp, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
        tmp.replace(self.dir / METADATA)

    def load(self) -> dict[str, Any]:
        check_root(self.root)
        try:
            return json.loads((self.dir / METADATA).read_text())
        except FileNotFoundError:
            raise NotFound(f"no exit server named {self.name!r} in {self.root}") from None
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"cannot read {self.dir / METADATA}: {exc.__class__.__name__}") from None

    def token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise ProvisionError(f"cannot read token file {self.token_file}: {exc.strerror}") from None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def all_states(root: Path) -> list[dict[str, Any]]:
    """Metadata of every exit server kept under ``root`` (unreadable ones skipped)."""
    found: list[dict[str, Any]] = []
    check_root(root)
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        meta = child / METADATA
        if meta.is_file():
            try:
                found.append(json.loads(meta.read_text()))
            except (OSError, ValueError):
                continue
    return found
