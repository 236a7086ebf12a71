"""``inlets http client``: the HTTP tunnel client's command (upstreams by Host, header and auth options)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import handoff
from .app import http_app
from .config import maybe_generate
from .client_options import Proxy, ProxyPasswordFile, TlsCa, TlsInsecure, TlsServerName, TokenFiles, Urls
from .durations import DrainTimeout, Keepalive
from .options import Generate, LogFormat, LogLevel, MaxBuffer, MaxServerStreams, Token, path_option

Headers = Annotated[Optional[list[str]], typer.Option(help="'Name: value' (repeatable).")]
Names = Annotated[Optional[list[str]], typer.Option(help="Header name (repeatable).")]


@http_app.command("client", short_help="Run an HTTP tunnel client: serve your apps by Host.")
def http_client(
    url: Urls,
    upstream: Annotated[
        list[str], typer.Option(help="HOSTNAME=URL for one host, or a bare URL for every other host; repeatable.")
    ],
    upstream_insecure: Annotated[bool, typer.Option(help="Do not verify https:// upstreams.")] = False,
    upstream_ca: Annotated[Optional[Path], path_option("CA for https:// upstreams (else system store).")] = None,
    rewrite_host: Annotated[bool, typer.Option(help="Send the upstream's host in Host instead of the original.")] = False,
    request_header_add: Headers = None,
    request_header_remove: Names = None,
    response_header_add: Headers = None,
    response_header_remove: Names = None,
    basic_auth_username: Annotated[Optional[str], typer.Option(help="Protect the site with basic auth.")] = None,
    basic_auth_password: Annotated[Optional[str], typer.Option(
        help="Password for --basic-auth-username (shows in ps: prefer the file or $INLETS_BASIC_AUTH_PASSWORD).")] = None,
    basic_auth_password_file: Annotated[Optional[Path], path_option(
        "File holding the --basic-auth-username password (or the password itself in $INLETS_BASIC_AUTH_PASSWORD).")] = None,
    bearer_token: Annotated[Optional[str], typer.Option(
        help="Protect the site: require this bearer token (shows in ps: prefer the file or $INLETS_BEARER_TOKEN).")] = None,
    bearer_token_file: Annotated[Optional[Path], path_option(
        "File holding the bearer token the site requires (or the token itself in $INLETS_BEARER_TOKEN).")] = None,
    token: Token = None,
    token_file: TokenFiles = None,
    tls_ca: TlsCa = None,
    tls_server_name: TlsServerName = None,
    tls_insecure: TlsInsecure = False,
    proxy: Proxy = None,
    proxy_password_file: ProxyPasswordFile = None,
    keepalive: Keepalive = 20.0,
    max_streams: MaxServerStreams = 1024,
    max_buffer: MaxBuffer = 64,
    drain_timeout: DrainTimeout = 30.0,
    generate: Generate = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run an HTTP tunnel client: the server's HTTP port reaches these upstreams by Host.

    Example: inlets http client --url wss://203.0.113.10:8123 --token-file token.txt --tls-ca ca.crt
    --upstream example.com=http://127.0.0.1:3000 --upstream http://127.0.0.1:8080
    """
    maybe_generate(generate, ["http", "client"], flags=locals())
    handoff.start("http_client", locals())  # run in the process that never loaded typer
