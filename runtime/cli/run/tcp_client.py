"""What ``inlets tcp client`` does once typer has parsed its flags (cli/handoff.py: no typer here)."""

from __future__ import annotations

from types import SimpleNamespace

from ...client.local_forward import LocalForwarder, parse_local_forward
from ...core.hosts import HostError, check_bind_address, check_host
from ...client.tcp_upstreams import TcpUpstreams, UpstreamError, parse_upstreams
from ..client_config import check_secrets, check_servers, client_configs, tunnel_client
from ..config import check_logs, fail, setup_logs
from ..lifecycle import run_client


def check(flags: SimpleNamespace) -> tuple[list, dict]:
    """What the flags say, checked without reading a file (``--generate`` runs this too): (forwards, upstreams)."""
    check_logs(flags.log_level, flags.log_format)
    try:
        forwards = [parse_local_forward(item) for item in flags.local or []]
        if forwards:  # "" (an unset variable) would listen on every interface; a bad one got "Unknown error -2"
            check_host(flags.local_addr, "--local-addr")
        ports = [forward.local_port for forward in forwards]
        twice = sorted({port for port in ports if ports.count(port) > 1})
        if twice:  # the second listen failed, blaming "another program"
            raise ValueError(f"--local: LOCAL_PORT {','.join(map(str, twice))} given more than once: one port per --local")
    except ValueError as exc:  # HostError too
        fail(str(exc))
    try:
        wanted = flags.upstream or flags.ports or flags.udp_ports or not forwards
        mapping = parse_upstreams(flags.upstream or [], flags.ports or [], flags.udp_ports or []) if wanted else {}
    except UpstreamError as exc:
        fail(str(exc))
    check_servers(flags)
    check_secrets(flags)
    return forwards, mapping


def run(flags: SimpleNamespace) -> None:
    """Run a TCP tunnel client with the flags of ``inlets tcp client``."""
    forwards, mapping = check(flags)
    setup_logs(flags.log_level, flags.log_format)
    if forwards:
        try:
            check_bind_address(flags.local_addr, "--local-addr")
        except HostError as exc:
            fail(str(exc))
    upstreams = TcpUpstreams(mapping, max_udp_flows=max(1, flags.max_streams // 2))  # the rest stay for TCP
    configs = client_configs(
        urls=flags.url, token=flags.token, token_files=flags.token_file, tls_ca=flags.tls_ca, tls_server_name=flags.tls_server_name,
        tls_insecure=flags.tls_insecure, keepalive=flags.keepalive, mode="tcp", services=upstreams.services, proxy=flags.proxy,
        proxy_password_file=flags.proxy_password_file, drain_timeout=flags.drain_timeout, max_streams=flags.max_streams,
        max_buffer_mib=flags.max_buffer,
    )
    forwarder = LocalForwarder(forwards, flags.local_addr, lambda: client.session, max_waiting=flags.max_streams,
                               wake=lambda: client.reconnect_now())
    for config in configs:
        if forwards:
            config.extra["forwards"] = forwarder.targets
    client = tunnel_client(configs, upstreams.on_stream)

    async def start() -> None:
        try:
            await forwarder.start()
        except OSError as exc:  # ForwardListenError: which port, why, what to do
            fail(exc.strerror or f"cannot listen on {flags.local_addr} for --local", 1)

    run_client(client, start, forwarder.stop)
