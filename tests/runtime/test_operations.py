"""Operating a tunnel: local forwarding, status, allow-lists, PROXY protocol, generated
service definitions, token rotation and graceful drain. Real processes where the
feature is a command-line one; real nginx, redis and systemd-analyze where they exist."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers.proxy_daemons import Daemon, _spawn, binary
from helpers.process import (
    INLETS, ROOT, client_args, echo_once, inlets, server_args, spawn, stop_all, wait_for_text, wait_port,
)
from helpers.service_python import unit_inlets
from helpers.tunnel import (
    TlsFiles, control_url, echo_server, free_port, metric, port_of, run, serve, start_client, start_server, stop,
    wait_listening,
)

from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
from inlets_py.runtime.server.dataplane import DataPlaneOptions
from inlets_py.runtime.core.mux import ResetCode
from inlets_py.runtime.core.channel import OUT_HIGH_WATER
from inlets_py.runtime.server.proxy_protocol import encode
from inlets_py.runtime.client.tcp_upstreams import Upstream


# ---------------------------------------------------------------- local forwarding


@pytest.fixture
def redis(tmp_path: Path):
    exe = binary("redis-server")
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path), "--protected-mode", "yes"]
    daemon = _spawn("redis", argv, tmp_path, port, "127.0.0.1")
    yield daemon
    daemon.stop()


def test_local_forwarding_reaches_a_database_on_the_servers_loopback(
    tmp_path: Path, tls: TlsFiles, token_file: Path, redis: Daemon
) -> None:
    cli = binary("redis-cli")
    control, local = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file, "--client-forwarding",
                                "--client-forwarding-allow", f"127.0.0.1:{redis.port}"), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--local", f"{local}:127.0.0.1:{redis.port}"),
                   log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
        run_cli = lambda *a: subprocess.run([cli, "-h", "127.0.0.1", "-p", str(local), *a],  # noqa: E731
                                            capture_output=True, text=True, timeout=10)
        assert run_cli("SET", "tunnelled", "yes").stdout.strip() == "OK"
        assert run_cli("GET", "tunnelled").stdout.strip() == "yes"
        # it really went to redis on the server's side
        direct = subprocess.run([cli, "-p", str(redis.port), "GET", "tunnelled"], capture_output=True, text=True, timeout=10)
        assert direct.stdout.strip() == "yes"
    finally:
        assert stop_all(client, server) == [0, 0]


def test_a_draining_client_refuses_new_local_connections(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """SIGTERM with a --local connection open: the client drains it (up to --drain-timeout), and its --local
    listeners went on accepting new connections only to reset each (event=forward_refused, a line apiece).
    They now close at SIGTERM: a new user is refused, as by the server's data ports while it drains."""
    control, local = free_port(), free_port()
    echo = socket.create_server(("127.0.0.1", 0))
    server = spawn(*server_args(control, tls, token_file, "--client-forwarding", "--client-forwarding-allow",
                                f"127.0.0.1:{echo.getsockname()[1]}"), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--local", f"{local}:127.0.0.1:{echo.getsockname()[1]}"),
                   log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
        held = socket.create_connection(("127.0.0.1", local), timeout=5)
        echo.settimeout(5)
        upstream, _ = echo.accept()  # the stream is open through the tunnel
        client.send_signal(signal.SIGTERM)
        wait_for_text(tmp_path / "client.log", "event=draining")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", local), timeout=5).recv(1)
        held.close()
        upstream.close()
        assert client.wait(15) == 0
    finally:
        stop_all(client, server)
        echo.close()
    assert "event=forward_refused" not in (tmp_path / "client.log").read_text()


def test_a_local_connection_made_before_the_tunnel_is_up_waits_for_it(tmp_path: Path, tls: TlsFiles,
                                                                      token_file: Path, echo_port: int) -> None:
    """The --local port listens before the tunnel connects (and stays open while it reconnects): a user who
    connected then, such as a service started with the client that waited for the port, was reset at once
    (event=forward_unavailable, at info) though the tunnel came up a moment later. It now waits for the tunnel."""
    control, local = free_port(), free_port()
    client = spawn(*client_args(control, tls, token_file, "--local", f"{local}:127.0.0.1:{echo_port}"),
                   log=tmp_path / "client.log")
    server = None
    try:
        wait_for_text(tmp_path / "client.log", "event=forwarding")
        with socket.create_connection(("127.0.0.1", local), timeout=10) as user:
            user.sendall(b"early")
            user.shutdown(socket.SHUT_WR)  # a half-close while it waits is passed on too
            server = spawn(*server_args(control, tls, token_file, "--client-forwarding", "--client-forwarding-allow",
                                        f"127.0.0.1:{echo_port}"), log=tmp_path / "server.log")
            assert user.recv(16) == b"early"
            assert user.recv(16) == b""
    finally:
        stop_all(client, *([server] if server else []))
    assert "event=forward_unavailable" not in (tmp_path / "client.log").read_text()


def test_local_connections_waiting_for_the_tunnel_are_bounded_by_max_streams(tmp_path: Path, tls: TlsFiles,
                                                                           token_file: Path, echo_port: int) -> None:
    """While the tunnel was down every local connection waited, each with a descriptor and a 50 ms timer of its
    own: 5,000 held 5,000 descriptors and 29% of a core, and all but the first --max-streams were reset anyway once
    it was back. Now at most --max-streams wait; the rest are reset at once, said in one line."""
    control, local = free_port(), free_port()
    client = spawn(*client_args(control, tls, token_file, "--max-streams", "4", "--local",
                                f"{local}:127.0.0.1:{echo_port}"), log=tmp_path / "client.log")
    server = None
    users: list[socket.socket] = []
    try:
        wait_for_text(tmp_path / "client.log", "event=forwarding")
        for n in range(4):
            user = socket.create_connection(("127.0.0.1", local), timeout=5)
            users.append(user)
            user.sendall(b"user%d" % n)
            user.shutdown(socket.SHUT_WR)
        for n in range(4, 10):  # before: they waited too, until TUNNEL_WAIT (the recv timed out)
            # The reset can come before connect() has looked at its socket, so it may be connect() that sees it.
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                user = socket.create_connection(("127.0.0.1", local), timeout=5)
                users.append(user)
                user.sendall(b"user%d" % n)
                user.recv(16)
        server = spawn(*server_args(control, tls, token_file, "--client-forwarding", "--client-forwarding-allow",
                                    f"127.0.0.1:{echo_port}"), log=tmp_path / "server.log")
        wait_for_text(tmp_path / "server.log", "event=started")
        client.send_signal(signal.SIGHUP)  # connect now, not at the end of the backoff
        for n, user in enumerate(users[:4]):
            assert user.recv(16) == b"user%d" % n
            assert user.recv(16) == b""
    finally:
        for user in users:
            user.close()
        stop_all(client, *([server] if server else []))
    log = (tmp_path / "client.log").read_text()
    assert log.count("reason=too_many_waiting") == 1, log
    assert "reason=tunnel_down" not in log


def test_a_local_connection_the_tunnel_never_comes_for_is_reset_and_said(monkeypatch, caplog) -> None:
    """Waiting for the tunnel is bounded: then the user is reset, and the client says why in one warning."""
    from inlets_py.runtime.client import local_forward

    monkeypatch.setattr(local_forward, "TUNNEL_WAIT", 0.3)
    port = free_port()

    async def scenario() -> None:
        forwarder = local_forward.LocalForwarder([local_forward.LocalForward(port, "127.0.0.1", 9)], "127.0.0.1",
                                                 lambda: None)
        await forwarder.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            started = time.monotonic()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            assert 0.25 < time.monotonic() - started < 3
            assert not forwarder.waiting  # nothing left behind for it
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.05)
            forwarder.stop()  # SIGTERM: those still waiting are reset, not left to the exit's FIN
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
        finally:
            forwarder.stop()

    with caplog.at_level(logging.INFO, logger="inlets.forward"):
        run(scenario())
    said = [r.getMessage() for r in caplog.records if "forward_unavailable" in r.getMessage()]
    assert said == [f"event=forward_unavailable local_port={port} reason=tunnel_down waited=0.3s users=1"], said


