"""``inlets tcp server``: the TCP exit server's command."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import handoff
from .app import tcp_app
from .config import maybe_generate
from .durations import DrainTimeout, Keepalive
from .options import (
    AllowIps, AutoTls, AutoTlsPath, AutoTlsSan, ControlAddr, ControlPort, DataAddr, Generate, LbProxyProtocol, LogFormat,
    LoginLimitExempt, LogLevel, MaxClientBuffer, MaxClientStreams, MaxHandshakes, MaxHandshakesPerSource, Plaintext,
    ProxyProtocolOpt, Replicas, TlsCert, TlsKey, Token, TokenFile, TrustedProxies,
)


@tcp_app.command("server")
def tcp_server(
    control_addr: ControlAddr = None,
    control_port: ControlPort = 8123,
    data_addr: DataAddr = None,
    token: Token = None,
    token_file: TokenFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    auto_tls: AutoTls = False,
    auto_tls_path: AutoTlsPath = None,
    auto_tls_san: AutoTlsSan = None,
    plaintext: Plaintext = False,
    allow_ports: Annotated[Optional[str], typer.Option(help="Only these data ports may be opened, TCP and UDP alike, e.g. 80,443.")] = None,
    allow_ips: AllowIps = None,
    proxy_protocol: ProxyProtocolOpt = None,
    lb_proxy_protocol: LbProxyProtocol = None,
    client_forwarding: Annotated[
        bool, typer.Option(help="Let clients reach services on this side (--local on the client).")
    ] = False,
    client_forwarding_allow: Annotated[
        Optional[str], typer.Option(help="Targets clients may reach: 127.0.0.1:5432,10.0.0.0/8:*,db.internal:5432.")
    ] = None,
    keepalive: Keepalive = 20.0,
    max_client_streams: MaxClientStreams = 4096,
    max_client_buffer: MaxClientBuffer = 32,
    max_handshakes: MaxHandshakes = 128,
    max_handshakes_per_source: MaxHandshakesPerSource = None,
    trusted_proxies: TrustedProxies = None,
    login_limit_exempt: LoginLimitExempt = None,
    drain_timeout: DrainTimeout = 30.0,
    generate: Generate = None,
    replicas: Replicas = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run a TCP tunnel server (the exit server).

    Example: inlets tcp server --auto-tls --auto-tls-san 203.0.113.10 --token-file token.txt
    """
    maybe_generate(generate, ["tcp", "server"], replicas, flags=locals())
    handoff.start("tcp_server", locals())  # run in the process that never loaded typer
