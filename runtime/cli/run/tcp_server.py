"""What ``inlets tcp server`` does once typer has parsed its flags (cli/handoff.py: no typer here)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from ... import __version__
from ...core.allowlist import parse_target_rules
from ...core.auth import TOKEN
from ...core.hosts import authority
from ...core.logs import logfmt
from ...core.ports import parse_port_list
from ...server.dataplane import DataPlaneOptions
from ...server.forwarding import ForwardingPolicy
from ...server.tcp import TcpTunnelServer
from ..config import check_given_once, check_logs, fail, refuse_blank, setup_logs
from ..lifecycle import run_server
from ..server_config import (ControlSources, check_bind_addresses, check_control, check_distinct_ports, control_config,
                             daily_certificate_check, data_plane_options, handshake_caps, tls_reloader,
                             warn_if_plaintext_reachable)

log = logging.getLogger("inlets")

def parse_allow_ports(text: str | None) -> set[int] | None:
    """--allow-ports as a set; None only when the flag is left out. An empty value (``--allow-ports "$PORTS"`` with
    $PORTS unset) is refused: taken as absent, it let clients open every port."""
    refuse_blank(text, "--allow-ports", "give the ports clients may open, e.g. 80,443 (leave the flag out to allow every port)")
    if text is None:
        return None
    try:
        allowed = set(parse_port_list(text))
    except ValueError as exc:
        fail(f"--allow-ports must be a comma-separated list of ports: {exc}")
    if not allowed:
        fail(f"--allow-ports must be a comma-separated list of ports, got {text!r}")
    return allowed


def check(flags: SimpleNamespace) -> tuple[set[int] | None, DataPlaneOptions, ForwardingPolicy | None, ControlSources]:
    """What the flags say, checked without reading a file or resolving a name (``--generate`` runs this too):
    (allowed ports, data-plane options, client forwarding, the control port's address lists)."""
    check_logs(flags.log_level, flags.log_format)
    allowed = parse_allow_ports(flags.allow_ports)
    if allowed:  # a data port clients could never open
        check_distinct_ports([("--control-port", flags.control_addr, {flags.control_port}),
                              ("--allow-ports", flags.data_addr, allowed)])
    options = data_plane_options(allow_ips=flags.allow_ips, proxy_protocol=flags.proxy_protocol,
                                 lb_proxy_protocol=flags.lb_proxy_protocol)
    if flags.client_forwarding_allow and not flags.client_forwarding:
        fail("--client-forwarding-allow needs --client-forwarding")
    if flags.client_forwarding and not flags.client_forwarding_allow:
        fail("--client-forwarding needs --client-forwarding-allow HOST:PORT[,...]: say what clients may reach")
    forwarding = None
    if flags.client_forwarding:
        try:
            forwarding = ForwardingPolicy(True, parse_target_rules(flags.client_forwarding_allow or ""))
        except ValueError as exc:
            fail(str(exc))
    sources = check_control(flags)
    check_given_once(flags, (TOKEN,))
    return allowed, options, forwarding, sources


def run(flags: SimpleNamespace) -> None:
    """Run a TCP tunnel server with the flags of ``inlets tcp server``."""
    allowed, options, forwarding, sources = check(flags)
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
    if forwarding is not None:
        config.forwarding = forwarding
    server = TcpTunnelServer(config, data_addr=flags.data_addr or None, allow_ports=allowed, options=options)
    scheme = "wss" if config.ssl_context else "ws"

    def started() -> None:  # the ready line, as the HTTP server logs it: the control port accepts from now on
        log.info("event=started mode=tcp control=%s data_addr=%s version=%s",
                 logfmt(f"{scheme}://{authority(flags.control_addr or '*', flags.control_port)}"),
                 logfmt(flags.data_addr or "*"), __version__)
        if not config.ssl_context:
            warn_if_plaintext_reachable(flags.control_addr)

    run_server(server, describe=f"control {authority(flags.control_addr or '*', flags.control_port)}", drain_timeout=flags.drain_timeout,
               token=flags.token, token_file=flags.token_file, started=started,
               reload_tls=tls_reloader(config, flags.tls_cert, flags.tls_key), daily=daily_certificate_check(config))
