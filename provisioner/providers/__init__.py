"""Provider registry: the names ``--provider`` accepts and how each one is built."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..credentials import access_token
from ..errors import ProvisionError
from .base import Provisioner
from .registry import CLOUDS, NOT_OFFERED

PROVIDERS = ("local", "digitalocean", "ec2", "ssh")
PROVIDERS += CLOUDS  # the libcloud and SDK clouds, built in providers/clouds.py


@dataclass(frozen=True)
class Credentials:
    token_file: Path | None = None
    token: str | None = None
    api_url: str | None = None
    secret_file: Path | None = None  # ec2: the secret access key (the key id is the access token)
    secret: str | None = None
    region: str | None = None  # ec2: the region list/delete/status look in
    ssh: Any = None  # ssh: ssh.SshOptions from the create flags


def make(name: str, state_root: Path, creds: Credentials) -> Provisioner:
    """The provider called ``name``; a one-line error for unknown names and missing credentials."""
    if name in CLOUDS or name in NOT_OFFERED:
        from .registry import build

        return build(name, state_root, creds)
    if name == "local":
        from .local import LocalProvider

        return LocalProvider(state_root)
    if name == "digitalocean":
        from . import digitalocean

        token = access_token("DigitalOcean", creds.token_file, creds.token, digitalocean.TOKEN_ENV)
        api_url = creds.api_url or os.environ.get(digitalocean.API_URL_ENV) or None
        return digitalocean.DigitalOceanProvider(token, api_url)
    if name == "ec2":
        from . import ec2

        aws = ec2.aws_credentials(creds.token_file, creds.token, creds.secret_file, creds.secret)
        return ec2.EC2Provider(aws, creds.region, creds.api_url, state_root)
    if name == "ssh":
        from .ssh import SshProvider

        return SshProvider(state_root, creds.ssh)
    raise ProvisionError(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}")
