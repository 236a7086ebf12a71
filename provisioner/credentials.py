"""Find a cloud access token: --access-token-file, then --access-token, then the environment.

Whatever the source, a token is printable ASCII without spaces: anything else cannot be sent in an
HTTP header, so it is refused here, where the user can still tell which source it came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from inlets_py.runtime.core.auth import MAX_SECRET_FILE, MAX_TOKEN, SecretFileTooLarge, read_secret_file, warn_if_others_can_read
from .errors import UsageError, os_words

_TOKEN_RE = re.compile(r"[!-~]+")  # printable ASCII, no spaces (fullmatch)


def access_token(
    provider: str, token_file: Path | None, token: str | None, env_names: tuple[str, ...],
    flags: tuple[str, str] = ("--access-token-file", "--access-token"),
) -> str:
    """The first credential given, in the documented order; a one-line error naming all ways.

    ``flags`` are the file flag and the value flag this credential is read from (ec2's secret key has its own)."""
    return token_and_source(provider, token_file, token, env_names, flags)[0]


def token_and_source(
    provider: str, token_file: Path | None, token: str | None, env_names: tuple[str, ...],
    flags: tuple[str, str] = ("--access-token-file", "--access-token"),
) -> tuple[str, str]:
    """``access_token`` and where it came from (``$DIGITALOCEAN_ACCESS_TOKEN``, ``--access-token-file PATH``), so
    an API that rejects it can be answered with the variable or flag to fix, never the token."""
    others = f"{flags[1]} or ${env_names[0]}" if env_names else flags[1]
    if token_file is not None:
        where = f"{flags[0]} {token_file}"
        return _checked(_read_file(token_file, flags[0], others), where), where
    if token and token.strip():
        return _checked(token.strip(), flags[1]), flags[1]
    for name in env_names:
        if os.environ.get(name, "").strip():
            return _checked(os.environ[name].strip(), f"${name}"), f"${name}"
    env_text = " or ".join(f"${name}" for name in env_names)
    raise UsageError(f"no {provider} {_noun(flags[0])}: give {flags[0]} FILE, {flags[1]} TOKEN, or set {env_text}")


def _noun(file_flag: str) -> str:
    """``--access-token-file`` -> 'access token'."""
    return file_flag.removeprefix("--").removesuffix("-file").replace("-", " ")


def _read_file(path: Path, flag: str, others: str) -> str:
    """The first line of the token file, with a one-line error that says what to do instead."""
    what = f"{_noun(flag)} file"
    path = path.expanduser()
    try:
        data = read_secret_file(path)
    except SecretFileTooLarge:  # /dev/zero was read whole: a MemoryError traceback
        raise UsageError(f"{what} {path} is larger than {MAX_SECRET_FILE // 1024} KiB, more than a token takes: "
                             "give the file that holds the token") from None
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}; check the path, or give the token with {others}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory: give the file that holds the token") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {os_words(exc)}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not text (UTF-8): put the token in it, on one line") from None
    if not text.strip():
        raise UsageError(f"{what} {path} is empty: put the token in it (one line), or give it with {others}")
    warn_if_others_can_read(path, what, prog="inletsctl")
    return text.strip().split("\n")[0].strip()  # CRLF ends a line; a lone CR inside one is refused, not cut at


def _checked(token: str, where: str) -> str:
    """``token`` when it can be sent in an HTTP header; never quoted in the error (it is a secret)."""
    if len(token) > MAX_TOKEN:
        raise UsageError(f"the token from {where} is longer than {MAX_TOKEN} characters: check it")
    if not _TOKEN_RE.fullmatch(token):
        raise UsageError(f"the token from {where} holds characters a token cannot have (spaces, control "
                             "characters or letters outside ASCII): check it")
    return token