def test_forwarding_needs_the_servers_consent(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "plain.log")
    try:
        wait_port(control)
        result = inlets(*client_args(control, tls, token_file, "--local", f"{free_port()}:127.0.0.1:5432"))
    finally:
        stop_all(server)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (  # and what to do: the server's flags that offer it
        "inlets: error: the server refused this client: this server does not offer client forwarding: start it with "
        "--client-forwarding --client-forwarding-allow HOST:PORT"), result.stderr

    control = free_port()
    server = spawn(*server_args(control, tls, token_file, "--client-forwarding", "--client-forwarding-allow",
                                "127.0.0.1:6379"), log=tmp_path / "limited.log")
    try:
        wait_port(control)
        result = inlets(*client_args(control, tls, token_file, "--local", f"{free_port()}:127.0.0.1:22"))
        ipv6 = inlets(*client_args(control, tls, token_file, "--local", f"{free_port()}:[::1]:22"))
    finally:
        stop_all(server)
    assert result.returncode == 1
    assert "127.0.0.1:22 is not in the server's --client-forwarding-allow list" in result.stderr
    assert ipv6.returncode == 1 and "[::1]:22 is not in the server's" in ipv6.stderr, ipv6.stderr  # was "::1:22"


def test_an_allowed_address_in_another_spelling_is_allowed(tmp_path: Path, tls: TlsFiles, token_file: Path,
                                                          echo_port: int) -> None:
    """``--client-forwarding-allow 127.0.0.1:PORT`` refused ``--local N:[::ffff:127.0.0.1]:PORT``, though the README
    says an IPv4-mapped target matches as the IPv4 address it is: an address rule was compared as text, so the same
    address spelled otherwise (``0:0:0:0:0:0:0:1`` for ``::1``) was refused too. Another address still is."""
    from inlets_py.runtime.core.allowlist import parse_target_rules

    rules = parse_target_rules("127.0.0.1:80,[::1]:22")
    assert any(rule.matches("0:0:0:0:0:0:0:1", 22) for rule in rules)
    for host, port in (("127.0.0.2", 80), ("::ffff:127.0.0.2", 80), ("127.1", 80), ("localhost", 80), ("::2", 22),
                       ("::ffff:127.0.0.1", 22), ("fe80::1%lo", 22)):
        assert not any(rule.matches(host, port) for rule in rules), (host, port)
    control, local = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file, "--client-forwarding",
                                "--client-forwarding-allow", f"127.0.0.1:{echo_port}"), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--local", f"{local}:[::ffff:127.0.0.1]:{echo_port}"),
                   log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
        assert echo_once(local, b"mapped") == b"mapped"
    finally:
        assert stop_all(client, server) == [0, 0], (tmp_path / "client.log").read_text()


