"""Bearer tokens: loading them without leaking them, checking them in constant time."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

TOKEN_ENV = "INLETS_TOKEN"


class TokenError(Exception):
    """No usable token was given; the message says how to give one."""


def read_tokens(token: str | None, token_file: Path | None) -> list[str]:
    """Tokens from ``--token``, else ``--token-file`` (one per line), else $INLETS_TOKEN."""
    if token:
        tokens = [token.strip()]
    elif token_file is not None:
        try:
            text = token_file.read_text()
        except FileNotFoundError:
            raise TokenError(f"token file not found: {token_file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read token file {token_file}: {exc.__class__.__name__}") from None
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
