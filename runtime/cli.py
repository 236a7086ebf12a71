"""The ``inlets`` command: ``inlets tcp server|client`` (and the HTTP commands in cli_http).

Every error a user can cause ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Awaitable, Callable, Optional

import typer

from . import __version__, logs
from .auth import TokenError, TokenSet, read_tokens
from .certs import ensure_auto_tls
from .client import ClientConfig, FatalClientError, TunnelClient, connect_url
from .control import ControlConfig
from .proxy import ProxyConfigError, choose as choose_proxy
from .tcp_client import TcpUpstreams, UpstreamError, parse_upstreams
from .tcp_server import TcpTunnelServer
from .tls import TlsConfigError, client_context, server_context

log = logging.getLogger("inlets")

app = typer.Typer(
    name="inlets",
    help="Tunnels over one authenticated TLS websocket. Run a server on a public host, a client inside your network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tcp_app = typer.Typer(help="TCP tunnels: forward ports byte for byte.", no_args_is_help=True)
app.add_typer(tcp_app, name="tcp")


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def fail(message: str, status: int = 2) -> None:
    typer.echo(f"inlets: error: {message}", err=True)
    raise typer.Exit(status)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "inlets"


# --------------------------------------------------------------- shared options

ControlAddr = Annotated[str, typer.Option(help="Control-plane bind address (default: every interface, IPv4 and IPv6).")]
ControlPort = Annotated[int, typer.Option(min=1, max=65535, help="Control-plane (websocket) port.")]
DataAddr = Annotated[
    str, typer.Option(help="Data-plane bind address; 127.0.0.1 keeps tunnelled services private to this host.")
]
Token = Annotated[Optional[str], typer.Option(help="Auth token (prefer --token-file or $INLETS_TOKEN).")]
TokenFile = Annotated[Optional[Path], typer.Option(help="File holding the token (server: one per line).")]
TlsCert = Annotated[Optional[Path], typer.Option(help="TLS certificate (PEM) for the control plane.")]
TlsKey = Annotated[Optional[Path], typer.Option(help="TLS private key (PEM).")]
AutoTls = Annotated[bool, typer.Option(help="Generate a CA and server certificate (reused on restart).")]
AutoTlsPath = Annotated[Optional[Path], typer.Option(help="Where --auto-tls keeps its files [default: ~/.local/share/inlets/auto-tls].")]
AutoTlsSan = Annotated[Optional[list[str]], typer.Option(help="Name or IP the certificate is for (repeatable).")]
Plaintext = Annotated[bool, typer.Option(help="Plain ws://, only behind a TLS-terminating proxy.")]
Keepalive = Annotated[float, typer.Option(min=1.0, help="Seconds within which a dead peer is detected.")]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error.")]
LogFormat = Annotated[str, typer.Option(help="text (key=value) or json.")]
Url = Annotated[str, typer.Option(help="Server URL: wss://HOST:8123 (a path is kept as a prefix).")]
TlsCa = Annotated[Optional[Path], typer.Option(help="CA certificate to pin the server to (else the system trust store).")]
TlsServerName = Annotated[Optional[str], typer.Option(help="Name the server certificate must carry, when not the URL host.")]
TlsInsecure = Annotated[bool, typer.Option(help="Do not verify the server certificate (testing only).")]
Proxy = Annotated[Optional[str], typer.Option(
    help="Reach the server through this proxy: http://[USER:PASS@]HOST:PORT (CONNECT) or socks5://HOST:PORT; "
    "'none' to connect directly. Default: $HTTPS_PROXY / $ALL_PROXY unless $NO_PROXY matches.")]


def setup_logs(level: str, fmt: str) -> None:
    if level.lower() not in ("debug", "info", "warning", "error"):
        fail(f"--log-level must be debug, info, warning or error, got {level!r}")
    if fmt not in ("text", "json"):
        fail(f"--log-format must be text or json, got {fmt!r}")
    logs.setup(level, fmt)


def control_config(
    *,
    control_addr: str,
    control_port: int,
    token: str | None,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    auto_tls: bool,
    auto_tls_path: Path | None,
    auto_tls_san: list[str] | None,
    plaintext: bool,
    keepalive: float,
) -> ControlConfig:
    """Validate the control-plane flags every server shares."""
    try:
        tokens = TokenSet(read_tokens(token, token_file))
    except TokenError as exc:
        fail(str(exc))
    chosen = sum([bool(tls_cert or tls_key), auto_tls, plaintext])
    if chosen != 1:
        fail("choose one of --tls-cert/--tls-key, --auto-tls, or --plaintext")
    ssl_context = None
    try:
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                fail("--tls-cert and --tls-key go together")
            ssl_context = server_context(tls_cert, tls_key)  # type: ignore[arg-type]
        elif auto_tls:
            names = auto_tls_san or ["localhost", "127.0.0.1", "::1", socket.gethostname()]
            files = ensure_auto_tls(auto_tls_path or default_data_dir() / "auto-tls", names)
            ssl_context = server_context(files.cert, files.key)
            log.info("event=auto_tls ca=%s names=%s", files.ca_cert, ",".join(names))
    except (TlsConfigError, OSError) as exc:
        fail(str(exc))
    return ControlConfig(
        tokens=tokens, host=control_addr or None, port=control_port, ssl_context=ssl_context, keepalive=keepalive
    )


def client_config(
    *,
    url: str,
    token: str | None,
    token_file: Path | None,
    tls_ca: Path | None,
    tls_server_name: str | None,
    tls_insecure: bool,
    keepalive: float,
    mode: str,
    services: list[str],
    proxy: str | None = None,
) -> ClientConfig:
    try:
        tokens = read_tokens(token, token_file)
    except TokenError as exc:
        fail(str(exc))
    if not url.startswith(("ws://", "wss://")):
        fail(f"--url must start with wss:// (or ws:// behind a TLS proxy), got {url!r}")
    try:  # a bad --proxy or *_PROXY variable: one line now rather than at every retry
        choose_proxy(proxy, connect_url(url))
    except (ProxyConfigError, FatalClientError) as exc:
        fail(str(exc))
    try:
        ssl_context = client_context(tls_ca, insecure=tls_insecure) if url.startswith("wss://") else None
    except TlsConfigError as exc:
        fail(str(exc))
    return ClientConfig(
        url=url,
        token=tokens[0],
        mode=mode,
        services=services,
        ssl_context=ssl_context,
        server_name=tls_server_name,
        keepalive=keepalive,
        proxy=proxy,
    )


def run_until_signalled(start: Callable[[], Awaitable[None]], main: Callable[[], Awaitable[None]] | None = None,
                        stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run on uvloop when installed; SIGTERM/SIGINT stop cleanly (exit 0)."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await start()
        waiters = [asyncio.ensure_future(stopping.wait())]
        if main is not None:
            waiters.append(asyncio.ensure_future(main()))
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if stop is not None:
            await stop()
        for task in done:
            task.result()  # re-raise a failure of main

    try:
        import uvloop
    except ImportError:
        asyncio.run(runner())
    else:
        uvloop.run(runner())


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
    keepalive: Keepalive = 20.0,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run a TCP tunnel server (the exit server).

    Example: inlets tcp server --auto-tls --auto-tls-san 203.0.113.10 --token-file token.txt
    """
    setup_logs(log_level, log_format)
    allowed = None
    if allow_ports:
        try:
            allowed = {int(p) for p in allow_ports.split(",") if p.strip()}
        except ValueError:
            fail(f"--allow-ports must be a comma-separated list of ports, got {allow_ports!r}")
        if not all(1 <= p <= 65535 for p in allowed):
            fail("--allow-ports entries must be between 1 and 65535")
    config = control_config(
        control_addr=control_addr, control_port=control_port, token=token, token_file=token_file,
        tls_cert=tls_cert, tls_key=tls_key, auto_tls=auto_tls, auto_tls_path=auto_tls_path,
        auto_tls_san=auto_tls_san, plaintext=plaintext, keepalive=keepalive,
    )
    server = TcpTunnelServer(config, data_addr=data_addr or None, allow_ports=allowed)

    async def start() -> None:
        try:
            await server.start()
        except OSError as exc:
            fail(f"cannot listen on {control_addr or '*'}:{control_port}: {exc.strerror}", 1)
        scheme = "wss" if config.ssl_context else "ws"
        log.info("event=started mode=tcp control=%s://%s:%d data_addr=%s version=%s",
                 scheme, control_addr or "*", control_port, data_addr or "*", __version__)

    run_until_signalled(start, stop=server.stop)


