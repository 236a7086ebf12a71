"""known_hosts for ``--provider ssh``: its lines read as OpenSSH reads them (host patterns with ``*``, ``?`` and
``!``, hashed names, ``@revoked``), since paramiko's own store matches no patterns and keeps one key of a type."""

from __future__ import annotations

import binascii
import functools
import hmac
import re
from pathlib import Path
from typing import NamedTuple

import paramiko

from inlets_py.runtime.core.auth import NotARegularFile

from .errors import ProvisionError, os_words
from .ssh_keys import fingerprint
from .ssh_options import read_regular

KNOWN_HOSTS_LIMIT = 64 << 20  # generous: a known_hosts of a million hosts


def host_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class Known(NamedTuple):
    """A known_hosts line: its host patterns, its key, and where it is ("FILE:LINE", as ssh names an offending key)."""

    hosts: list[str]
    key: paramiko.PKey
    where: str


def read_known_hosts(path: Path) -> tuple[list[Known], dict[str, Path]]:
    """The lines of known_hosts ``path``, and the fingerprints it marks ``@revoked`` (each with ``path``).
    paramiko's loader raised on markers and on a key not in base64: as OpenSSH, skip what cannot be read, and
    @cert-authority lines (host certificates are not checked)."""
    try:  # a regular file, bounded: a FIFO or /dev/zero given as --known-hosts waited, or filled memory, for ever
        lines = read_regular(path, KNOWN_HOSTS_LIMIT).decode(errors="replace").splitlines()
    except NotARegularFile as exc:
        raise ProvisionError(f"cannot read known_hosts {path}: it is {exc.kind}, not a regular file: give the "
                             "known_hosts file itself") from None
    except OSError as exc:
        fix = ": give the known_hosts file itself" if not exc.errno else ""
        raise ProvisionError(f"cannot read known_hosts {path}: {os_words(exc)}{fix}") from None
    revoked: dict[str, Path] = {}
    entries: list[Known] = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        marker = text.split(None, 1)[0] if text.startswith("@") else ""
        rest = text[len(marker):].strip()
        if not rest or rest.startswith("#") or marker not in ("", "@revoked"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(rest, lineno)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException):
            continue
        if entry is not None and marker:
            revoked[fingerprint(entry.key)] = path
        elif entry is not None:
            entries.append(Known(entry.hostnames, entry.key, f"{path}:{lineno}"))
    return entries, revoked


def host_matches(patterns: list[str], name: str) -> bool:
    """Whether a known_hosts line's comma-separated ``patterns`` name ``name`` (``HOST``, or ``[HOST]:PORT`` off port
    22), as sshd(8)'s SSH_KNOWN_HOSTS FILE FORMAT says: ``*`` and ``?`` wildcards, a matching ``!pattern`` excludes
    the line whatever else matches, ``|1|SALT|HASH`` hashed names; without case, as ssh lowercases host names."""
    name = name.lower()
    matched = False
    for pattern in patterns:
        if pattern.startswith("|1|"):
            try:
                hashed = paramiko.HostKeys.hash_host(name, pattern)
            except (AssertionError, binascii.Error, IndexError, ValueError):  # a salt that is not one
                continue
            matched = matched or hmac.compare_digest(hashed.encode(), pattern.encode())
        elif pattern.startswith("!"):
            if _wildcards(pattern[1:]).fullmatch(name):
                return False
        elif _wildcards(pattern).fullmatch(name):
            matched = True
    return matched


@functools.lru_cache(maxsize=256)
def _wildcards(pattern: str) -> re.Pattern[str]:
    """``pattern`` of known_hosts as a regex: ``*`` any characters, ``?`` one; all else literal (``[`` too)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()), re.S)
