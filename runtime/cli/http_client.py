"""``inlets http client``: the HTTP tunnel client's command (upstreams by Host, header and auth options)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..client.http_upstreams import HttpUpstreams, UpstreamError, parse_upstreams, upstream_tls
from ..core.tls import TlsConfigError
from ..core.auth import BASIC_AUTH_PASSWORD, BEARER_TOKEN, TokenError
from ..http.options import HttpOptions, OptionError
from .app import http_app
from .client_config import client_configs, tunnel_client
from .config import fail, maybe_generate, setup_logs
from .lifecycle import run_client
from .client_options import Proxy, ProxyPasswordFile, TlsCa, TlsInsecure, TlsServerName, TokenFiles, Urls
from .durations import DrainTimeout, Keepalive
from .options import Generate, LogFormat, LogLevel, MaxBuffer, MaxServerStreams, Token

Headers = Annotated[Optional[list[str]], typer.Option(help="'Name: value' (repeatable).")]
Names = Annotated[Optional[list[str]], typer.Option(help="Header name (repeatable).")]


@http_app.command("client")
def http_client(
    url: Urls,
    upstream: Annotated[
        list[str], typer.Option(help="HOSTNAME=URL for one host, or a bare URL for every other host; repeatable.")
    ],
    upstream_insecure: Annotated[bool, typer.Option(help="Do not verify https:// upstreams.")] = False,
    upstream_ca: Annotated[Optional[Path], typer.Option(help="CA for https:// upstreams (else system store).")] = None,
    rewrite_host: Annotated[bool, typer.Option(help="Send the upstream's host in Host instead of the original.")] = False,
    request_header_add: Headers = None,
    request_header_remove: Names = None,
    response_header_add: Headers = None,
    response_header_remove: Names = None,
    basic_auth_username: Annotated[Optional[str], typer.Option(help="Protect the site with basic auth.")] = None,
    basic_auth_password: Annotated[Optional[str], typer.Option(
        help="Password for --basic-auth-username (shows in ps: prefer the file or $INLETS_BASIC_AUTH_PASSWORD).")] = None,
    basic_auth_password_file: Annotated[Optional[Path], typer.Option(
        help="File holding the --basic-auth-username password [env: INLETS_BASIC_AUTH_PASSWORD].")] = None,
    bearer_token: Annotated[Optional[str], typer.Option(
        help="Protect the site: require this bearer token (shows in ps: prefer the file or $INLETS_BEARER_TOKEN).")] = None,
    bearer_token_file: Annotated[Optional[Path], typer.Option(
        help="File holding the bearer token the site requires [env: INLETS_BEARER_TOKEN].")] = None,
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
    maybe_generate(generate, ["http", "client"])
    setup_logs(log_level, log_format)

    try:
        basic_auth_password = BASIC_AUTH_PASSWORD.read(basic_auth_password, basic_auth_password_file)
        bearer_token = BEARER_TOKEN.read(bearer_token, bearer_token_file)
    except TokenError as exc:
        fail(str(exc))
    if bool(basic_auth_username) != bool(basic_auth_password):
        fail("--basic-auth-username and --basic-auth-password (or its file or $INLETS_BASIC_AUTH_PASSWORD) go together")
    try:
        mapping = parse_upstreams(upstream)
        tls = upstream_tls(upstream_ca, upstream_insecure)
    except UpstreamError as exc:
        fail(str(exc))
    except TlsConfigError as exc:
        fail(str(exc))
    upstreams = HttpUpstreams(mapping, tls)
    try:
        options = HttpOptions.build(
            request_add=request_header_add or [], request_remove=request_header_remove or [],
            response_add=response_header_add or [], response_remove=response_header_remove or [],
            rewrite_host=upstreams.host_headers() if rewrite_host else None,
            basic_auth=(basic_auth_username, basic_auth_password) if basic_auth_username else None,  # type: ignore[arg-type]
            bearer_token=bearer_token,
        )
    except OptionError as exc:
        fail(str(exc))
    configs = client_configs(
        urls=url, token=token, token_files=token_file, tls_ca=tls_ca, tls_server_name=tls_server_name,
        tls_insecure=tls_insecure, keepalive=keepalive, mode="http", services=upstreams.services, proxy=proxy,
        proxy_password_file=proxy_password_file, drain_timeout=drain_timeout, max_streams=max_streams,
        max_buffer_mib=max_buffer,
    )
    for config in configs:
        config.extra = options.to_extra()
    gc.freeze()
    run_client(tunnel_client(configs, upstreams.on_stream))
