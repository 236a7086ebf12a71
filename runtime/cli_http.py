"""`inlets http server|client`: the HTTP tunnel commands, on the shared options of ``cli``.

``cli`` imports ``http_app`` at its end and registers it (import ``runtime.cli``,
not this module, first: this module needs the helpers defined above that line).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .auth import BASIC_AUTH_PASSWORD, BEARER_TOKEN, TokenError
from .cli_common import (
    AllowIps, AutoTls, AutoTlsPath, AutoTlsSan, ControlAddr, ControlPort, DataAddr, DrainTimeout, Generate, Keepalive,
    LbProxyProtocol, LogFormat, LogLevel, MaxBuffer, MaxClientStreams, MaxHandshakes, MaxHandshakesPerSource,
    MaxServerStreams, Plaintext, Proxy, ProxyPasswordFile, TlsCa, TlsCert, TlsInsecure, TlsKey, TlsServerName, Token,
    TokenFile, TokenFiles, TrustedProxies, Urls, client_configs, control_config, data_plane_options, default_data_dir, fail,
    maybe_generate, run_client, run_server, setup_logs, tunnel_client,
)

log = logging.getLogger("inlets")

http_app = typer.Typer(help="HTTP tunnels: a Host-routed reverse proxy to your apps.", no_args_is_help=True)

Headers = Annotated[Optional[list[str]], typer.Option(help="'Name: value' (repeatable).")]
Names = Annotated[Optional[list[str]], typer.Option(help="Header name (repeatable).")]


LetsEncryptDomain = Annotated[Optional[list[str]], typer.Option(
    help="Serve HTTPS for this domain with a Let's Encrypt certificate (repeatable; its DNS must point here).")]
LetsEncryptEmail = Annotated[Optional[str], typer.Option(help="Contact address for the ACME account (expiry notices).")]
LetsEncryptIssuer = Annotated[str, typer.Option(
    help="prod, staging, or an ACME directory URL (https://...). Using it accepts the CA's terms of service.")]
LetsEncryptPath = Annotated[Optional[Path], typer.Option(
    help="Where account and certificate keys are kept (0700) [default: ~/.local/share/inlets/letsencrypt].")]
LetsEncryptCa = Annotated[Optional[Path], typer.Option(
    help="CA bundle to verify the ACME server's own HTTPS (a private ACME CA) [default: system store].")]
HttpsPort = Annotated[int, typer.Option(min=1, max=65535, help="HTTPS data-plane port with --letsencrypt-domain.")]


def lets_encrypt_front(domains: list[str] | None, email: str | None, issuer: str, path: Path | None,
                       ca: Path | None, https_port: int):  # -> HttpsFront | None
    """The HTTPS front for ``--letsencrypt-*``, or None without a domain; bad options fail in one line."""
    if not domains:
        if email or issuer != "prod" or path or ca or https_port != 443:
            fail("--letsencrypt-email/-issuer/-path/-ca and --https-port need --letsencrypt-domain")
        return None
    try:
        from .acme_store import AcmeConfigError
        from .https_front import HttpsFront
        from .letsencrypt import configure
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
    port: Annotated[Optional[int], typer.Option(
        min=1, max=65535, help="Data-plane (HTTP) port [default: 8000; 80 with --letsencrypt-domain].")] = None,
    data_addr: DataAddr = "",
    upstream_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds an upstream may stay silent before 504.")
    ] = 60.0,
    idle_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a kept-alive user connection may wait for its next request.")
    ] = 75.0,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a user has to send a whole request head once begun (else 408).")
    ] = 20.0,
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
    maybe_generate(generate, ["http", "server"])
    setup_logs(log_level, log_format)
    from .http_server import HttpTunnelServer  # imported per command: a client never loads the server

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
        log.info("event=started mode=http control=%s://%s:%d data=http://%s:%d version=%s",
                 scheme, control_addr or "*", control_port, data_addr or "*", port, __version__)
        if https:
            log.info("event=https data=https://%s:%d domains=%s", data_addr or "*", https_port,
                     ",".join(https.letsencrypt.domains))

    run_server(server, describe=f"control {control_addr or '*'}:{control_port}, data {data}",
               drain_timeout=drain_timeout, token=token, token_file=token_file, started=started)


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
    from .http_client import HttpUpstreams, UpstreamError, parse_upstreams, upstream_tls
    from .http_options import HttpOptions, OptionError

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
    except OSError as exc:
        fail(f"cannot load --upstream-ca {upstream_ca}: {exc.strerror or exc}")
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