def test_server_checks_every_forward_stream_not_only_the_handshake(tls: TlsFiles, token: str) -> None:
    """A client that declared an allowed target but opens a stream to another one gets a reset,
    and nothing is dialled."""
    from inlets_py.runtime.core.allowlist import parse_target_rules
    from inlets_py.runtime.server.forwarding import ForwardingPolicy
    from inlets_py.runtime.core.services import format_target
    from helpers.streams import AsyncStream

    dialled: list[int] = []

    async def scenario() -> None:
        forbidden = await serve(lambda r, w: asyncio.sleep(0, dialled.append(1)))
        allowed = await echo_server()
        policy = ForwardingPolicy(True, parse_target_rules(f"127.0.0.1:{port_of(allowed)}"))
        server = await start_server(tls, token, forwarding=policy)
        client, task = await start_client(control_url(server), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          extra={"forwards": [format_target("127.0.0.1", port_of(allowed))]})
        stream = AsyncStream()
        stream.attach(client.session.open_stream(format_target("127.0.0.1", port_of(forbidden)), stream))
        with pytest.raises(ConnectionResetError, match="not in the server's --client-forwarding-allow list"):
            await asyncio.wait_for(stream.read(), 5)
        good = AsyncStream()
        good.attach(client.session.open_stream(format_target("127.0.0.1", port_of(allowed)), good))
        await good.write(b"ping")
        assert await asyncio.wait_for(good.read(), 5) == b"ping"
        assert dialled == []
        await stop(task)
        await server.stop()

    run(scenario())


def test_a_client_reaches_only_the_forward_targets_it_declared(tls: TlsFiles, token: str) -> None:
    """The allow-list bounds every client; the handshake what this one asked for (README: a client cannot ask
    for more than it declared). A stream to a target the list allows but the client never declared, or from a
    client that declared none, was dialled."""
    from inlets_py.runtime.core.allowlist import parse_target_rules
    from inlets_py.runtime.server.forwarding import ForwardingPolicy
    from inlets_py.runtime.core.services import format_target
    from helpers.streams import AsyncStream

    dialled: list[int] = []

    async def refused(client, port: int) -> None:
        stream = AsyncStream()
        stream.attach(client.session.open_stream(format_target("127.0.0.1", port), stream))
        with pytest.raises(ConnectionResetError, match="is not one of the --local targets this client connected with"):
            await asyncio.wait_for(stream.read(), 5)

    async def scenario() -> None:
        undeclared = await serve(lambda r, w: asyncio.sleep(0, dialled.append(1)))
        declared = await echo_server()
        server = await start_server(tls, token, forwarding=ForwardingPolicy(True, parse_target_rules("127.0.0.0/8:*")))
        client, task = await start_client(control_url(server), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          extra={"forwards": [format_target("127.0.0.1", port_of(declared))]})
        await refused(client, port_of(undeclared))
        good = AsyncStream()
        good.attach(client.session.open_stream(format_target("127.0.0.1", port_of(declared)), good))
        await good.write(b"ping")
        assert await asyncio.wait_for(good.read(), 5) == b"ping"
        plain, plain_task = await start_client(control_url(server), token, tls, {free_port(): Upstream("127.0.0.1", 9)})
        await refused(plain, port_of(declared))
        assert dialled == []
        await stop(task, plain_task)
        await server.stop()

    run(scenario())


