"""What ``inlets http server`` does once typer has parsed its flags (cli/handoff.py: no typer here)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from ... import __version__
from ...core.auth import TOKEN
from ...core.heap import freeze_startup_objects
from ...core.hosts import authority
from ...core.logs import logfmt
from ...http.server import HttpTunnelServer
from ...server.admission import PUBLIC_MAX_PER_SOURCE, PUBLIC_MAX_TOTAL
from ...server.dataplane import DataPlaneOptions
from ..config import check_given_once, check_logs, default_data_dir, fail, refuse_blank, setup_logs
from ..lifecycle import run_server
from ..server_config import (ControlSources, check_bind_addresses, check_control, check_distinct_ports, control_config,
                             daily_certificate_check, data_plane_options, handshake_caps, per_source_caps, tls_reloader,
                             warn_if_plaintext_reachable)

log = logging.getLogger("inlets")


def check_lets_encrypt(flags: SimpleNamespace) -> None:
    """The ``--letsencrypt-*`` flags as written, no file read (``--generate`` too): one line when they can never work."""
    if not flags.letsencrypt_domain:
        if (flags.letsencrypt_email or flags.letsencrypt_issuer != "prod" or flags.letsencrypt_path
                or flags.letsencrypt_ca or flags.https_port != 443 or flags.max_https_handshakes != PUBLIC_MAX_TOTAL
                or flags.max_https_handshakes_per_source is not None):
            fail("--letsencrypt-email/-issuer/-path/-ca, --https-port and --max-https-handshakes(-per-source) need "
                 "--letsencrypt-domain")
        return
    refuse_blank(flags.letsencrypt_email, "--letsencrypt-email", "give an address for the CA's expiry notices (leave "
                 "the flag out to register without one)")
    if flags.letsencrypt_path is not None and str(flags.letsencrypt_path) in ("", "."):  # as --auto-tls-path
        fail("--letsencrypt-path is empty (the current directory): give a directory of its own for the account and "
             "certificate keys, e.g. ~/.local/share/inlets/letsencrypt")
    if flags.lb_proxy_protocol:
        fail("--lb-proxy-protocol cannot be combined with --letsencrypt-domain (the balancer would have to pass TLS through)")
    try:
        from ...acme.store import AcmeConfigError, check_domain, check_email, directory_url
    except ImportError as exc:
        fail(f"this installation has no Let's Encrypt support ({exc})")
    try:
        for domain in flags.letsencrypt_domain:
            check_domain(domain)
        directory_url(flags.letsencrypt_issuer)
        check_email(flags.letsencrypt_email)
    except AcmeConfigError as exc:
        fail(str(exc))
    https_caps(flags)


def pending_caps(flags: SimpleNamespace) -> tuple[int, int]:
    """--port's caps on connections with no request head yet, --max-pending-connections(-per-source)."""
    return per_source_caps(flags, "max_pending_connections", PUBLIC_MAX_PER_SOURCE)


def https_caps(flags: SimpleNamespace) -> tuple[int, int]:
    """--https-port's caps, --max-https-handshakes(-per-source)."""
    return per_source_caps(flags, "max_https_handshakes", PUBLIC_MAX_PER_SOURCE)


def lets_encrypt_front(domains: list[str] | None, email: str | None, issuer: str, path: Path | None,
                       ca: Path | None, https_port: int, max_handshakes: int = PUBLIC_MAX_TOTAL,
                       max_handshakes_per_source: int = PUBLIC_MAX_PER_SOURCE,
                       plain_caps: tuple[int, int] = (PUBLIC_MAX_TOTAL, PUBLIC_MAX_PER_SOURCE)):  # -> HttpsFront | None
    """The HTTPS front for ``--letsencrypt-*`` (checked by ``check_lets_encrypt``), or None without a domain."""
    if not domains:
        return None
    try:
        from ...acme.store import AcmeConfigError
        from ...acme.https_front import HttpsFront
        from ...acme.letsencrypt import configure
    except ImportError as exc:
        fail(f"this installation has no Let's Encrypt support ({exc})")

    try:
        manager = configure(domains, path or default_data_dir() / "letsencrypt", issuer=issuer, email=email,
                            ca_bundle=ca)
    except AcmeConfigError as exc:
        fail(str(exc))
    return HttpsFront(manager, https_port, max_handshakes, max_handshakes_per_source, plain_caps=plain_caps)


