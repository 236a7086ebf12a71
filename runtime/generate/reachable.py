"""Can a unit's user reach what the unit runs and reads?

A generated unit runs as the system user ``inlets``. The kernel opens a path for a process only if it may search
(x) every folder on the way, so an inlets installed under ``/root`` (0700), a venv whose Python is a link into a
pyenv there, or a token file kept in such a folder made the unit fail at every start with "Permission denied"
(systemd's status 203/EXEC, or inlets' own error), long after ``--generate`` printed it without a word. This applies
the kernel's rule to that user as it exists here: the owner's bits if it owns the folder, the group's if it is in
the folder's group (its primary group included), the others' bits otherwise. A user not made yet (the unit's setup
line makes it) owns nothing and is in no group: only the others' bits count for it. A folder with an access ACL is
taken as passable: its mode alone does not say.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

READ, EXECUTE = 0o4, 0o1
#: the #! line of a script, and pip's variant for a Python path too long for one (``#!/bin/sh`` then ``'''exec' PY``)
_SHEBANG = re.compile(rb"#!\s*(\S+)[^\n]*(?:\n'''exec' ['\"]?([^'\"\s]+))?")


@dataclass(frozen=True)
class Blocked:
    """Where the way to ``wanted`` stops for the user: ``at`` (a folder it cannot enter, or the file itself)."""

    wanted: str  # the path as the unit or this inlets names it
    via: str  # the path whose resolution meets ``at``: ``wanted`` itself, a link's target, or its real path
    at: str
    mode: int
    owner: str
    group: str
    is_file: bool

    def reason(self, user: str) -> str:
        """``the unit's user inlets cannot enter /root (0700, root:root)``."""
        verb = "read and run" if self.is_file else "enter"
        return f"the unit's user {user} cannot {verb} {self.at} ({self.mode:04o}, {self.owner}:{self.group})"

    def named(self) -> str:
        """The path, and the link target that leads into the blocked folder when that is another path."""
        return self.wanted if self.via == self.wanted else f"{self.wanted} (which leads to {self.via})"


@dataclass(frozen=True)
class _User:
    uid: int | None  # None: no such user here yet
    gids: frozenset[int]


def _user(name: str) -> _User:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return _User(None, frozenset())
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
    return _User(entry.pw_uid, frozenset(groups))


def _allows(info: os.stat_result, user: _User, bits: int) -> bool:
    if user.uid == 0:
        return True
    if user.uid is not None and info.st_uid == user.uid:
        shift = 6
    elif info.st_gid in user.gids:
        shift = 3
    else:
        shift = 0
    return (info.st_mode >> shift) & bits == bits


def _has_acl(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "system.posix_acl_access"))
    except (OSError, AttributeError):  # no ACL, a file system without them, or no xattr support
        return False


def _routes(path: str) -> list[str]:
    """The path as given, each target of the links its last part goes through (a venv's python -> python3 ->
    /root/.pyenv/...), and its real path: the kernel searches the folders of every one of them."""
    current = os.path.abspath(path)
    routes = [current]
    for _ in range(40):  # the kernel's own limit on links followed
        try:
            target = os.readlink(current)
        except OSError:
            break
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
        if current in routes:
            break
        routes.append(current)
    real = os.path.realpath(path)
    return routes if real in routes else [*routes, real]


def _name(lookup: Callable[[int], Any], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def _blocked(wanted: str, via: str, at: str, info: os.stat_result, is_file: bool) -> Blocked:
    return Blocked(wanted, via, at, stat.S_IMODE(info.st_mode), _name(pwd.getpwuid, info.st_uid),
                   _name(grp.getgrgid, info.st_gid), is_file)


def blocked(path: str, user: str, need: int = 0) -> Blocked | None:
    """The first folder on the way to ``path`` (as given, through each link, and resolved) that ``user`` cannot
    enter; with ``need`` (READ | EXECUTE), also ``path`` itself if the user lacks those rights on it. A part that
    does not exist yet ends that way: what is made later (the setup line's mkdir -p) blocks nothing now."""
    who = _user(user)
    for route in _routes(path):
        for folder in [*reversed(Path(route).parents), Path(route)]:
            last = folder == Path(route)
            if last and not need:
                break
            try:
                info = os.stat(folder)
            except OSError:  # not there (yet), or not a folder: nothing further on this way exists
                break
            bits = need if last else EXECUTE
            if not _allows(info, who, bits) and not _has_acl(str(folder)):
                return _blocked(path, route, str(folder), info, last and not stat.S_ISDIR(info.st_mode))
    return None


def interpreter(command: str) -> str | None:
    """The Python a script runs with (its #! line, or pip's ``'''exec'`` line for a long path), if it names one."""
    try:
        with open(command, "rb") as script:
            head = script.read(1024)
    except OSError:
        return None
    found = _SHEBANG.match(head)
    if found is None:
        return None
    program = (found[2] or found[1]).decode(errors="replace")
    return program if program.startswith("/") and not program.endswith("/env") else None