def test_an_ipv6_forwarding_rule_does_not_let_a_client_reach_ipv4_hosts(tls: TlsFiles, token: str) -> None:
    """``--client-forwarding-allow '::/0:PORT'`` (any IPv6 host) let a client declare ``[::ffff:127.0.0.1]:PORT``,
    which the server dials as 127.0.0.1: an IPv4 host no rule allowed. An IPv4-mapped target now matches as the
    IPv4 address it is."""
    from inlets_py.runtime.core.allowlist import parse_target_rules
    from inlets_py.runtime.server.forwarding import ForwardingPolicy
    from inlets_py.runtime.core.services import format_target
    from inlets_py.runtime.client.dialer import FatalClientError

    dialled: list[int] = []

    async def scenario() -> None:
        bait = await serve(lambda r, w: asyncio.sleep(0, dialled.append(1)))
        port = port_of(bait)
        rules = parse_target_rules(f"::/0:{port}")
        server = await start_server(tls, token, forwarding=ForwardingPolicy(True, rules))
        try:
            with pytest.raises(FatalClientError, match="not in the server's --client-forwarding-allow list"):
                await start_client(control_url(server), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                   extra={"forwards": [format_target("::ffff:127.0.0.1", port)]})
        finally:
            await server.stop()
            bait.close()
        assert dialled == []
        assert any(rule.matches("::ffff:127.0.0.1", 5432) for rule in parse_target_rules("127.0.0.0/8:*"))

    run(scenario())


def test_client_never_dials_what_it_did_not_advertise(tls: TlsFiles, token: str) -> None:
    """A server (compromised, say) asking the client for another target gets a reset."""
    from helpers.streams import AsyncStream

    dialled: list[int] = []

    async def scenario() -> None:
        bait = await serve(lambda r, w: asyncio.sleep(0, dialled.append(1)))
        echo = await echo_server()
        server = await start_server(tls, token)
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
        session = next(iter(server.control.clients))
        for target in (f"tcp:{port_of(bait)}", f"forward:127.0.0.1:{port_of(bait)}", "tcp:0", "ssh:22"):
            stream = AsyncStream()
            stream.attach(session.open_stream(target, stream))
            with pytest.raises(ConnectionResetError, match="not served by this client"):
                await asyncio.wait_for(stream.read(), 5)
            assert stream._reset is not None and stream._reset[0] == ResetCode.NOT_ALLOWED
        assert dialled == []
        await stop(task)
        await server.stop()

    run(scenario())


# -------------------------------------------------------------------- status


def test_status_shows_clients_and_refuses_a_wrong_token(
    tmp_path: Path, tls: TlsFiles, token: str, token_file: Path, echo_port: int
) -> None:
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=tmp_path / "client.log")
    try:
        wait_port(public)
        assert echo_once(public, b"x" * 1000) == b"x" * 1000
        url = f"wss://127.0.0.1:{control}"
        table = inlets("status", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca))
        assert table.returncode == 0, table.stderr
        assert "inlets tcp server" in table.stdout and f"tcp:{public}" in table.stdout
        # not "IN"/"OUT", which /metrics' tcp_dataplane_bytes_total{direction} counts the other way round
        assert table.stdout.splitlines()[1].endswith("STREAMS  FROM CLIENT  TO CLIENT"), table.stdout
        doc = json.loads(inlets("status", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca),
                                "--json").stdout)
        (entry,) = doc["clients"]
        assert entry["services"] == [f"tcp:{public}"] and entry["bytes_in"] >= 1000 and entry["bytes_out"] >= 1000
        assert {"version", "mode", "started", "hostname"} <= set(doc)
        assert token not in json.dumps(doc)
        wrong = inlets("status", "--url", url, "--token", "nope", "--tls-ca", str(tls.ca))
        assert wrong.returncode == 1 and "refused the token (HTTP 401)" in wrong.stderr
    finally:
        stop_all(client, server)
    gone = inlets("status", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca", str(tls.ca))
    assert gone.returncode == 1 and "cannot reach 127.0.0.1" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_a_wrong_token_past_the_failed_login_limit_is_said_as_a_wrong_token(
    tmp_path: Path, tls: TlsFiles, token_file: Path
) -> None:
    """After 10 wrong tokens from an address the server answers 429, and only to wrong tokens: the client retried
    with "server rejected WebSocket connection: HTTP 429" alone until the minute was up, and status said "too many
    failed logins". Both now say the token was refused, and the client exits as for a 401."""
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    try:
        wait_port(control)
        url = f"wss://127.0.0.1:{control}"
        statuses = [inlets("status", "--url", url, "--token", "nope", "--tls-ca", str(tls.ca)) for _ in range(11)]
        assert "(HTTP 401)" in statuses[0].stderr
        limited = statuses[-1]
        assert limited.returncode == 1, limited.stderr
        assert "the server refused the token (HTTP 429: this address sent too many wrong tokens): check --token" \
            in limited.stderr, limited.stderr
        client = inlets("tcp", "client", "--url", url, "--token", "nope", "--tls-ca", str(tls.ca), "--upstream",
                        "127.0.0.1", "--ports", "80", timeout=30)
        assert client.returncode == 1 and "refused the token (HTTP 429: this address sent too many wrong tokens)" \
            in client.stderr.splitlines()[-1], client.stderr
        assert inlets("status", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca)).returncode == 0
    finally:
        stop_all(server)


