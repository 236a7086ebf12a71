"""``inlets http server``: the HTTP exit server's command (and its Let's Encrypt front)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import handoff
from .app import http_app
from .config import maybe_generate
from .durations import DrainTimeout, Keepalive, seconds_option
from .options import (
    AllowIps, AutoTls, AutoTlsPath, AutoTlsSan, ControlAddr, ControlPort, DataAddr, Generate, LbProxyProtocol, LogFormat,
    LoginLimitExempt, LogLevel, MaxClientBuffer, MaxClientStreams, MaxHandshakes, MaxHandshakesPerSource, Plaintext,
    Replicas, TlsCert, TlsKey, Token, TokenFile, TrustedProxies, count_option, path_option, port_option,
)


LetsEncryptDomain = Annotated[Optional[list[str]], typer.Option(
    help="Serve HTTPS for this domain with a Let's Encrypt certificate (repeatable; its DNS must point here).")]
LetsEncryptEmail = Annotated[Optional[str], typer.Option(help="Contact address for the ACME account (expiry notices).")]
LetsEncryptIssuer = Annotated[str, typer.Option(
    help="prod, staging, or an ACME directory URL (https://...). Using it accepts the CA's terms of service.")]
LetsEncryptPath = Annotated[Optional[Path], typer.Option(
    help="Where account and certificate keys are kept (0700) [default: ~/.local/share/inlets/letsencrypt, or "
         "$XDG_DATA_HOME/inlets/letsencrypt where that is an absolute path].")]
LetsEncryptCa = Annotated[Optional[Path], path_option(
    "CA bundle to verify the ACME server's own HTTPS (a private ACME CA) [default: system store].")]
HttpsPort = Annotated[int, port_option("HTTPS data-plane port with --letsencrypt-domain.")]
MaxHttpsHandshakes = Annotated[int, count_option(
    help="HTTPS-port connections in their TLS handshake or with no request head yet, at once (at the cap the oldest "
         "is closed to make room); --port's are capped by --max-pending-connections.")]
MaxHttpsHandshakesPerSource = Annotated[Optional[int], count_option(
    help="Of those, from one address, an IPv6 one's /64 (more are closed at once, before TLS); default 64, or the "
         "total if lower")]
MaxPendingConnections = Annotated[int, count_option(
    help="--port connections with no request head yet, at once (at the cap the oldest is closed to make room).")]
MaxPendingConnectionsPerSource = Annotated[Optional[int], count_option(
    help="Of those, from one address, an IPv6 one's /64 (more are closed at once): raise it for many users behind "
         "one NAT, or list a balancer in --trusted-proxies (it then counts to the total only); default 64, or the "
         "total if lower")]


@http_app.command("server", short_help="Run an HTTP tunnel server (the exit server).")
def http_server(
    port: Annotated[Optional[int], port_option("Data-plane (HTTP) port [default: 8000; 80 with --letsencrypt-domain].")] = None,
    data_addr: DataAddr = None,
    upstream_timeout: Annotated[float, seconds_option(
        "Seconds an upstream may stay silent before 504 (and a user may take none of an answer).", 0.1)] = 60.0,
    idle_timeout: Annotated[float, seconds_option("Seconds a kept-alive user connection may wait for its next request.", 0.1)] = 75.0,
    header_timeout: Annotated[float, seconds_option("Seconds a user has to send a whole request head once begun (else 408).", 0.1)] = 20.0,
    max_pending_connections: MaxPendingConnections = 1024,
    max_pending_connections_per_source: MaxPendingConnectionsPerSource = None,
    control_addr: ControlAddr = None,
    control_port: ControlPort = 8123,
    token: Token = None,
    token_file: TokenFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    auto_tls: AutoTls = False,
    auto_tls_path: AutoTlsPath = None,
    auto_tls_san: AutoTlsSan = None,
    plaintext: Plaintext = False,
    allow_ips: AllowIps = None,
    lb_proxy_protocol: LbProxyProtocol = None,
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
    letsencrypt_domain: LetsEncryptDomain = None,
    letsencrypt_email: LetsEncryptEmail = None,
    letsencrypt_issuer: LetsEncryptIssuer = "prod",
    letsencrypt_path: LetsEncryptPath = None,
    letsencrypt_ca: LetsEncryptCa = None,
    https_port: HttpsPort = 443,
    max_https_handshakes: MaxHttpsHandshakes = 1024,
    max_https_handshakes_per_source: MaxHttpsHandshakesPerSource = None,
) -> None:
    """Run an HTTP tunnel server: requests on --port go to the client serving their Host.

    With --letsencrypt-domain: HTTPS on --https-port with certificates from Let's Encrypt (obtained and
    renewed while running), and --port answers HTTP-01 challenges and redirects its domains to https.

    Example: inlets http server --port 8000 --auto-tls --auto-tls-san 203.0.113.10 --token-file token.txt
    (metrics: printf 'Authorization: Bearer %s\\n' "$(cat token.txt)" | curl --cacert ca.crt -H @-
    https://203.0.113.10:8123/metrics)
    """
    maybe_generate(generate, ["http", "server"], replicas, flags=locals())
    handoff.start("http_server", locals())  # run in the process that never loaded typer
