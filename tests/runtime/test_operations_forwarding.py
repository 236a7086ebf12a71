"""Local forwarding (-L): a database on the server's loopback reached through the tunnel, waiting and draining
local connections, and the server's consent to each forward target. Real processes and redis where it exists."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers.proxy_daemons import Daemon, _spawn, binary
from helpers.process import client_args, echo_once, inlets, server_args, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import (
    TlsFiles, control_url, echo_server, free_port, port_of, run, serve, start_client, start_server, stop,
)

from inlets_py.runtime.core.mux import ResetCode
from inlets_py.runtime.client.tcp_upstreams import Upstream


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
