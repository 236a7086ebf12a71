"""Find a cloud access token: --access-token-file, then --access-token, then the environment."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ProvisionError


def access_token(
    provider: str, token_file: Path | None, token: str | None, env_names: tuple[str, ...]
) -> str:
    """The first credential given, in the documented order; a one-line error naming all ways."""
    if token_file is not None:
        try:
            value = token_file.expanduser().read_text().strip()
        except FileNotFoundError:
            raise ProvisionError(f"access token file not found: {token_file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc.__class__.__name__
            raise ProvisionError(f"cannot read access token file {token_file}: {reason}") from None
        if not value:
            raise ProvisionError(f"access token file {token_file} is empty")
        return value.splitlines()[0].strip()
    if token and token.strip():
        return token.strip()
    for name in env_names:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    env_text = " or ".join(f"${name}" for name in env_names)
    raise ProvisionError(
        f"no {provider} access token: give --access-token-file FILE, --access-token TOKEN, or set {env_text}"
    )
