"""``inlets http server``: the HTTP exit server's command (and its Let's Encrypt front)."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..core.hosts import authority
from ..http.server import HttpTunnelServer
from .app import http_app
from .config import default_data_dir, fail, maybe_generate, setup_logs
from .lifecycle import run_server
from .durations import DrainTimeout, Keepalive, seconds_option
from .options import (
    AllowIps, AutoTls, AutoTlsPath, AutoTlsSan, ControlAddr, ControlPort, DataAddr, Generate,
    LbProxyProtocol, LogFormat, LogLevel, MaxClientStreams, MaxHandshakes, MaxHandshakesPerSource, Plaintext, Replicas,
    TlsCert, TlsKey, Token, TokenFile, TrustedProxies, port_option,
)
from .server_config import check_bind_addresses, control_config, data_plane_options

log = logging.getLogger("inlets")


LetsEncryptDomain = Annotated[Optional[list[str]], typer.Option(
    help="Serve HTTPS for this domain with a Let's Encrypt certificate (repeatable; its DNS must point here).")]
LetsEncryptEmail = Annotated[Optional[str], typer.Option(help="Contact address for the ACME account (expiry notices).")]
LetsEncryptIssuer = Annotated[str, typer.Option(
    help="prod, staging, or an ACME directory URL (https://...). Using it accepts the CA's terms of service.")]
LetsEncryptPath = Annotated[Optional[Path], typer.Option(
    help="Where account and certificate keys are kept (0700) [default: ~/.local/share/inlets/letsencrypt].")]
LetsEncryptCa = Annotated[Optional[Path], typer.Option(
    help="CA bundle to verify the ACME server's own HTTPS (a private ACME CA) [default: system store].")]
HttpsPort = Annotated[int, port_option("HTTPS data-plane port with --letsencrypt-domain.")]


def lets_encrypt_front(domains: list[str] | None, email: str | None, issuer: str, path: Path | None,
                       ca: Path | None, https_port: int):  # -> HttpsFront | None
    """The HTTPS front for ``--letsencrypt-*``, or None without a domain; bad options fail in one line."""
    if not domains:
        if email or issuer != "prod" or path or ca or https_port != 443:
            fail("--letsencrypt-email/-issuer/-path/-ca and --https-port need --letsencrypt-domain")
        return None
    try:
        from ..acme.store import AcmeConfigError
        from ..acme.https_front import HttpsFront
        from ..acme.letsencrypt import configure
    except ImportError as exc:
        fail(f"this installation has no Let's Encrypt support ({exc})")

    try:
        manager = configure(domains, path or default_data_dir() / "letsencrypt", issuer=issuer, email=email,
                            ca_bundle=ca)
    except AcmeConfigError as exc:
        fail(str(exc))
    return HttpsFront(manager, https_port)


@http_app.command("server")
def http_server(
    port: Annotated[Optional[int], port_option("Data-plane (HTTP) port [default: 8000; 80 with --letsencrypt-domain].")] = None,
    data_addr: DataAddr = "",
    upstream_timeout: Annotated[float, seconds_option("Seconds an upstream may stay silent before 504.", 0.1)] = 60.0,
    idle_timeout: Annotated[float, seconds_option("Seconds a kept-alive user connection may wait for its next request.", 0.1)] = 75.0,
    header_timeout: Annotated[float, seconds_option("Seconds a user has to send a whole request head once begun (else 408).", 0.1)] = 20.0,
    control_addr: ControlAddr = "",
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
    max_handshakes: MaxHandshakes = 128,
    max_handshakes_per_source: MaxHandshakesPerSource = 16,
    trusted_proxies: TrustedProxies = None,
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
) -> None:
    """Run an HTTP tunnel server: requests on --port go to the client serving their Host.

    With --letsencrypt-domain: HTTPS on --https-port with certificates from Let's Encrypt (obtained and
    renewed while running), and --port answers HTTP-01 challenges and redirects everything else to https.

    Example: inlets http server --port 8000 --auto-tls --auto-tls-san 203.0.113.10 --token-file token.txt
    (metrics: curl -H "Authorization: Bearer $TOKEN" https://HOST:8123/metrics)
    """
    maybe_generate(generate, ["http", "server"], replicas)
    setup_logs(log_level, log_format)
    check_bind_addresses(control_addr, data_addr)

    dataplane = data_plane_options(allow_ips=allow_ips, proxy_protocol=None, lb_proxy_protocol=lb_proxy_protocol)
    config = control_config(
        control_addr=control_addr, control_port=control_port, token=token, token_file=token_file,
        tls_cert=tls_cert, tls_key=tls_key, auto_tls=auto_tls, auto_tls_path=auto_tls_path,
        auto_tls_san=auto_tls_san, plaintext=plaintext, keepalive=keepalive, max_client_streams=max_client_streams,
        trusted_proxies=trusted_proxies, max_handshakes=max_handshakes, max_handshakes_per_source=max_handshakes_per_source,
    )
    https = lets_encrypt_front(letsencrypt_domain, letsencrypt_email, letsencrypt_issuer, letsencrypt_path,
                               letsencrypt_ca, https_port)
    if https and lb_proxy_protocol:
        fail("--lb-proxy-protocol cannot be combined with --letsencrypt-domain (the balancer would have to pass TLS through)")
    port = port or (80 if https else 8000)
    server = HttpTunnelServer(config, port=port, data_addr=data_addr or None, upstream_timeout=upstream_timeout,
                             idle_timeout=idle_timeout, header_timeout=header_timeout, https=https,
                             dataplane=dataplane)
    data = f"{data_addr or '*'}:{port}" + (f" and :{https_port}" if https else "")

    def started() -> None:
        gc.freeze()  # start-up objects leave the collector's view: full collections stop costing ms at p99
        scheme = "wss" if config.ssl_context else "ws"
        log.info("event=started mode=http control=%s://%s data=http://%s version=%s",
                 scheme, authority(control_addr or "*", control_port), authority(data_addr or "*", port), __version__)
        if https:
            log.info("event=https data=https://%s domains=%s", authority(data_addr or "*", https_port),
                     ",".join(https.letsencrypt.domains))

    run_server(server, describe=f"control {control_addr or '*'}:{control_port}, data {data}",
               drain_timeout=drain_timeout, token=token, token_file=token_file, started=started)
