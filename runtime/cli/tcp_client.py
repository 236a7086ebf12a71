"""``inlets tcp client``: the TCP tunnel client's command (and its ``--local`` forwards)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import handoff
from .app import tcp_app
from .config import maybe_generate
from .client_options import Proxy, ProxyPasswordFile, TlsCa, TlsInsecure, TlsServerName, TokenFiles, Urls
from .durations import DrainTimeout, Keepalive
from .options import Generate, LogFormat, LogLevel, MaxBuffer, Token, count_option

MaxStreams = Annotated[int, count_option("--max-streams", help=(
    "Streams the server may have open on this client at once, and the client's own --local ones at once "
    "(more are refused)."))]


@tcp_app.command("client", short_help="Run a TCP tunnel client: serve your ports.")
def tcp_client(
    url: Urls,
    upstream: Annotated[
        Optional[list[str]], typer.Option(help="HOST (with --ports) or PUBLIC_PORT=HOST:PORT; repeatable.")
    ] = None,
    ports: Annotated[Optional[list[str]], typer.Option(help="Ports to forward to the plain --upstream HOST: 80,443.")] = None,
    udp_ports: Annotated[
        Optional[list[str]], typer.Option(help="UDP ports to forward to the plain --upstream HOST: 53,51820.")
    ] = None,
    local: Annotated[
        Optional[list[str]],
        typer.Option(help="LOCAL_PORT:HOST:REMOTE_PORT: bring HOST:REMOTE_PORT on the server's side here (repeatable)."),
    ] = None,
    local_addr: Annotated[str, typer.Option(help="Address the --local ports listen on.")] = "127.0.0.1",
    token: Token = None,
    token_file: TokenFiles = None,
    tls_ca: TlsCa = None,
    tls_server_name: TlsServerName = None,
    tls_insecure: TlsInsecure = False,
    proxy: Proxy = None,
    proxy_password_file: ProxyPasswordFile = None,
    keepalive: Keepalive = 20.0,
    max_streams: MaxStreams = 1024,
    max_buffer: MaxBuffer = 64,
    drain_timeout: DrainTimeout = 30.0,
    generate: Generate = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run a TCP tunnel client: the server's data ports reach these upstreams.

    Example: inlets tcp client --url wss://203.0.113.10:8123 --token-file token.txt --tls-ca ca.crt
    --upstream 127.0.0.1 --ports 80,443 --udp-ports 53 --upstream 2222=192.168.1.10:22
    --upstream udp:5353=192.168.1.2:53

    Two exit servers behind a load balancer: --url wss://203.0.113.10:8123 --url wss://203.0.113.11:8123
    """
    maybe_generate(generate, ["tcp", "client"], flags=locals())
    handoff.start("tcp_client", locals())  # run in the process that never loaded typer