@tcp_app.command("client")
def tcp_client(
    url: Url,
    upstream: Annotated[list[str], typer.Option(help="HOST (with --ports) or PUBLIC_PORT=HOST:PORT; repeatable.")],
    ports: Annotated[Optional[list[str]], typer.Option(help="Ports to forward to the plain --upstream HOST: 80,443.")] = None,
    token: Token = None,
    token_file: TokenFile = None,
    tls_ca: TlsCa = None,
    tls_server_name: TlsServerName = None,
    tls_insecure: TlsInsecure = False,
    proxy: Proxy = None,
    keepalive: Keepalive = 20.0,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run a TCP tunnel client: the server's data ports reach these upstreams.

    Example: inlets tcp client --url wss://203.0.113.10:8123 --token-file token.txt --tls-ca ca.crt
    --upstream 127.0.0.1 --ports 80,443 --upstream 2222=192.168.1.10:22
    """
    setup_logs(log_level, log_format)
    try:
        upstreams = TcpUpstreams(parse_upstreams(upstream, ports or []))
    except UpstreamError as exc:
        fail(str(exc))
    config = client_config(
        url=url, token=token, token_file=token_file, tls_ca=tls_ca, tls_server_name=tls_server_name,
        tls_insecure=tls_insecure, keepalive=keepalive, mode="tcp", services=upstreams.services, proxy=proxy,
    )
    run_client(TunnelClient(config, upstreams.on_stream))


def run_client(client: TunnelClient) -> None:
    async def main() -> None:
        await client.run_forever()

    async def nothing() -> None:
        return None

    try:
        run_until_signalled(nothing, main)
    except FatalClientError as exc:
        fail(str(exc), 1)


def main() -> None:
    """Entry point: usage errors as one line (``inlets: error: ...``), exit status 2."""
    try:
        status = app(standalone_mode=False)
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
    sys.exit(status if isinstance(status, int) else 0)


# `inlets http ...`: imported last, because cli_http uses the options and helpers above.
from .cli_http import http_app  # noqa: E402

app.add_typer(http_app, name="http")
