"""Where exit servers are kept: the state root (``--state-dir``, $INLETSCTL_STATE_DIR or ~/.config/inletsctl), made
private before anything goes in it, and refused, in one line saying what to do, when it is shared, another user's
or a file; ``state`` keeps each exit server's folder in it."""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from pathlib import Path

from .errors import ProvisionError, os_words

STATE_ENV = "INLETSCTL_STATE_DIR"


def state_root(override: Path | None = None) -> Path:
    """``--state-dir``, else $INLETSCTL_STATE_DIR, else $XDG_CONFIG_HOME/inletsctl (~/.config). A blank or relative
    $XDG_CONFIG_HOME is ignored, as the XDG Base Directory spec says (a relative one kept the tokens under whatever
    folder inletsctl ran in); ~ is $HOME, else the passwd entry's home (``user_home``), never the filesystem root."""
    if override is not None:
        return override.expanduser().absolute()
    root = default_root()
    if root is None:
        raise ProvisionError(f"no home folder to keep exit servers in: $HOME is not an absolute path and this user has "
                             f"no home in /etc/passwd; set HOME, or give --state-dir (or ${STATE_ENV})")
    return root


def default_root() -> Path | None:
    """The state root without --state-dir; None when there is no home folder to put it in."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser().absolute()
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(base):
        return Path(base) / "inletsctl"
    from inlets_py.runtime.cli.config import user_home  # imported here: --help needs no home

    home = user_home()
    return None if home is None else home / ".config" / "inletsctl"


def prepare_root(root: Path) -> None:
    """Create the state root (0700) before anything is made, or say in one line why it cannot be. One that exists
    keeps its mode: it may be the user's own (--state-dir ~/projects), and each exit server's folder in it is 0700
    already; but one another user owns or may write is refused (``check_root`` too), as they could put a folder of
    their own (their CA, for the client to pin) in place of an exit server's."""
    try:
        mkdir_private(root)
    except FileExistsError:
        _check_existing_root(root)
        return
    except OSError as exc:
        if isinstance(exc, PermissionError) and exc.filename:
            why = f"no permission to write in {Path(exc.filename).parent}"
        else:
            why = _file_in_the_way(root) or os_words(exc)
        raise ProvisionError(f"cannot keep exit servers in {root}: {why}; {_CHOOSE}") from None
    try:
        os.chmod(root, 0o700)  # whatever the umask took from mkdir's mode
    except OSError as exc:
        raise ProvisionError(f"cannot keep exit servers in {root}: {os_words(exc)}; {_CHOOSE}") from None


def mkdir_private(folder: Path) -> None:
    """``folder.mkdir(mode=0o700, parents=True)``, but the parents it makes are 0700 too: mkdir makes them 0777 less
    the umask (~/.config 0775 under umask 002), and the XDG Base Directory spec asks 0700. FileExistsError when
    ``folder`` exists."""
    try:
        folder.mkdir(mode=0o700)
    except FileNotFoundError:
        if folder.parent == folder:
            raise
        with contextlib.suppress(FileExistsError):  # made meanwhile by another inletsctl
            mkdir_private(folder.parent)
        folder.mkdir(mode=0o700)


def _check_existing_root(root: Path) -> None:
    """A state root that exists (``prepare_root``): a folder of this user's that no one else may write."""
    try:
        info = root.stat()
    except OSError as exc:
        raise ProvisionError(f"cannot keep exit servers in {root}: {os_words(exc)}; {_CHOOSE}") from None
    _refuse_unsafe(root, info)


def _refuse_unsafe(root: Path, info: os.stat_result, doing: str = "keep exit servers in") -> None:
    """The one line for a state root (``info``: its stat) that is a file, shared, another user's or that others
    may write: create refuses to write there, and list, status and delete to read the exit servers found there
    (``doing``: the line's own words for which)."""
    if not stat.S_ISDIR(info.st_mode):
        raise ProvisionError(f"cannot {doing} {root}: {_file_in_the_way(root)}; {_CHOOSE}")
    if info.st_mode & stat.S_ISVTX:  # /tmp, /var/tmp: made 0700, every other user and service would lose it
        raise ProvisionError(f"cannot {doing} {root}: every user shares it (like /tmp), and making it "
                             f"private (0700) would lock them out; give --state-dir a folder of its own, "
                             f"e.g. {root / 'inlets'}")
    if info.st_uid != os.geteuid():
        raise ProvisionError(f"cannot {doing} {root}: it belongs to another user, and tokens are kept "
                             f"only where no one else can read them (0700); {_CHOOSE}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise ProvisionError(f"cannot {doing} {root}: other users may write in it (mode {mode:04o}), and "
                             f"could put a folder of their own in place of an exit server's; run chmod go-w "
                             f"{shlex.quote(str(root))}, or {_CHOOSE}")


def check_root(root: Path) -> None:
    """A state root that is (or lies under) a file, or that this user cannot read, is a mistake, never a root
    with no exit servers; one another user owns or may write is refused as create refuses it (``_refuse_unsafe``):
    list, status and delete read what they find there (a client command, a CA), and another user could have put it."""
    why, choose = _file_in_the_way(root), _CHOOSE
    if why is None:
        try:
            os.listdir(root)  # reading its names
            info = os.stat(os.path.join(root, "."))  # and entering it, to read each server's files
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            why, choose = os_words(exc), f"let this user read it ({chmod_command(root)}) or {_CHOOSE}"
        else:
            _refuse_unsafe(root, info, "read exit servers from")
    if why:
        raise ProvisionError(f"cannot read exit servers from {root}: {why}; {choose}")


def other_owner(folder: Path) -> int | None:
    """The owner of ``folder`` (an exit server's, in the state root) when it is another user: it was put there by
    them (while the root was open to them), never by inletsctl; None when it is this user's, or not there."""
    try:
        owner = folder.stat().st_uid
    except OSError:
        return None
    return owner if owner != os.geteuid() else None


def read_own(path: Path) -> bytes:
    """A cache file's bytes (the wheel's compacted modules, GCE's token), only when it is a regular file of this
    user's that no one else may write: OSError otherwise, and the caller makes it afresh. Not followed if a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise OSError(f"{path} is not a file of this user's that only they may write")
        return file.read()


_CHOOSE = f"give --state-dir (or ${STATE_ENV}) a folder you can write"


def chmod_command(folder: Path) -> str:
    """What gives this user back ``folder`` and all it holds, when a mode stands in the way of reading or removing."""
    return f"chmod -R u+rwX {shlex.quote(str(folder))}"


def _file_in_the_way(path: Path) -> str | None:
    """``path`` or the first of its parents that is a file, said in words; None when there is none."""
    for part in (path, *path.parents):
        try:
            part.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # cannot be looked into: check_root says so
            return None
        return None if part.is_dir() else f"{part} is a file, not a folder"
    return None
