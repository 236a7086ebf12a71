"""Private keys for ``--provider ssh``: read once from a regular file, bounded, and refused in one line when they
cannot serve (encrypted, a public key, readable by others, as ssh refuses them)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shlex
from pathlib import Path

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm

from inlets_py.runtime.core.auth import NotARegularFile

from .errors import ProvisionError, os_words
from .ssh_options import read_regular

KEY_LIMIT = 1 << 20  # no private key comes near it; /dev/zero given as one would be read for ever


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...``, the form ``ssh-keygen -lf`` and OpenSSH's prompts print."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


#: what loading a key without its passphrase raises (TypeError: cryptography's "password-protected")
ENCRYPTED = (paramiko.PasswordRequiredException, TypeError)


class BadKey(Exception):
    """What a key file is instead of a usable private key, in words ("is encrypted"); ``agent``: ssh-agent may hold
    the key all the same (the file is encrypted, or gone); ``encrypted``: it is, which some advice depends on."""

    def __init__(self, words: str, agent: bool = False, encrypted: bool = False) -> None:
        super().__init__(words)
        self.words, self.agent, self.encrypted = words, agent, encrypted


def load_key(path: str) -> paramiko.PKey:
    """The private key in ``path`` (--ssh-key), or a one-line error saying what the file is instead."""
    try:
        return read_key(path)
    except BadKey as bad:
        fix = ": load it into ssh-agent and leave out --ssh-key" if bad.encrypted else ""
        raise ProvisionError(f"--ssh-key {path} {bad.words}{fix}") from None


def read_key(path: str) -> paramiko.PKey:
    """The private key in ``path``, its file read once (``<(cat key)`` has nothing the second time); BadKey."""
    try:
        data = read_regular(Path(path), KEY_LIMIT)
    except IsADirectoryError:
        raise BadKey("is a directory: give the private key file in it, e.g. id_ed25519") from None
    except FileNotFoundError:
        raise BadKey("does not exist: give the private key file, e.g. ~/.ssh/id_ed25519", agent=True) from None
    except NotARegularFile as exc:  # <(cat key) is a FIFO
        raise BadKey(f"is {exc.kind}, not a regular file: give the private key file itself, e.g. "
                      "~/.ssh/id_ed25519") from None
    except OSError as exc:
        if exc.errno:
            raise BadKey(f"cannot be read: {os_words(exc)}") from None
        raise BadKey(f"is {exc}, which no private key is: give the private key file, e.g. ~/.ssh/id_ed25519") from None
    if not data.strip():
        raise BadKey("is empty: give the private key file, e.g. ~/.ssh/id_ed25519")
    if _PUBLIC_KEY_RE.match(data):
        raise BadKey("is a public key: give the private key (the same file without .pub)")
    try:
        key = _parse_key(data)
    except ENCRYPTED:
        raise BadKey("is encrypted", agent=True, encrypted=True) from None
    except (paramiko.SSHException, ValueError, UnicodeDecodeError, UnsupportedAlgorithm):
        raise BadKey(_NOT_A_KEY) from None
    info = os.stat(path)
    if info.st_mode & 0o077 and info.st_uid == os.getuid():  # ssh refuses it too ("UNPROTECTED PRIVATE KEY FILE")
        raise BadKey(f"can be read by other users (mode {info.st_mode & 0o777:04o}), which ssh refuses for a private "
                      f"key: chmod 600 {shlex.quote(path)}")
    cert = Path(path + "-cert.pub")  # as paramiko's PKey.from_path loads it
    if cert.is_file():
        key.load_certificate(str(cert))
    return key


def _parse_key(data: bytes) -> paramiko.PKey:
    """paramiko's ``PKey.from_path``, on bytes read once (it reads the file twice)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:  # as OpenSSH: its own format first, then PEM
        loaded = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        loaded = serialization.load_pem_private_key(data, password=None)
    kinds = ((rsa.RSAPrivateKey, paramiko.RSAKey), (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
             (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey))
    kind = next((cls for base, cls in kinds if isinstance(loaded, base)), None)
    if kind is None:  # DSA, which paramiko no longer takes
        raise ValueError("not a key type paramiko takes")
    return kind.from_private_key(io.StringIO(data.decode()))


_NOT_A_KEY = ("is not a private key inletsctl can read (OpenSSH or PEM format): give the file ssh-keygen wrote, "
              "e.g. ~/.ssh/id_ed25519")
#: how public keys begin: OpenSSH's one line, PEM, RFC 4716
_PUBLIC_KEY_RE = re.compile(rb"\s*(?:(?:ssh|ecdsa|sk)-[\w@.-]+ +AAAA|-----BEGIN (?:RSA )?PUBLIC KEY-----|---- BEGIN SSH2 PUBLIC KEY ----)")
