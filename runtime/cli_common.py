"""What every ``inlets`` command shares: options, their validation, and the process lifecycle.

Servers: SIGTERM/SIGINT drain (no new connections, open ones get ``--drain-timeout``),
SIGHUP re-reads ``--token-file`` (clients whose token was removed are disconnected).
Clients: SIGTERM/SIGINT drain the same way; SIGHUP reconnects make-before-break,
re-reading the token file (token rotation without downtime).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Awaitable, Callable, NoReturn, Optional

import typer

from . import logs
from .allowlist import SourceAllowList, parse_networks
from .auth import PROXY_PASSWORD, TokenError, TokenSet, read_tokens
from .dataplane import DataPlaneOptions
from .tls import TlsConfigError, client_context, server_context

if TYPE_CHECKING:  # imported where used: a server never loads the client stack, and vice versa
    from .client import ClientConfig, TunnelClient
    from .client_group import ClientGroup
    from .session import Channel
    from .control import ControlConfig

log = logging.getLogger("inlets")


def fail(message: str, status: int = 2) -> NoReturn:
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
TokenFile = Annotated[
    Optional[Path], typer.Option(help="File holding the token (server: one per line, re-read on SIGHUP).")
]
TlsCert = Annotated[Optional[Path], typer.Option(help="TLS certificate (PEM) for the control plane.")]
TlsKey = Annotated[Optional[Path], typer.Option(help="TLS private key (PEM).")]
AutoTls = Annotated[bool, typer.Option(help="Generate a CA and server certificate (reused on restart).")]
AutoTlsPath = Annotated[
    Optional[Path], typer.Option(help="Where --auto-tls keeps its files [default: ~/.local/share/inlets/auto-tls].")
]
AutoTlsSan = Annotated[Optional[list[str]], typer.Option(help="Name or IP the certificate is for (repeatable).")]
Plaintext = Annotated[bool, typer.Option(help="Plain ws://, only behind a TLS-terminating proxy.")]
Keepalive = Annotated[float, typer.Option(min=1.0, help="Seconds within which a dead peer is detected.")]
MaxClientStreams = Annotated[
    int, typer.Option(min=1, max=1_000_000, help="Streams one client may have open at once (more are refused).")
]
TrustedProxies = Annotated[Optional[str], typer.Option(
    help="Reverse proxies in front (addresses or CIDRs, e.g. 127.0.0.1) whose X-Forwarded-For names the client, "
    "for failed-login limits and logs.")]
MaxHandshakes = Annotated[int, typer.Option(
    min=1, max=1_000_000, help="Control-port connections not yet authenticated, at once (more are closed at once).")]
MaxHandshakesPerSource = Annotated[int, typer.Option(
    min=1, max=1_000_000, help="Of those, from one address (a --trusted-proxies address counts to the total only).")]
MaxServerStreams = Annotated[int, typer.Option(
    "--max-streams", min=1, max=1_000_000, help="Streams the server may have open on this client at once (more are refused).")]
MaxBuffer = Annotated[int, typer.Option(
    "--max-buffer", min=1, max=1_000_000,
    help="MiB the server's streams may make this client hold, all together, beyond each stream's first 256 KiB "
    "(for upstreams that have not taken the data yet).")]
DrainTimeout = Annotated[
    float, typer.Option(min=0.0, help="On SIGTERM, seconds open connections get to finish before exit.")
]
AllowIps = Annotated[
    Optional[str], typer.Option(help="Only these sources may use the data plane: 10.0.0.0/8,2001:db8::/32.")
]
ProxyProtocolOpt = Annotated[
    Optional[str], typer.Option(help="Send a PROXY protocol header (v1|v2) with the real source to the upstream.")
]
LbProxyProtocol = Annotated[
    Optional[str], typer.Option(help="Expect a PROXY protocol header (v1|v2) from a load balancer in front.")
]
Generate = Annotated[
    Optional[str], typer.Option(help="Print a systemd unit (systemd) or Kubernetes YAML (k8s_yaml) running these flags.")
]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error.")]
LogFormat = Annotated[str, typer.Option(help="text (key=value) or json.")]
Urls = Annotated[list[str], typer.Option(
    "--url", metavar="<url>", help="Server URL: wss://HOST:8123 (a path is kept as a prefix). Repeat it to serve through several "
    "servers at once (high availability: one session each, each reconnecting on its own).")]
TokenFiles = Annotated[Optional[list[Path]], typer.Option(
    "--token-file", metavar="<path>", help="File holding the token, re-read at every connection. With several --url: one file for "
    "all, or one per --url in the same order.")]
TlsCa = Annotated[Optional[Path], typer.Option(help="CA certificate to pin the server to (else the system trust store).")]
TlsServerName = Annotated[Optional[str], typer.Option(help="Name the server certificate must carry, when not the URL host.")]
TlsInsecure = Annotated[bool, typer.Option(help="Do not verify the server certificate (testing only).")]
Proxy = Annotated[Optional[str], typer.Option(
    help="Reach the server through this proxy: http://[USER@]HOST:PORT (CONNECT) or socks5://HOST:PORT; "
    "'none' to connect directly. Default: $HTTPS_PROXY / $ALL_PROXY unless $NO_PROXY matches.")]
ProxyPasswordFile = Annotated[Optional[Path], typer.Option(
    help="File holding the password for the --proxy user [env: INLETS_PROXY_PASSWORD] "
    "(a password inside --proxy shows in ps).")]


def maybe_generate(kind: str | None, command: list[str]) -> None:
    """With --generate, print the service definition for these exact flags and exit."""
    if kind is None:
        return
    from .generate import GenerateError
    from .generate import generate as generate_service

    argv = sys.argv[1 + len(command) :]
    try:
        typer.echo(generate_service(kind, command, argv), nl=False)
    except GenerateError as exc:
        fail(str(exc))
    raise typer.Exit(0)


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
    max_client_streams: int = 4096,
    trusted_proxies: str | None = None,
    max_handshakes: int = 128,
    max_handshakes_per_source: int = 16,
) -> ControlConfig:
    """Validate the control-plane flags every server shares."""
    from .control import ControlConfig

    try:
        proxies = SourceAllowList(parse_networks(trusted_proxies, "--trusted-proxies")) if trusted_proxies else None
    except ValueError as exc:
        fail(str(exc))

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
            ssl_context = server_context(tls_cert, tls_key)
        elif auto_tls:
            names = auto_tls_san or ["localhost", "127.0.0.1", "::1", socket.gethostname()]
            files = auto_tls_files(auto_tls_path or default_data_dir() / "auto-tls", names)
            ssl_context = server_context(Path(files["cert"]), Path(files["key"]))
            log.info("event=auto_tls ca=%s names=%s", files["ca_cert"], ",".join(names))
    except (TlsConfigError, OSError) as exc:
        fail(str(exc))
    return ControlConfig(
        tokens=tokens, host=control_addr or None, port=control_port, ssl_context=ssl_context, keepalive=keepalive,
        max_streams=max_client_streams, trusted_proxies=proxies, max_handshakes=max_handshakes,
        max_handshakes_per_source=max_handshakes_per_source,
    )


def auto_tls_files(directory: Path, names: list[str]) -> dict[str, str]:
    """Create or reuse the --auto-tls CA and certificate, in a child process (see certs.main)."""
    result = subprocess.run(
        [sys.executable, "-m", "runtime.certs", str(directory), *names], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise TlsConfigError(f"--auto-tls could not prepare {directory}: {last}")
    return json.loads(result.stdout)


def _proxy_version(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    if value not in ("v1", "v2"):
        fail(f"{option} must be v1 or v2, got {value!r}")
    return value


def data_plane_options(
    *, allow_ips: str | None, proxy_protocol: str | None, lb_proxy_protocol: str | None
) -> DataPlaneOptions:
    allow = None
    if allow_ips is not None:
        try:
            allow = SourceAllowList(parse_networks(allow_ips))
        except ValueError as exc:
            fail(str(exc))
    return DataPlaneOptions(
        allow_ips=allow,
        proxy_protocol=_proxy_version(proxy_protocol, "--proxy-protocol"),
        lb_proxy_protocol=_proxy_version(lb_proxy_protocol, "--lb-proxy-protocol"),
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
    proxy_password_file: Path | None = None,
    drain_timeout: float = 30.0,
    max_streams: int = 1024,
    max_buffer_mib: int = 64,
) -> ClientConfig:
    from .client import ClientConfig, FatalClientError, connect_url
    from .proxy import ProxyConfigError
    from .proxy import choose as choose_proxy
    from .proxy import with_password

    try:
        tokens = read_tokens(token, token_file)
        source = PROXY_PASSWORD.file_option if proxy_password_file else f"${PROXY_PASSWORD.env}"
        proxy = with_password(proxy, PROXY_PASSWORD.read(None, proxy_password_file), source)
    except (TokenError, ProxyConfigError) as exc:
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
        token_file=None if token else token_file,
        mode=mode,
        services=services,
        ssl_context=ssl_context,
        server_name=tls_server_name,
        keepalive=keepalive,
        proxy=proxy,
        drain_timeout=drain_timeout,
        max_streams=max_streams,
        max_buffer=max_buffer_mib * 1024 * 1024,
    )


# ------------------------------------------------------------------ lifecycle


def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    main: Callable[[], Awaitable[None]] | None = None,
    stop: Callable[[], Awaitable[None]] | None = None,
    reload: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run on uvloop when installed. SIGTERM/SIGINT: ``stop`` then exit 0; SIGHUP: ``reload``."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
        await start()
        waiters = [asyncio.ensure_future(stopping.wait())]
        if main is not None:
            waiters.append(asyncio.ensure_future(main()))
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if stop is not None:
            await stop()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # re-raise a failure of main

    try:
        import uvloop
    except ImportError:
        uvloop = None  # run the loop outside the except block: everything raised in it would carry the ImportError
    if uvloop is None:
        asyncio.run(runner())
    else:
        uvloop.run(runner())


def run_server(
    server,
    *,
    describe: str,
    drain_timeout: float,
    token: str | None,
    token_file: Path | None,
    started: Callable[[], None] | None = None,
) -> None:
    """Start ``server`` (then ``started``); SIGHUP re-reads the token file; SIGTERM drains then exits 0."""

    async def start() -> None:
        try:
            await server.start()
        except OSError as exc:  # the OS's reason: asyncio's wrapper repeats the address as a Python tuple
            fail(f"cannot listen ({describe}): {os.strerror(exc.errno) if exc.errno else exc}", 1)
        if started is not None:
            started()

    async def reload() -> None:
        if token or token_file is None:
            log.warning("event=reload_ignored reason=%s", "tokens come from --token/$INLETS_TOKEN, not a file")
            return
        try:
            tokens = read_tokens(None, token_file)
        except TokenError as exc:
            log.error("event=reload_failed error=%r keeping=current_tokens", str(exc))
            return
        server.control.config.tokens.replace(tokens)
        revoked = server.control.revoke_stale_tokens()
        log.info("event=tokens_reloaded count=%d clients_revoked=%d", len(tokens), revoked)

    async def stop() -> None:
        log.info("event=draining timeout=%.1fs", drain_timeout)
        await server.drain(drain_timeout)

    run_until_signalled(start, stop=stop, reload=reload)


def client_configs(*, urls: list[str], token: str | None, token_files: list[Path] | None, **options: Any) -> list[ClientConfig]:
    """One ClientConfig per ``--url``; ``--token-file`` once for all servers or once per server, in order."""
    files: list[Path | None] = list(token_files or [None])
    if len(files) not in (1, len(urls)):
        fail(f"--token-file given {len(files)} times for {len(urls)} --url: give one for every server, "
             "or one per --url in the same order")
    if len(set(urls)) != len(urls):
        fail("the same --url is given twice: each server once")
    if len(files) == 1:
        files *= len(urls)
    return [client_config(url=url, token=token, token_file=file, **options) for url, file in zip(urls, files)]


def tunnel_client(configs: list[ClientConfig], on_stream: Callable[[Channel], None]) -> TunnelClient | ClientGroup:
    """The client for one server, or a group of them connected to every --url."""
    from .client import TunnelClient
    from .client_group import ClientGroup

    if len(configs) == 1:
        return TunnelClient(configs[0], on_stream)
    return ClientGroup(configs, on_stream)


def run_client(client: TunnelClient | ClientGroup, start: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run ``client`` until signalled: SIGHUP reconnects make-before-break, SIGTERM drains."""
    from .client import FatalClientError

    async def begin() -> None:
        if start is not None:
            await start()

    try:
        run_until_signalled(begin, client.run_forever, stop=client.shutdown, reload=client.rotate)
    except FatalClientError as exc:
        fail(str(exc), 1)