# ---------------------------------------------------------------- --generate


def test_generated_systemd_units_verify(tmp_path: Path) -> None:
    analyze = binary("systemd-analyze")
    files = ["--tls-cert", "/etc/inlets/server.crt", "--tls-key", "/etc/inlets/server.key"]  # outside PrivateTmp's /tmp
    token_file = "/etc/inlets/server-token"
    units = {
        "inlets-tcp-server.service": unit_inlets("tcp", "server", "--control-port", "8123", *files, "--token-file",
                                                 token_file, "--allow-ports", "80,443", "--generate", "systemd"),
        "inlets-tcp-client.service": unit_inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token",
                                                 "secret-x", "--upstream", "127.0.0.1", "--ports", "80",
                                                 "--generate=systemd"),
    }
    for name, result in units.items():
        assert result.returncode == 0, result.stderr
        path = tmp_path / name
        path.write_text(result.stdout)
        check = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and check.stderr.strip() == "", check.stderr
        assert "Restart=always" in result.stdout and "NoNewPrivileges=true" in result.stdout
        assert "--generate" not in result.stdout
    client_unit = units["inlets-tcp-client.service"].stdout
    assert "secret-x" not in client_unit and "--token-file /etc/inlets/token" in client_unit
    assert "CapabilityBoundingSet=\n" in client_unit  # a client needs no capability
    assert f"--token-file {token_file}" in units["inlets-tcp-server.service"].stdout


