"""The clients' shared flags, validated: server URL, token, TLS pinning, outbound proxy."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from ..client.dialer import ClientConfig, FatalClientError, TunnelClient, connect_url
from ..client.group import ClientGroup
from ..client.outbound_proxy import DIRECT, ProxyConfigError
from ..client.outbound_proxy import choose as choose_proxy
from ..client.outbound_proxy import check_password_fits, normalize, with_password
from ..core.auth import PROXY_PASSWORD, TOKEN, SecretOption, TokenError, read_tokens, warn_if_others_can_read
from ..core.hosts import HostError, check_host, is_loopback, split_url
from ..core.logs import logfmt
from ..core.tls import TlsConfigError, client_context
from ..core.channel import Channel
from .config import check_given_once, fail, refuse_blank


log = logging.getLogger("inlets.client")

#: What a blank --proxy (``--proxy "$PROXY"``, PROXY unset) is told: taken as left out, the environment's proxy or a
#: direct connection was used instead of the one meant.
PROXY_INSTEAD = "give http://HOST:PORT, socks5://HOST:PORT or none (leave the flag out to take $HTTPS_PROXY or $ALL_PROXY)"


def _proxy_password_source(password_file: Path | None) -> str:
    return PROXY_PASSWORD.file_option if password_file else f"${PROXY_PASSWORD.env}"


def proxy_setting(proxy: str | None, password_file: Path | None) -> str | None:
    """--proxy completed with the password from --proxy-password-file or $INLETS_PROXY_PASSWORD (TokenError,
    ProxyConfigError when they do not fit): the clients' and ``inlets status``'s."""
    return with_password(proxy, PROXY_PASSWORD.read(None, password_file), _proxy_password_source(password_file))


def proxy_password_from(password_file: Path | None) -> str | None:
    """Where the --proxy password was read (flag and path, or the variable), for the line a proxy's 407 or 401
    leaves; None when there is none to add (it is in the proxy URL, or no password is needed)."""
    if password_file is not None:
        return f"{PROXY_PASSWORD.file_option} {password_file}"
    return f"${PROXY_PASSWORD.env}" if PROXY_PASSWORD.read(None, None) is not None else None


def check_secrets(flags: SimpleNamespace, secrets: tuple[SecretOption, ...] = (TOKEN,)) -> None:
    """Each secret given once, and a proxy password (its file or $INLETS_PROXY_PASSWORD) only with a --proxy that
    can take it, checked as written: no file read. In ``check``, so ``--generate`` (which kept one value of a
    secret given twice and dropped the other) refuses in the client's words; ``secrets`` in the order ``run`` reads them."""
    check_given_once(flags, secrets)
    try:
        if flags.proxy_password_file is None and PROXY_PASSWORD.read(None, None) is None:  # no password to add
            return
        check_password_fits(flags.proxy, _proxy_password_source(flags.proxy_password_file))
    except (TokenError, ProxyConfigError) as exc:  # the variable set but blank, or not UTF-8
        fail(str(exc))


def check_servers(flags: SimpleNamespace) -> None:
    """--url, --token-file's count, --tls-*, checked as written: no file read. Here, not in ``client_config``,
    because ``--generate`` runs it too: a unit it wrote for flags the client refuses failed at every start."""
    files = flags.token_file or []
    if len(files) > 1 and len(files) != len(flags.url):
        fail(f"--token-file given {len(files)} times for {len(flags.url)} --url: give one for every server, "
             "or one per --url in the same order")
    if len(set(flags.url)) != len(flags.url):
        fail("the same --url is given twice: each server once")
    for url in flags.url:
        if not url.startswith(("ws://", "wss://")):
            fail(f"--url must start with wss:// (or ws:// behind a TLS proxy), got {url!r}")
    try:
        for url in flags.url:
            connect_url(url)
        if flags.tls_server_name is not None:
            check_host(flags.tls_server_name, "--tls-server-name")
    except (FatalClientError, HostError) as exc:
        fail(str(exc))
    refuse_blank(flags.proxy, "--proxy", PROXY_INSTEAD)
    check_proxy(flags.proxy, flags.proxy_password_file)
    if flags.tls_ca is not None and flags.tls_insecure:
        fail("give --tls-ca or --tls-insecure, not both: --tls-insecure would ignore the CA")
    if not any(url.startswith("wss://") for url in flags.url):  # ignored over ws://: the user believed it pinned
        for flag, value in (("--tls-ca", flags.tls_ca), ("--tls-server-name", flags.tls_server_name)):
            if value is not None:
                fail(f"{flag} checks a wss:// server's certificate, and every --url is ws:// (no TLS): "
                     "give the server's wss:// URL, or leave the flag out")


