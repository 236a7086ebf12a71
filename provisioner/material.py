"""Secrets generated for each exit server: the bearer token and the pinned TLS material.

The server certificate names ``inlets-exit-server`` (runtime.certs.EXIT_SERVER_NAME)
rather than an IP: the IP is unknown when the user-data is rendered, and the client
is told that name with ``--tls-server-name`` while pinning this server's own CA.
The CA key is thrown away after signing, so nothing can mint another certificate; the
server certificate therefore lasts as long as the CA (ten years, runtime.core.certs), and the
server and client warn in their logs from 30 days before it ends.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inlets_py.runtime.core.tls import EXIT_SERVER_NAME

if TYPE_CHECKING:
    from inlets_py.runtime.core.certs import Pem

TOKEN_LENGTH = 64


@dataclass(frozen=True)
class Material:
    token: str
    ca_cert: bytes
    server: Pem


def new_token() -> str:
    """64 characters from ``secrets``: URL-safe, so it survives files, headers and YAML."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(TOKEN_LENGTH))


def generate(name: str, extra_names: list[str] | None = None) -> Material:
    """A new CA, a server certificate it signed, and a token (``cryptography`` is imported only here)."""
    from inlets_py.runtime.core.certs import generate_ca, issue_server_cert

    ca = generate_ca(common_name=f"inlets CA {name}"[:64])  # X.509 caps a common name at 64 characters
    server = issue_server_cert(ca, [EXIT_SERVER_NAME, *(extra_names or [])])
    return Material(token=new_token(), ca_cert=ca.cert, server=server)