def check(flags: SimpleNamespace) -> tuple[DataPlaneOptions, ControlSources]:
    """What the flags say, checked without reading a file or resolving a name (``--generate`` runs this too):
    (data-plane options, the control port's address lists)."""
    check_logs(flags.log_level, flags.log_format)
    dataplane = data_plane_options(allow_ips=flags.allow_ips, proxy_protocol=None, lb_proxy_protocol=flags.lb_proxy_protocol)
    check_lets_encrypt(flags)
    pending_caps(flags)
    sources = check_control(flags)
    https = bool(flags.letsencrypt_domain)
    port = flags.port or (80 if https else 8000)
    listeners = [("--control-port", flags.control_addr, {flags.control_port}),
                 ("--port" if flags.port else f"--port (default {port})", flags.data_addr, {port})]
    if https:
        listeners.append(("--https-port", flags.data_addr, {flags.https_port}))
    check_distinct_ports(listeners)
    check_given_once(flags, (TOKEN,))
    return dataplane, sources


def run(flags: SimpleNamespace) -> None:
    """Run an HTTP tunnel server with the flags of ``inlets http server``."""
    dataplane, sources = check(flags)
    setup_logs(flags.log_level, flags.log_format)
    check_bind_addresses(flags.control_addr, flags.data_addr)
    handshakes = handshake_caps(flags)
    config = control_config(
        control_addr=flags.control_addr, control_port=flags.control_port, token=flags.token, token_file=flags.token_file,
        tls_cert=flags.tls_cert, tls_key=flags.tls_key, auto_tls=flags.auto_tls, auto_tls_path=flags.auto_tls_path,
        auto_tls_san=flags.auto_tls_san, keepalive=flags.keepalive, max_client_streams=flags.max_client_streams,
        max_client_buffer_mib=flags.max_client_buffer,
        trusted_proxies=sources.trusted_proxies, login_limit_exempt=sources.login_limit_exempt,
        max_handshakes=handshakes[0], max_handshakes_per_source=handshakes[1],
    )
    pending = pending_caps(flags)
    https = lets_encrypt_front(flags.letsencrypt_domain, flags.letsencrypt_email, flags.letsencrypt_issuer, flags.letsencrypt_path,
                               flags.letsencrypt_ca, flags.https_port, *https_caps(flags), pending)
    port = flags.port or (80 if https else 8000)
    server = HttpTunnelServer(config, port=port, data_addr=flags.data_addr or None, upstream_timeout=flags.upstream_timeout,
                             idle_timeout=flags.idle_timeout, header_timeout=flags.header_timeout, https=https,
                             dataplane=dataplane, pending=pending)
    data = authority(flags.data_addr or "*", port) + (f" and :{flags.https_port}" if https else "")

    def started() -> None:
        freeze_startup_objects()
        scheme = "wss" if config.ssl_context else "ws"
        log.info("event=started mode=http control=%s data=%s version=%s",
                 logfmt(f"{scheme}://{authority(flags.control_addr or '*', flags.control_port)}"),
                 logfmt(f"http://{authority(flags.data_addr or '*', port)}"), __version__)
        if not config.ssl_context:
            warn_if_plaintext_reachable(flags.control_addr)
        if https:
            log.info("event=https data=%s domains=%s",
                     logfmt(f"https://{authority(flags.data_addr or '*', flags.https_port)}"),
                     logfmt(",".join(https.letsencrypt.domains)))

    run_server(server, describe=f"control {authority(flags.control_addr or '*', flags.control_port)}, data {data}",
               drain_timeout=flags.drain_timeout, token=flags.token, token_file=flags.token_file, started=started,
               reload_tls=tls_reloader(config, flags.tls_cert, flags.tls_key), daily=daily_certificate_check(config))