def test_generated_kubernetes_yaml(tls: TlsFiles, token: str, token_file: Path) -> None:
    loopback = server_args(9123, tls, token_file, "--allow-ports", "2222", "--generate", "k8s_yaml")
    refused = inlets(*loopback)  # the Service reaches the pod's own address, never its loopback
    assert refused.returncode == 2 and "--control-addr 127.0.0.1 cannot be used with --generate=k8s_yaml" in refused.stderr
    pod = [arg for n, arg in enumerate(loopback) if arg not in ("--control-addr", "--data-addr")
           and loopback[n - 1] not in ("--control-addr", "--data-addr")]
    result = inlets(*pod)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    kinds = {doc["kind"]: doc for doc in docs}
    assert set(kinds) == {"Secret", "Deployment", "Service"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["tcp", "server"] and token not in " ".join(args)
    assert args[args.index("--token-file") + 1] == "/var/run/secrets/inlets/token"
    assert args[args.index("--tls-key") + 1] == "/var/run/secrets/inlets/tls-key"
    import base64

    secret = kinds["Secret"]["data"]
    assert base64.b64decode(secret["token"]) == token_file.read_bytes()  # the token file, as it is
    assert base64.b64decode(secret["tls-key"]) == tls.key.read_bytes()
    assert {p["port"] for p in kinds["Service"]["spec"]["ports"]} == {9123, 2222}
    client = inlets("tcp", "client", "--url", "wss://h:8123", "--token-file", str(token_file),
                    "--upstream", "2222=db:22", "--generate", "k8s_yaml")
    assert {d["kind"] for d in yaml.safe_load_all(client.stdout)} == {"Secret", "Deployment"}


# ---------------------------------------------------------- allow-lists, PROXY


def test_allow_ips_refuses_other_sources_at_accept_and_counts_them(tls: TlsFiles, token: str) -> None:
    async def attempt(port: int, source: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(b"hi")
        writer.write_eof()
        try:
            return await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async def scenario() -> None:
        echo = await echo_server()
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(allow_ips=SourceAllowList(parse_networks("127.0.0.2/32,2001:db8::/32")))
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
        await wait_listening("127.0.0.1", public)
        assert await attempt(public, "127.0.0.2") == b"hi"
        assert await attempt(public, "127.0.0.3") == b""
        assert metric(server, "tcp_dataplane_refused_total", port=str(public), reason="source_not_allowed") >= 1
        await stop(task)
        await server.stop()

    run(scenario())


NGINX_PROXY_PROTOCOL = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/b; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f;
    uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}
}}
"""


@pytest.fixture
def nginx_proxy_protocol(tmp_path: Path):
    exe = binary("nginx")
    port = free_port()
    directory = tmp_path / "nginx"
    directory.mkdir()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_PROXY_PROTOCOL.format(dir=directory, port=port))
    daemon = _spawn("nginx", [exe, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)],
                    directory, port, "127.0.0.1")
    yield port
    daemon.stop()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_tells_nginx_the_real_source(tls: TlsFiles, token: str, nginx_proxy_protocol: int, version: str) -> None:
    async def scenario() -> None:
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(proxy_protocol=version)
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", nginx_proxy_protocol)})
        await wait_listening("127.0.0.1", public)
        reader, writer = await asyncio.open_connection("127.0.0.1", public, local_addr=("127.0.0.7", 0))
        source_port = writer.get_extra_info("sockname")[1]
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response
        assert response.rstrip().endswith(f"127.0.0.7:{source_port}".encode()), response
        await stop(task)
        await server.stop()

    run(scenario())


def test_the_proxy_header_reaches_the_upstream_first_even_when_the_tunnel_is_full(
    tmp_path: Path, tls: TlsFiles, token: str, token_file: Path
) -> None:
    """With the client not reading (stopped, or a slow link), the server's queue to it passes its high-water
    mark; a user connecting then must still reach the upstream behind the server's PROXY header. It was
    dropped when it found the tunnel full, so the user's own first bytes, a PROXY header naming any source,
    were what the upstream took for the server's."""
    firsts: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        firsts.append(await reader.read(64))
        while await reader.read(65536):
            pass

    async def scenario() -> None:
        recorder = await serve(upstream)
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(proxy_protocol="v1")
        public = free_port()
        port = int(control_url(server).rsplit(":", 1)[1])
        client = spawn(*client_args(port, tls, token_file, "--upstream", f"{public}=127.0.0.1:{port_of(recorder)}"),
                       log=tmp_path / "client.log")
        writers = []
        try:
            await wait_listening("127.0.0.1", public)
            for _ in range(100):
                if firsts:
                    break
                await asyncio.sleep(0.05)
            firsts.clear()  # wait_listening's own connection
            client.send_signal(signal.SIGSTOP)
            (session,) = server.control.clients
            for _ in range(40):  # 40 streams' first credit: 10 MiB for a client that reads nothing
                _, writer = await asyncio.open_connection("127.0.0.1", public)
                writer.write(b"x" * 256 * 1024)
                writers.append(writer)
            for _ in range(100):
                if session.mux.buffered >= OUT_HIGH_WATER:
                    break
                await asyncio.sleep(0.05)
            assert session.mux.buffered >= OUT_HIGH_WATER
            _, writer = await asyncio.open_connection("127.0.0.1", public)
            writer.write(b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\nGET / HTTP/1.0\r\n\r\n")
            writers.append(writer)
            await asyncio.sleep(0.2)
            client.send_signal(signal.SIGCONT)
            for _ in range(200):
                if len(firsts) == len(writers):
                    break
                await asyncio.sleep(0.05)
            assert len(firsts) == len(writers)
            assert all(first.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") for first in firsts), firsts
        finally:
            client.send_signal(signal.SIGCONT)
            for writer in writers:
                writer.close()
            assert await asyncio.to_thread(stop_all, client) == [0]  # it drains through this loop's server
            await server.stop()

    run(scenario())


@pytest.mark.parametrize("lb_version", ["v1", "v2"])
def test_balancer_header_sets_the_source_for_allow_list_and_upstream(
    tls: TlsFiles, token: str, nginx_proxy_protocol: int, lb_version: str
) -> None:
    async def through_balancer(port: int, claimed: tuple[str, int]) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode(lb_version, claimed, ("192.0.2.1", port)))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async def scenario() -> None:
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(
            allow_ips=SourceAllowList(parse_networks("203.0.113.0/24")), proxy_protocol="v2", lb_proxy_protocol=lb_version
        )
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", nginx_proxy_protocol)})
        await wait_listening("127.0.0.1", public)
        answer = await through_balancer(public, ("203.0.113.9", 4242))
        assert answer.rstrip().endswith(b"203.0.113.9:4242"), answer
        assert await through_balancer(public, ("198.51.100.1", 4242)) == b""  # outside --allow-ips
        # no header at all: dropped, counted
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        writer.close()
        assert metric(server, "tcp_dataplane_refused_total", reason="bad_proxy_header") == 1
        await stop(task)
        await server.stop()

    run(scenario())


def test_stream_limits_refuse_data_plane_connections_and_count_them(tls: TlsFiles, token: str, echo_port: int) -> None:
    """Found by a review helper: the server's --max-client-streams bounded only the streams a client opened, so 30
    users got through a client limited to 10; and users a client refused at its own --max-streams were counted
    nowhere (no refused sample, no log line)."""

    async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        try:
            echoed = await asyncio.wait_for(reader.read(1), 5)
        except ConnectionResetError:
            echoed = b""
        return reader, writer, echoed

    async def scenario(server_limit: int, client_limit: int) -> None:
        server = await start_server(tls, token, max_streams=server_limit)
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", echo_port)},
                                          max_streams=client_limit)
        await wait_listening("127.0.0.1", public)
        held = [await connect(public) for _ in range(3)]
        try:
            assert [echoed for _, _, echoed in held] == [b"x", b"x", b"x"]
            refused = [await connect(public) for _ in range(2)]
            assert [echoed for _, _, echoed in refused] == [b"", b""]
            for _ in range(100):  # the client's refusal comes back as a reset: counted when it arrives
                if metric(server, "tcp_dataplane_refused_total", port=str(public), reason="client_stream_limit") == 2:
                    break
                await asyncio.sleep(0.02)
            assert metric(server, "tcp_dataplane_refused_total", port=str(public), reason="client_stream_limit") == 2
            for _, writer, _ in held + refused:
                writer.close()
            for _ in range(100):  # a slot is free once a held stream is gone
                if (await connect(public))[2] == b"x":
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("no connection got through after the held ones closed")
        finally:
            await stop(task)
            await server.stop()

    run(scenario(server_limit=3, client_limit=1024))  # the server's --max-client-streams
    run(scenario(server_limit=4096, client_limit=3))  # the client's --max-streams


