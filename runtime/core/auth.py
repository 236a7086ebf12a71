"""Tokens and other secrets: loading them without leaking them, checking tokens in constant time.

Every secret has three forms: its option (visible in ``ps``, so discouraged), a file
(``--OPTION-file``) and an environment variable; ``--generate`` turns each into a file.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "INLETS_TOKEN"
CLIENTS = (("tcp", "client"), ("http", "client"))


class TokenError(Exception):
    """No usable token (or secret) was given; the message says how to give one."""


@dataclass(frozen=True)
class SecretOption:
    """A secret flag and the forms that keep it off the command line."""

    option: str  # --bearer-token (for the proxy password: none, it rides in the --proxy URL)
    env: str  # INLETS_BEARER_TOKEN
    key: str  # bearer-token: its file in a generated unit (/etc/inlets/KEY), its key in a Kubernetes Secret
    commands: tuple[tuple[str, ...], ...] = CLIENTS  # the commands that take it

    @property
    def file_option(self) -> str:
        return f"{self.option}-file"

    def read(self, value: str | None, file: Path | None) -> str | None:
        """The secret from the option, else its file (first line), else the environment; None if none is given."""
        if value and file is not None:
            raise TokenError(f"give {self.option} or {self.file_option}, not both")
        if value:
            return value
        if file is not None:
            lines = _read_text(file, f"{self.file_option} file").splitlines()
            if not lines or not lines[0]:
                raise TokenError(f"{self.file_option} file {file} is empty")
            return lines[0]
        return os.environ.get(self.env) or None


TOKEN = SecretOption("--token", TOKEN_ENV, "token", (("tcp", "server"), ("http", "server"), *CLIENTS))
BEARER_TOKEN = SecretOption("--bearer-token", "INLETS_BEARER_TOKEN", "bearer-token", (("http", "client"),))
BASIC_AUTH_PASSWORD = SecretOption(
    "--basic-auth-password", "INLETS_BASIC_AUTH_PASSWORD", "basic-auth-password", (("http", "client"),)
)
PROXY_PASSWORD = SecretOption("--proxy-password", "INLETS_PROXY_PASSWORD", "proxy-password")
SECRETS = (TOKEN, BEARER_TOKEN, BASIC_AUTH_PASSWORD, PROXY_PASSWORD)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise TokenError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None


def read_tokens(token: str | None, token_file: Path | None) -> list[str]:
    """Tokens from ``--token``, else ``--token-file`` (one per line), else $INLETS_TOKEN."""
    if token:
        tokens = [token.strip()]
    elif token_file is not None:
        text = _read_text(token_file, "token file")
        tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not tokens:
            raise TokenError(f"token file {token_file} holds no token")
    elif os.environ.get(TOKEN_ENV, "").strip():
        tokens = [os.environ[TOKEN_ENV].strip()]
    else:
        raise TokenError(f"no token: give --token, --token-file or ${TOKEN_ENV}")
    return tokens


class TokenSet:
    """The tokens a server accepts. Replaceable at run time (rotation)."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def replace(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def check_header(self, authorization: str | None) -> bool:
        """True when the ``Authorization: Bearer`` value matches one token, compared in constant time."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        offered = authorization[len("Bearer ") :].strip().encode()
        ok = False
        for token in self._tokens:  # check every token: timing says nothing about which
            ok |= hmac.compare_digest(offered, token)
        return ok
