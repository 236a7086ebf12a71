"""The ``inlets`` command: ``inlets tcp server|client``, ``inlets status`` (HTTP: cli_http).

Every error a user can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .allowlist import parse_target_rules
from .auth import TokenError, read_tokens
from .cli_common import (
    AllowIps, AutoTls, AutoTlsPath, AutoTlsSan, ControlAddr, ControlPort, DataAddr, DrainTimeout, Generate, Keepalive,
    LbProxyProtocol, LogFormat, LogLevel, MaxBuffer, MaxClientStreams, MaxHandshakes, MaxHandshakesPerSource,
    MaxServerStreams, Plaintext, Proxy, ProxyPasswordFile, ProxyProtocolOpt, TlsCa, TlsCert, TlsInsecure, TlsKey,
    TlsServerName, Token, TokenFile, TokenFiles, TrustedProxies, Urls, client_configs, control_config,
    data_plane_options, fail,
    maybe_generate, run_client, run_server, setup_logs, tunnel_client,
)
from .ports import parse_port_list

log = logging.getLogger("inlets")

app = typer.Typer(
    name="inlets",
    help="Tunnels over one authenticated TLS websocket. Run a server on a public host, a client inside your network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tcp_app = typer.Typer(help="TCP (and UDP) tunnels: forward ports byte for byte, datagram for datagram.",
                      no_args_is_help=True)
app.add_typer(tcp_app, name="tcp")


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


# ----------------------------------------------------------------------- tcp


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
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run a TCP tunnel server (the exit server).

    Example: inlets tcp server --auto-tls --auto-tls-san 203.0.113.10 --token-file token.txt
    """
    maybe_generate(generate, ["tcp", "server"])
    setup_logs(log_level, log_format)
    from .forwarding import ForwardingPolicy
    from .tcp_server import TcpTunnelServer

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
        log.info("event=started mode=tcp control=%s://%s:%d data_addr=%s version=%s",
                 scheme, control_addr or "*", control_port, data_addr or "*", __version__)

    run_server(server, describe=f"control {control_addr or '*'}:{control_port}", drain_timeout=drain_timeout,
               token=token, token_file=token_file, started=started)


@tcp_app.command("client")
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
    max_streams: MaxServerStreams = 1024,
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
    maybe_generate(generate, ["tcp", "client"])
    setup_logs(log_level, log_format)
    from .forwarding import LocalForwarder, parse_local_forward
    from .tcp_client import TcpUpstreams, UpstreamError, parse_upstreams

    try:
        forwards = [parse_local_forward(item) for item in local or []]
    except ValueError as exc:
        fail(str(exc))
    try:
        wanted = upstream or ports or udp_ports or not forwards
        mapping = parse_upstreams(upstream or [], ports or [], udp_ports or []) if wanted else {}
    except UpstreamError as exc:
        fail(str(exc))
    upstreams = TcpUpstreams(mapping)
    configs = client_configs(
        urls=url, token=token, token_files=token_file, tls_ca=tls_ca, tls_server_name=tls_server_name,
        tls_insecure=tls_insecure, keepalive=keepalive, mode="tcp", services=upstreams.services, proxy=proxy,
        proxy_password_file=proxy_password_file, drain_timeout=drain_timeout, max_streams=max_streams,
        max_buffer_mib=max_buffer,
    )
    forwarder = LocalForwarder(forwards, local_addr, lambda: client.session)
    for config in configs:
        if forwards:
            config.extra["forwards"] = forwarder.targets
    client = tunnel_client(configs, upstreams.on_stream)

    async def start() -> None:
        try:
            await forwarder.start()
        except OSError as exc:
            fail(f"cannot listen on {local_addr} for --local: {exc.strerror or exc}", 1)

    run_client(client, start)


# -------------------------------------------------------------------- status


@app.command("status")
def status(
    url: Urls,
    token: Annotated[Optional[str], typer.Option(help="Auth token (prefer --token-file or $INLETS_TOKEN).")] = None,
    token_file: Annotated[Optional[list[Path]], typer.Option(
        metavar="<path>", help="File holding the token: one for every --url, or one per --url in order.")] = None,
    tls_ca: TlsCa = None,
    tls_server_name: TlsServerName = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the server's JSON as is.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the server.")] = 5.0,
) -> None:
    """Show a server's clients, their services, streams and traffic. With several --url (servers behind
    one balancer), each server's, then which servers each client holds.

    Example: inlets status --url wss://203.0.113.10:8123 --token-file token.txt --tls-ca ca.crt
    """
    from .probe import ProbeError, get, parse_url
    from .status import render_holdings, render_table

    files: list[Path | None] = list(token_file or [None])
    if len(files) not in (1, len(url)):
        fail(f"--token-file given {len(files)} times for {len(url)} --url: give one for every server, or one per --url")
    documents: dict[str, dict] = {}
    for server, file in zip(url, files * len(url) if len(files) == 1 else files):
        try:
            secret = read_tokens(token, file)[0]
            endpoint = parse_url(server)
            answer = get(endpoint, "/status", ca_file=tls_ca, server_name=tls_server_name, token=secret, timeout=timeout)
        except (TokenError, ProbeError) as exc:
            fail(f"{server}: {exc}" if len(url) > 1 else str(exc), 1)
        where = f"{server}: " if len(url) > 1 else ""
        if answer.status == 401:
            fail(f"{where}the server refused the token (HTTP 401): check --token/--token-file", 1)
        if answer.status != 200:
            fail(f"{where}/status answered HTTP {answer.status}: {answer.body.strip()[:200]}", 1)
        try:
            documents[server] = json.loads(answer.body)
        except ValueError:
            fail(f"{where}/status did not answer JSON: is --url a tunnel server?", 1)
    if len(url) == 1:
        (document,) = documents.values()
        typer.echo(json.dumps(document, indent=2) if json_ else render_table(document))
        return
    if json_:
        typer.echo(json.dumps({"servers": documents}, indent=2))
        return
    for server, document in documents.items():
        typer.echo(f"{server}\n{render_table(document)}\n")
    typer.echo(render_holdings(documents))


def main() -> None:
    """Entry point: usage errors as one line (``inlets: error: ...``), exit status 2."""
    try:
        status_code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: bad flags and values
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare command: show its help
            typer.echo(exc.format_message(), err=True)
            sys.exit(2)
        command = ctx.command_path if ctx is not None else "inlets"
        typer.echo(f"{command}: error: {exc.format_message()} (see --help)", err=True)
        sys.exit(2 if ctx is not None else exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    sys.exit(status_code if isinstance(status_code, int) else 0)


# `inlets http ...`: its commands live in cli_http, on the same shared options.
from .cli_http import http_app  # noqa: E402

app.add_typer(http_app, name="http")