# ------------------------------------------------ token rotation, drain, logs


class Traffic(threading.Thread):
    """Short connections through the tunnel, one after another, until stopped; counts failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                payload = f"n{self.ok}".encode()
                if echo_once(self.port, payload) != payload:
                    raise AssertionError("wrong echo")
                self.ok += 1
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))
            time.sleep(0.01)


def test_token_rotation_keeps_traffic_flowing(tmp_path: Path, tls: TlsFiles, echo_port: int) -> None:
    old, new = "old-token-" + "a" * 40, "new-token-" + "b" * 40
    server_tokens, client_token = tmp_path / "server-tokens", tmp_path / "client-token"
    server_tokens.write_text(old + "\n")
    client_token.write_text(old + "\n")
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, server_tokens), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, client_token, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=tmp_path / "client.log")
    traffic = Traffic(public)
    try:
        wait_port(public)
        traffic.start()
        time.sleep(0.5)
        server_tokens.write_text(old + "\n" + new + "\n")  # 1. the server accepts both
        server.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=tokens_reloaded count=2")
        client_token.write_text(new + "\n")  # 2. the client reconnects with the new one, then lets the old go
        client.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=peer_draining")
        time.sleep(0.5)
        server_tokens.write_text(new + "\n")  # 3. the old token is gone
        server.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=tokens_reloaded count=1")
        time.sleep(0.5)
        traffic.halt.set()
        traffic.join(10)
        status = inlets("status", "--url", f"wss://127.0.0.1:{control}", "--token", new, "--tls-ca", str(tls.ca), "--json")
        assert len(json.loads(status.stdout)["clients"]) == 1
    finally:
        traffic.halt.set()
        codes = stop_all(client, server)
    assert traffic.failures == [] and traffic.ok > 50, (traffic.ok, traffic.failures[:3])
    logs = (tmp_path / "server.log").read_text() + (tmp_path / "client.log").read_text()
    assert old not in logs and new not in logs
    assert codes == [0, 0]


def test_removing_the_old_token_lets_the_rotated_clients_old_connection_finish_and_cuts_the_others(
        tmp_path: Path, tls: TlsFiles, echo_port: int) -> None:
    """Step 3 of a rotation (the old token removed) closed every connection made with the old token, so a
    download still running on the connection the rotated client was draining was reset mid-way. Now that one
    finishes (within --drain-timeout), and a client that never rotated is cut at once, as before."""
    import hashlib
    import os

    old, new = "old-token-" + "c" * 40, "new-token-" + "d" * 40
    server_tokens, rotated_token, stale_token = tmp_path / "server-tokens", tmp_path / "rotated", tmp_path / "stale"
    server_tokens.write_text(old + "\n" + new + "\n")  # step 1 done: the server accepts both
    rotated_token.write_text(old + "\n")
    stale_token.write_text(old + "\n")
    body = os.urandom(8 * 1024 * 1024)
    listener = socket.create_server(("127.0.0.1", 0))

    def slow_download() -> None:  # one connection: 8 MiB over ~3 s, started when it says "go"
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if conn.recv(2) == b"go":
                    for i in range(16):
                        conn.sendall(body[i * len(body) // 16:(i + 1) * len(body) // 16])
                        time.sleep(0.2)

    threading.Thread(target=slow_download, daemon=True).start()
    control, public, other = free_port(), free_port(), free_port()
    server = spawn(*server_args(control, tls, server_tokens, "--drain-timeout", "20"), log=tmp_path / "server.log")
    rotated = spawn(*client_args(control, tls, rotated_token, "--upstream",
                                 f"{public}=127.0.0.1:{listener.getsockname()[1]}"), log=tmp_path / "rotated.log")
    stale = spawn(*client_args(control, tls, stale_token, "--upstream", f"{other}=127.0.0.1:{echo_port}"),
                  log=tmp_path / "stale.log")
    try:
        wait_port(public)
        wait_port(other)
        time.sleep(0.2)
        assert echo_once(other, b"before") == b"before"
        sock = socket.create_connection(("127.0.0.1", public), timeout=10)
        sock.sendall(b"go")
        first = sock.recv(1 << 16)
        rotated_token.write_text(new + "\n")  # step 2: the client reconnects with the new token, drains the old
        rotated.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=peer_draining")
        server_tokens.write_text(new + "\n")  # step 3 at once, the download still under way on the old connection
        server.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=tokens_reloaded count=1 clients_revoked=2")
        received = bytearray(first)
        while chunk := sock.recv(1 << 20):
            received += chunk
        sock.close()
        assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest(), (len(received), len(body))
        log = (tmp_path / "server.log").read_text()
        assert "then=drain" in log and "then=close" in log, log[-3000:]
        with pytest.raises(OSError):  # the client that kept the old token serves nothing now
            if echo_once(other, b"after") != b"after":
                raise ConnectionResetError("not echoed")
    finally:
        stop_all(rotated, stale, server)
        listener.close()


def test_sigterm_lets_open_streams_finish_then_exits(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """A download in progress completes after SIGTERM; new connections are refused meanwhile."""
    size = 8 * 1024 * 1024
    slow_started = threading.Event()

    def slow_upstream(listener: socket.socket) -> None:
        while True:  # every connection: probes close at once, the real one says "go"
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            if conn.recv(2) != b"go":
                return
            slow_started.set()
            for _ in range(16):  # 8 MiB over ~1.6 s
                conn.sendall(b"d" * (size // 16))
                time.sleep(0.1)

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=slow_upstream, args=(listener,), daemon=True).start()
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file, "--drain-timeout", "20"), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{listener.getsockname()[1]}"),
                   log=tmp_path / "client.log")
    try:
        wait_port(public)
        time.sleep(0.2)
        sock = socket.create_connection(("127.0.0.1", public), timeout=10)
        sock.sendall(b"go")
        assert slow_started.wait(10)
        server.send_signal(signal.SIGTERM)
        wait_for_text(tmp_path / "server.log", "event=draining")
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):  # the data port is closed while draining
            socket.create_connection(("127.0.0.1", public), timeout=2)
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        sock.close()
        assert received == size
        assert server.wait(20) == 0
    finally:
        stop_all(client, server)
        listener.close()


#: Reads JSON log lines on stdin as a pipeline does: one object each, or it fails; prints the objects as one list.
JSON_LINES_READER = ("import json, sys\n"
                     "records = [json.loads(line) for line in sys.stdin if line.strip()]\n"
                     "assert all(isinstance(r, dict) for r in records)\n"
                     "print(json.dumps(records))")


def test_json_logs_have_one_key_per_field(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """The fields stayed inside ``msg`` (``"msg": "event=started mode=tcp ..."``): ``jq 'select(.event=="x")'``
    found nothing. Each is a key of its own now, as a pipeline's JSON parser reads it; ``msg`` stays whole."""
    control, upstream_port, public = free_port(), free_port(), free_port()
    pipe_out, pipe_in = os.pipe()  # inlets ... 2>&1 | python -c READER
    reader = subprocess.Popen([sys.executable, "-c", JSON_LINES_READER], stdin=pipe_out, stdout=subprocess.PIPE,
                              text=True)
    server = subprocess.Popen([*INLETS, *server_args(control, tls, token_file, "--log-format", "json")],
                              stderr=pipe_in, stdout=subprocess.DEVNULL, cwd=ROOT)
    os.close(pipe_out), os.close(pipe_in)  # the server holds the only writer: the reader ends when it does
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{upstream_port}"), log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
    finally:
        stop_all(client, server)
    out, _ = reader.communicate(timeout=15)
    assert reader.returncode == 0, out
    records = json.loads(out)
    assert records and all({"time", "level", "logger", "event", "msg"} <= set(r) for r in records), records
    started = next(r for r in records if r["event"] == "started")
    assert started["mode"] == "tcp" and started["control"] == f"wss://127.0.0.1:{control}"
    assert started["msg"].startswith("event=started mode=tcp ")
    joined = next(r for r in records if r["event"] == "client_connected")
    assert re.fullmatch(r"[0-9a-f]{12}", joined["client"]) and joined["remote"].startswith("127.0.0.1:")
    assert joined["services"] == f"tcp:{public}" and joined["logger"].startswith("inlets")
    assert any(r["event"] == "draining" and r["timeout"] == "30.0s" for r in records)  # strings, as written
