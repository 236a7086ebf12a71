"""Provider registry: the names ``--provider`` accepts and how each one is built."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..credentials import access_token
from ..errors import ProvisionError
from .base import Provisioner
from .clouds import CLOUDS, NOT_OFFERED

PROVIDERS = ("local", "digitalocean")
PROVIDERS += CLOUDS  # the libcloud and SDK clouds, built in providers/clouds.py


@dataclass(frozen=True)
class Credentials:
    token_file: Path | None = None
    token: str | None = None
    api_url: str | None = None


def make(name: str, state_root: Path, creds: Credentials) -> Provisioner:
    """The provider called ``name``; a one-line error for unknown names and missing credentials."""
    if name in CLOUDS or name in NOT_OFFERED:
        from .clouds import build

        return build(name, state_root, creds)
    if name == "local":
        from .local import LocalProvider

        return LocalProvider(state_root)
    if name == "digitalocean":
        from . import digitalocean

        token = access_token("DigitalOcean", creds.token_file, creds.token, digitalocean.TOKEN_ENV)
        api_url = creds.api_url or os.environ.get(digitalocean.API_URL_ENV) or None
        return digitalocean.DigitalOceanProvider(token, api_url)
    raise ProvisionError(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}")
