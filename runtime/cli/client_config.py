"""The clients' shared flags, validated: server URL, token, TLS pinning, outbound proxy."""

from __future__ import annotations

from pathlib import Path

from ..client.dialer import ClientConfig, FatalClientError, connect_url
from ..client.outbound_proxy import ProxyConfigError
from ..client.outbound_proxy import choose as choose_proxy
from ..client.outbound_proxy import with_password
from ..core.auth import PROXY_PASSWORD, TokenError, read_tokens
from ..core.tls import TlsConfigError, client_context
from .config import fail


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
