"""The options of the commands that dial a server (``tcp|http client``, ``status``): apart from
``options.py`` so that an exit server, which never dials, does not carry them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import path_option

Urls = Annotated[list[str], typer.Option(
    "--url", metavar="<url>", help="Server URL: wss://HOST:8123 (a path is kept as a prefix). Repeat it to serve "
    "through several servers at once (high availability: one session each, each reconnecting on its own).")]
TokenFiles = Annotated[Optional[list[Path]], path_option(
    "File holding the token, re-read at every connection. With several --url: one file for all, or one per --url in "
    "the same order.", "--token-file")]
TlsCa = Annotated[Optional[Path], path_option("CA certificate to pin the server to (else the system trust store).")]
TlsServerName = Annotated[Optional[str], typer.Option(help="Name the server certificate must carry, when not the URL host.")]
TlsInsecure = Annotated[bool, typer.Option(help="Do not verify the server certificate (testing only).")]
Proxy = Annotated[Optional[str], typer.Option(
    help="Reach the server through this proxy: http://[USER@]HOST:PORT (CONNECT) or socks5://HOST:PORT; "
    "'none' to connect directly. Default: the first set of $WSS_PROXY ($WS_PROXY for ws://), $SOCKS_PROXY, "
    "$HTTPS_PROXY ($HTTP_PROXY too for ws://), $ALL_PROXY, unless $NO_PROXY matches.")]
ProxyPasswordFile = Annotated[Optional[Path], path_option(
    "File holding the password for the --proxy user (or the password itself in $INLETS_PROXY_PASSWORD) "
    "(a password inside --proxy shows in ps).")]
