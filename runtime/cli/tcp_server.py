"""``inlets tcp server``: the TCP exit server's command."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from .. import __version__
from ..core.hosts import authority
from ..core.allowlist import parse_target_rules
from ..core.ports import parse_port_list
from ..server.forwarding import ForwardingPolicy
from ..server.tcp import TcpTunnelServer
from .app import tcp_app
from .config import fail, maybe_generate, setup_logs
from .lifecycle import run_server
from .durations import DrainTimeout, Keepalive
from .options import (
    AllowIps, AutoTls, AutoTlsPath, AutoTlsSan, ControlAddr, ControlPort, DataAddr, Generate,
    LbProxyProtocol, LogFormat, LogLevel, MaxClientStreams, MaxHandshakes, MaxHandshakesPerSource, Plaintext, Replicas,
    ProxyProtocolOpt, TlsCert, TlsKey, Token, TokenFile, TrustedProxies,
)
from .server_config import check_bind_addresses, control_config, data_plane_options

log = logging.getLogger("inlets")


def parse_allow_ports(text: str | None) -> set[int] | None:
    if not text:
        return None
    try:
        allowed = set(parse_port_list(text))
    except ValueError as exc:
        fail(f"--allow-ports must be a comma-separated list of ports: {exc}")
    if not allowed:
        fail(f"--allow-ports must be a comma-separated list of ports, got {text!r}")
    return allowed


@tcp_app.command("server")
def tcp_server(
    control_addr: ControlAddr = "",
    control_port: ControlPort = 8123,
    data_addr: DataAddr = "",
    token: Token = None,
    token_file: TokenFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    auto_tls: AutoTls = False,
    auto_tls_path: AutoTlsPath = None,
    auto_tls_san: AutoTlsSan = None,
    plaintext: Plaintext = False,
    allow_ports: Annotated[Optional[str], typer.Option(help="Only these data ports may be opened, e.g. 80,443.")] = None,
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
    max_handshakes: MaxHandshakes = 128,
    max_handshakes_per_source: MaxHandshakesPerSource = 16,
    trusted_proxies: TrustedProxies = None,
    drain_timeout: DrainTimeout = 30.0,
    generate: Generate = None,
    replicas: Replicas = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run a TCP tunnel server (the exit server).

    Example: inlets tcp server --auto-tls --auto-tls-san 203.0.113.10 --token-file token.txt
    """
    maybe_generate(generate, ["tcp", "server"], replicas)
    setup_logs(log_level, log_format)
    check_bind_addresses(control_addr, data_addr)

    allowed = parse_allow_ports(allow_ports)
    options = data_plane_options(allow_ips=allow_ips, proxy_protocol=proxy_protocol, lb_proxy_protocol=lb_proxy_protocol)
    if client_forwarding_allow and not client_forwarding:
        fail("--client-forwarding-allow needs --client-forwarding")
    if client_forwarding and not client_forwarding_allow:
        fail("--client-forwarding needs --client-forwarding-allow HOST:PORT[,...]: say what clients may reach")
    config = control_config(
        control_addr=control_addr, control_port=control_port, token=token, token_file=token_file,
        tls_cert=tls_cert, tls_key=tls_key, auto_tls=auto_tls, auto_tls_path=auto_tls_path,
        auto_tls_san=auto_tls_san, plaintext=plaintext, keepalive=keepalive, max_client_streams=max_client_streams,
        trusted_proxies=trusted_proxies, max_handshakes=max_handshakes, max_handshakes_per_source=max_handshakes_per_source,
    )
    if client_forwarding:
        try:
            config.forwarding = ForwardingPolicy(True, parse_target_rules(client_forwarding_allow or ""))
        except ValueError as exc:
            fail(str(exc))
    server = TcpTunnelServer(config, data_addr=data_addr or None, allow_ports=allowed, options=options)
    scheme = "wss" if config.ssl_context else "ws"

    def started() -> None:  # the ready line, as the HTTP server logs it: the control port accepts from now on
        log.info("event=started mode=tcp control=%s://%s data_addr=%s version=%s",
                 scheme, authority(control_addr or "*", control_port), data_addr or "*", __version__)

    run_server(server, describe=f"control {control_addr or '*'}:{control_port}", drain_timeout=drain_timeout,
               token=token, token_file=token_file, started=started)
