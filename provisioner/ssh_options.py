"""Where and how ``--provider ssh`` reaches a host: the create flags checked, and ``ssh.json``, which keeps them
beside the exit server's secrets. Without paramiko (ssh_connect), so that reading the local state stays cheap."""

from __future__ import annotations

import getpass
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from inlets_py.runtime.core.auth import NotARegularFile, open_regular_file
from inlets_py.runtime.core.hosts import HostError, authority, check_host

from .errors import ProvisionError, UsageError, os_words

SUPERVISORS = ("auto", "systemd", "plain")
#: ``ssh://USER@HOST:PORT/`` or ``USER@HOST:PORT`` (HOST an IPv6 address only in brackets), which --host does not take
_HOST_PORT_RE = re.compile(r"(?P<scheme>ssh://)?(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[^]\s]+\]|[^:@/\s\[\]]+)(?::(?P<port>\d+))?/?")
_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")  # fullmatch: "$" matches before a final newline too
_RECORD_LIMIT = 1 << 20  # ssh.json is a few hundred bytes


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, read once: NotARegularFile for a FIFO (``<(cat key)`` too, which has nothing the second
    time) or a device, which were waited on, or read, for ever (/dev/zero); OSError "larger than N MiB" past
    ``limit``; else what open() raises. /dev/null reads as empty, as ssh takes it for a known_hosts."""
    if str(path) == os.devnull:
        return b""
    with open_regular_file(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"larger than {limit >> 20} MiB")
    return data


@dataclass(frozen=True)
class SshOptions:
    """Where and how to reach the host; saved as ``ssh.json`` beside the exit server's secrets."""

    user: str
    host: str
    port: int = 22
    key_file: str | None = None
    fingerprint: str | None = None
    accept_new: bool = False
    known_hosts: str | None = None
    supervisor: str = "auto"
    remote_python: str = "python3"
    data_addr: str | None = None

    @classmethod
    def from_flags(
        cls, target: str | None, port: int, key_file: str | None, fingerprint: str | None, accept_new: bool,
        known_hosts: Path | None, supervisor: str, remote_python: str, data_addr: str | None,
    ) -> "SshOptions":
        if not target:
            raise UsageError("--provider ssh needs --host USER@HOST")
        url = _HOST_PORT_RE.fullmatch(target)
        if url and (url["scheme"] or url["port"]):  # as ssh(1) or scp take it; an IPv6 address alone never matches
            meant = f"--host {url['user'] + '@' if url['user'] else ''}{url['host'].strip('[]')}"
            if url["port"] and not 1 <= int(url["port"]) <= 65535:
                raise UsageError(f"invalid --host {target!r}: it takes USER@HOST, and {url['port']} is no port (ports "
                                 f"are 1-65535): give {meant} and --port the port the host's sshd listens on")
            raise UsageError(f"invalid --host {target!r}: it takes USER@HOST, and the SSH port is --port's: give "
                                 f"{meant}{' --port ' + url['port'] if url['port'] else ''}")
        user, at, host = target.rpartition("@")
        if at and not user and host:  # ssh(1) too refuses it rather than log in as the local user
            raise UsageError(f"invalid --host {target!r}: the user before @ is empty: give USER@{host}, e.g. "
                             f"root@{host} (or leave out the @ to log in as {getpass.getuser()})")
        if host.startswith("[") != host.endswith("]"):  # strip("[]") below would drop the one that is there
            raise UsageError(f"invalid --host {target!r}: a bracket is not closed: give {user + at}[IPV6] or "
                             f"{user + at}IPV6, e.g. root@[2001:db8::10]")
        host = host.removeprefix("[").removesuffix("]")
        if not host or any(c.isspace() for c in target):
            raise UsageError(f"invalid --host {target!r}: use USER@HOST, e.g. root@203.0.113.10")
        if not 1 <= port <= 65535:
            raise UsageError(f"invalid --port {port}: ports are 1-65535")
        try:  # the exit server would refuse a bad --data-addr at each start, after the whole install
            check_host(host, "--host")
            if data_addr is not None:
                check_host(data_addr, "--data-addr")
        except HostError as exc:
            raise UsageError(str(exc)) from None
        if fingerprint is not None and not _FINGERPRINT_RE.fullmatch(fingerprint.strip()):
            raise UsageError(
                f"invalid --host-key-fingerprint {fingerprint!r}: give SHA256:... as `ssh-keygen -lf KEY` prints it"
            )
        if supervisor not in SUPERVISORS:
            raise UsageError(f"unknown --supervisor {supervisor!r}: choose one of {', '.join(SUPERVISORS)}")
        if key_file is not None:
            from .ssh_keys import load_key  # paramiko: only when there is a key to check

            key_file = str(Path(key_file).expanduser().absolute())
            try:  # a bad key file is a usage error, said before anything is made
                load_key(key_file)
            except ProvisionError as exc:
                raise UsageError(str(exc)) from None
        return cls(
            user or getpass.getuser(), host, port, key_file, fingerprint.strip() if fingerprint else None, accept_new,
            str(known_hosts.expanduser()) if known_hosts else None, supervisor, remote_python, data_addr,
        )

    def _mistyped(self) -> str | None:
        """The first field a hand edit gave the wrong type (paramiko would fail on it with a traceback), or None."""
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "port":
                ok = type(value) is int and 1 <= value <= 65535
            elif field.name == "accept_new":
                ok = type(value) is bool
            else:
                ok = isinstance(value, str) and bool(value) or (value is None and "None" in str(field.type))
            if not ok:
                return f'"{field.name}"'
        return None

    @property
    def target(self) -> str:
        return f"{self.user}@" + (authority(self.host, self.port) if self.port != 22 else self.host)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        path.chmod(0o600)

    @classmethod
    def read(cls, path: Path) -> "tuple[SshOptions | None, str]":
        """The options in ``path``; else None and what is wrong with the file, in words ("is missing")."""
        try:
            opts = cls(**json.loads(read_regular(path, _RECORD_LIMIT)))
            bad = opts._mistyped()
            if bad is None:
                return opts, ""
            return None, f"holds a {bad} that is not what inletsctl writes there"
        except FileNotFoundError:
            return None, "is missing"
        except NotARegularFile:  # a FIFO put there was waited on for ever
            return None, "cannot be read (not a regular file)"
        except OSError as exc:
            return None, f"cannot be read ({os_words(exc)})"
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            return None, "is not valid JSON, cut short or edited"
        except TypeError:  # not an object, or other keys than SshOptions has
            return None, "is not what inletsctl writes there"

    @classmethod
    def load(cls, path: Path) -> "SshOptions":
        opts, why = cls.read(path)
        if opts is not None:
            return opts
        name = path.parent.name
        raise ProvisionError(f"{path} {why}; it says how to reach the exit server's host (put back a copy, or "
                             f"remove that host's /opt/inlets/{name} and /etc/inlets/{name} yourself)")