def check_proxy(proxy: str | None, password_file: Path | None) -> None:
    """--proxy's own form (scheme, host, port), completed as the run completes it with the password of its file or
    $INLETS_PROXY_PASSWORD, which is not read: only ``client_config`` checked it, so --generate wrote a unit that
    failed at every start. The environment's *_PROXY is left to the run: where the unit runs it may differ."""
    if proxy is None or proxy.strip().lower() in DIRECT:
        return
    try:
        if password_file is not None or PROXY_PASSWORD.read(None, None) is not None:
            proxy = with_password(proxy, "password", _proxy_password_source(password_file))
        normalize(proxy, "--proxy")  # ``choose_proxy``'s check of a --proxy
    except (TokenError, ProxyConfigError) as exc:
        fail(str(exc))


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
        if token_file is not None:
            warn_if_others_can_read(token_file)
        password_from = proxy_password_from(proxy_password_file)
        proxy = proxy_setting(proxy, proxy_password_file)
    except (TokenError, ProxyConfigError) as exc:
        fail(str(exc))
    try:  # a bad --proxy or *_PROXY variable: one line now rather than at every retry (``check_servers`` did --url)
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
        tls_ca=tls_ca if ssl_context is not None and not tls_insecure else None,
        server_name=tls_server_name,
        keepalive=keepalive,
        proxy=proxy,
        proxy_password_from=password_from,
        drain_timeout=drain_timeout,
        max_streams=max_streams,
        max_buffer=max_buffer_mib * 1024 * 1024,
    )


def client_configs(*, urls: list[str], token: str | None, token_files: list[Path] | None, **options: Any) -> list[ClientConfig]:
    """One ClientConfig per ``--url`` (``check_servers`` passed them); ``--token-file`` once for all servers or once
    per server, in order."""
    files: list[Path | None] = list(token_files or [None])
    if len(files) == 1:
        files *= len(urls)
    configs = [client_config(url=url, token=token, token_file=file, **options) for url, file in zip(urls, files)]
    if options.get("tls_insecure"):
        warn_unverified([config.url for config in configs if config.ssl_context is not None])
    warn_plaintext([url for url in urls if url.startswith("ws://") and not is_loopback(split_url(url).hostname)])
    return configs


def warn_plaintext(urls: list[str]) -> None:
    """Say once, at start, which servers get the token in clear: a ws:// --url to another host sent it, and every
    tunnelled byte, unencrypted, without a word (the server warns of its --plaintext reachable from off the machine)."""
    if urls:
        log.warning("event=plaintext_url urls=%s reason=%s", logfmt(",".join(urls)),
                    logfmt("ws:// sends the token and every tunnelled byte unencrypted to a host off this machine, "
                           "where whoever is on the way can read them: use the server's wss:// URL (its --auto-tls, "
                           "or a TLS-terminating proxy in front of it)"))


def warn_unverified(urls: list[str]) -> None:
    """Say once, at start, which servers ``--tls-insecure`` leaves unverified: it was silent, so a client left
    running with it (from a test, say) gave no sign that anyone on the way could read its tunnel and the token."""
    if urls:
        log.warning("event=server_tls_unverified urls=%s reason=%s", logfmt(",".join(urls)),
                    logfmt("--tls-insecure: the server's certificate is not checked, so whoever is on the way to it "
                           "can read and change the tunnel's traffic and take the token; give --tls-ca FILE instead "
                           "(the CA that signed the server's certificate)"))


def tunnel_client(configs: list[ClientConfig], on_stream: Callable[[Channel], None]) -> TunnelClient | ClientGroup:
    """The client for one server, or a group of them connected to every --url."""
    if len(configs) == 1:
        return TunnelClient(configs[0], on_stream)
    return ClientGroup(configs, on_stream)
