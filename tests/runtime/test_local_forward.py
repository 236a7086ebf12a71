"""Local forwarding (--local): across a reconnect (in-process servers and clients on loopback, with real TLS), and\nwhat the client says when a stream limit refuses a user (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.process import client_args, inlets, one_line_error, server_args, spawn, stop_all, wait_for_text
from helpers.tunnel import TlsFiles, control_url, echo_server, free_port, polled, port_of, run, start_client, start_server, stop
from inlets_py.runtime.client import dialer, local_forward
from inlets_py.runtime.client.local_forward import LocalForward, LocalForwarder
from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.core.allowlist import parse_target_rules
from inlets_py.runtime.core.tls import server_context
from inlets_py.runtime.server.forwarding import ForwardingPolicy


def test_a_user_waiting_for_the_tunnel_has_the_client_connect_now(tls: TlsFiles, token: str, monkeypatch) -> None:
    """The server back while the client sat in its backoff (up to 30 s): a --local user who came then waited out
    its 10 s and was reset (event=forward_unavailable reason=tunnel_down), the client connecting only later. A
    waiting user now has the client connect at once. Here the backoff is 10-20 s, the wait 3 s."""
    monkeypatch.setattr(local_forward, "TUNNEL_WAIT", 3.0)

    async def scenario() -> None:
        echo = await echo_server()
        forward = LocalForward(free_port(), "127.0.0.1", port_of(echo))
        policy = ForwardingPolicy(True, parse_target_rules(f"127.0.0.1:{port_of(echo)}"))
        server = await start_server(tls, token, forwarding=policy)
        control = server.control.addresses[0][1]
        client, task = await start_client(control_url(server), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          extra={"forwards": [forward.target]}, backoff_initial=20.0, backoff_max=20.0)
        forwarder = LocalForwarder([forward], "127.0.0.1", lambda: client.session, wake=client.reconnect_now)
        await forwarder.start()
        try:
            await server.stop()
            assert await polled(lambda: not client.connected.is_set())
            server = await start_server(tls, token, port=control, forwarding=policy)  # back; the client waits 10-20 s
            reader, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)
            writer.write(b"after the outage")
            assert await asyncio.wait_for(reader.readexactly(16), 10) == b"after the outage"  # before: reset at 3 s
            writer.close()
        finally:
            forwarder.stop()
            await stop(task)
            await server.stop()
            echo.close()

    run(scenario(), 40)


def test_a_users_early_tries_leave_the_backoff_as_it_was_and_are_said_as_such(tls: TlsFiles, token: str, monkeypatch,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Found by a probe: with the server down, a waiting --local user woke the client each second, and each early
    try that failed doubled its backoff: at 30 s (its most) by the time the user was reset, the next try up to 30 s
    away, each line's ``retry_in=`` a wait the next wake cut short. An early try now leaves the backoff as it was,
    waits out the rest of its wait, and its line says who woke it. Jitter off: the waits are 2 s, then 4 s."""
    monkeypatch.setattr(local_forward, "TUNNEL_WAIT", 3.0)
    monkeypatch.setattr(dialer, "random", SimpleNamespace(uniform=lambda low, high: high))

    async def scenario() -> None:
        echo = await echo_server()
        forward = LocalForward(free_port(), "127.0.0.1", port_of(echo))
        policy = ForwardingPolicy(True, parse_target_rules(f"127.0.0.1:{port_of(echo)}"))
        control, server = free_port(), None  # nothing listens yet
        loop = asyncio.get_running_loop()
        began = loop.time()
        client, task = await start_client(f"wss://127.0.0.1:{control}", token, tls,
                                          {free_port(): Upstream("127.0.0.1", 9)}, wait=False,
                                          extra={"forwards": [forward.target]}, backoff_initial=2.0, backoff_max=60.0)
        forwarder = LocalForwarder([forward], "127.0.0.1", lambda: client.session, wake=client.reconnect_now)
        await forwarder.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)  # waits 3 s, then reset
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await asyncio.sleep(began + 4.0 - loop.time())  # tries at 0 s and 2 s (the next at 6 s), and 3 woken
            server = await start_server(tls, token, port=control, forwarding=policy)
            assert await polled(lambda: client.connected.is_set(), 4.0)  # before: at 18 s, the backoff at 32 s
        finally:
            forwarder.stop()
            await stop(task)
            if server is not None:
                await server.stop()
            echo.close()

    with caplog.at_level(logging.INFO, logger="inlets.client"):
        run(scenario(), 30)
    failed = [record for record in caplog.records if "event=connect_failed" in record.getMessage()]
    scheduled = [record.getMessage().rpartition(" ")[2] for record in failed if "woken_by" not in record.getMessage()]
    woken = [record for record in failed if "woken_by=local_connection" in record.getMessage()]
    assert scheduled == ["retry_in=2.0s", "retry_in=4.0s"], [record.getMessage() for record in failed]
    assert woken and all(getattr(record, "cause", None) for record in woken), woken  # once per RepeatLimit window


@contextlib.asynccontextmanager
async def _a_draining_server(tls: TlsFiles, token: str, backoff_initial: float, backoff_max: float,
                             drain_for: float) -> AsyncIterator[SimpleNamespace]:
    """A --local client whose server drains (SIGTERM: GOAWAY; a held stream keeps it up) with nothing yet to replace
    it. Yields the client, the forward's local port, the draining session and ``start_new()``, which brings up the
    replacement on the same control port."""
    echo = await echo_server()
    forward = LocalForward(free_port(), "127.0.0.1", port_of(echo))
    policy = ForwardingPolicy(True, parse_target_rules(f"127.0.0.1:{port_of(echo)}"))
    old = await start_server(tls, token, forwarding=policy)
    control, started = old.control.addresses[0][1], []
    client, task = await start_client(control_url(old), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                      extra={"forwards": [forward.target]}, backoff_initial=backoff_initial,
                                      backoff_max=backoff_max)
    forwarder = LocalForwarder([forward], "127.0.0.1", lambda: client.session, wake=client.reconnect_now)
    await forwarder.start()
    held_reader, held = await asyncio.open_connection("127.0.0.1", forward.local_port)
    draining = None

    async def start_new() -> None:
        started.append(await start_server(tls, token, port=control, forwarding=policy))

    try:
        held.write(b"held")  # an open stream: the old server drains, its session stays
        assert await asyncio.wait_for(held_reader.readexactly(4), 5) == b"held"
        first = client.session
        draining = asyncio.ensure_future(old.drain(drain_for))
        assert await polled(lambda: first is not None and first.mux.peer_going_away)
        yield SimpleNamespace(client=client, port=forward.local_port, first=first, start_new=start_new)
    finally:
        held.close()
        forwarder.stop()
        await stop(task, *[d for d in [draining] if d is not None])
        await old.stop()
        for new in started:
            await new.stop()
        echo.close()


def test_a_user_waiting_while_the_server_drains_has_the_client_try_its_replacement_now(tls: TlsFiles, token: str,
                                                                                      monkeypatch) -> None:
    """The server drains (SIGTERM: GOAWAY, an open stream keeps it up) and a new one comes up while a --local user
    waits. The client tried the new server only at its backoff (10-20 s here; up to 30 s), since a waiting user woke
    it only while it had no session at all: the user was reset at the end of its wait (3 s here). It now tries at
    once, then each second, as while the tunnel is down."""
    monkeypatch.setattr(local_forward, "TUNNEL_WAIT", 3.0)
    monkeypatch.setattr(dialer, "STEADY_AFTER", 0.0)  # the session lived a while: no goaway_soon_after_connect wait

    async def scenario() -> None:
        async with _a_draining_server(tls, token, 20.0, 20.0, drain_for=20) as tunnel:
            await asyncio.sleep(0.3)  # the replacement tried at the GOAWAY has failed: nothing listens
            reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
            writer.write(b"while draining")  # waits; its wake's attempt fails too
            await asyncio.sleep(0.3)
            await tunnel.start_new()
            assert await asyncio.wait_for(reader.readexactly(14), 5) == b"while draining"  # before: reset at 3 s
            writer.close()

    run(scenario(), 40)


def test_a_users_early_tries_at_a_draining_server_leave_the_backoff_as_it_was(tls: TlsFiles, token: str,
                                                                             monkeypatch) -> None:
    """The same while the server drains (GOAWAY): each early try to replace its session that failed doubled the
    wait between tries, so the replacement, back after the user was reset, was tried up to 30 s later. Jitter
    off: the waits are 2 s, then 4 s; the new server comes at 4 s and is tried at 6 s (before: at 18 s)."""
    monkeypatch.setattr(local_forward, "TUNNEL_WAIT", 3.0)
    monkeypatch.setattr(dialer, "STEADY_AFTER", 0.0)  # the session lived a while: no goaway_soon_after_connect wait
    monkeypatch.setattr(dialer, "random", SimpleNamespace(uniform=lambda low, high: high))

    async def scenario() -> None:
        async with _a_draining_server(tls, token, 2.0, 60.0, drain_for=30) as tunnel:
            began = asyncio.get_running_loop().time()
            reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)  # waits 3 s, then reset
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await asyncio.sleep(began + 4.0 - asyncio.get_running_loop().time())
            await tunnel.start_new()
            assert await polled(lambda: tunnel.client.session is not tunnel.first and tunnel.client.serving, 4.0)

    run(scenario(), 40)


@pytest.mark.parametrize("side, flag", [("client", "--max-streams"), ("server", "--max-client-streams")])
def test_a_user_over_a_stream_limit_is_told_which_flag_to_raise(tmp_path: Path, tls: TlsFiles, token_file: Path,
                                                                echo_port: int, side: str, flag: str) -> None:
    """A --local user over the client's own --max-streams (event=forward_refused) or the server's
    --max-client-streams (event=forward_failed) was logged with the same reason, "limit of 1 open streams": which
    side's limit, and which flag moves it, was left to guess. Each line now names its flag."""
    control, local = free_port(), free_port()
    limits = {"client": [], "server": []}
    limits[side] = [flag, "1"]
    server = spawn(*server_args(control, tls, token_file, "--client-forwarding", "--client-forwarding-allow",
                                f"127.0.0.1:{echo_port}", *limits["server"]), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--local", f"{local}:127.0.0.1:{echo_port}",
                                *limits["client"]), log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
        with socket.create_connection(("127.0.0.1", local), timeout=5) as first:
            first.sendall(b"one")
            assert first.recv(16) == b"one"
            # The reset can come before connect() has looked at its socket, so it may be connect() that sees it.
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                with socket.create_connection(("127.0.0.1", local), timeout=5) as second:
                    second.sendall(b"two")
                    second.recv(16)
            log = wait_for_text(tmp_path / "client.log", "limit of 1 open streams")
    finally:
        stop_all(client, server)
    line = next(line for line in log.splitlines() if "limit of 1 open streams" in line)
    other = "--max-client-streams" if flag == "--max-streams" else "--max-streams"
    assert flag in line and other not in line, line


@pytest.mark.parametrize("spec, message", [
    ("0:127.0.0.1:5432", "got '0:127.0.0.1:5432': LOCAL_PORT '0' is not a port between 1 and 65535"),
    ("70000:127.0.0.1:5432", "LOCAL_PORT '70000' is not a port between 1 and 65535"),
    ("5432:127.0.0.1:0", "REMOTE_PORT '0' is not a port between 1 and 65535"),
    ("5432:[::1]:070000", "REMOTE_PORT '070000' is not a port between 1 and 65535"),
    ("5432:127.0.0.1", "got '5432:127.0.0.1'"),  # no REMOTE_PORT: the shape is what is wrong
])
def test_a_local_port_out_of_range_is_named(spec: str, message: str) -> None:
    """``--local 70000:127.0.0.1:5432`` said only "--local must be LOCAL_PORT:HOST:REMOTE_PORT", which it is: the
    port out of range went unnamed, where --upstream's says "public port must be a port between 1 and 65535"."""
    line = one_line_error(inlets("tcp", "client", "--url", "wss://h:1", "--token", "x", "--local", spec,
                                 env={"INLETS_TOKEN": ""}), message)
    assert line.startswith("inlets: error: --local must be LOCAL_PORT:HOST:REMOTE_PORT, got "), line


@pytest.mark.parametrize("spec", ["42313:foo:bar:5432", "42315:127.0.0.1:42200:9", "5432:[foo:bar]:5432",
                                  "5432:[db]:5432", "5432:::1:5432"])
def test_a_local_host_with_a_colon_must_be_a_bracketed_ipv6_address(spec: str) -> None:
    """Found by a probe: ``--local 42313:foo:bar:5432`` (or a port too many, ``127.0.0.1:42200:9``) started and
    listened, as ``remote=forward:[foo:bar]:5432``: only a live server refused it, and only when a user came. It is
    refused at once, as --upstream's HOST:PORT is; the README gives IPv6 hosts in brackets, so a bare one is too."""
    line = one_line_error(inlets("tcp", "client", "--url", "wss://h:1", "--token", "x", "--local", spec, timeout=10,
                                 env={"INLETS_TOKEN": ""}), f"got {spec!r}")
    assert line == ("inlets: error: --local must be LOCAL_PORT:HOST:REMOTE_PORT (an IPv6 HOST in brackets: [::1]), "
                    f"got {spec!r}"), line
    assert local_forward.parse_local_forward("6379:[::1]:6380") == LocalForward(6379, "::1", 6380)
    assert local_forward.parse_local_forward("6379:db:6380").target == "forward:db:6380"


def test_status_shows_what_each_client_forwards_on_the_servers_side(tmp_path: Path, tls: TlsFiles, token_file: Path,
                                                                    echo_port: int) -> None:
    """Found by a probe: `inlets status` listed a client with --local forwards as SERVICES -, its --json naming none
    of the targets, so an operator could not see which client reaches what on the server's side."""
    control, local = free_port(), free_port()
    target = f"127.0.0.1:{echo_port}"
    server = spawn(*server_args(control, tls, token_file, "--client-forwarding", "--client-forwarding-allow", target),
                   log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--local", f"{local}:{target}"), log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
        ask = ["status", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca", str(tls.ca)]
        table, document = inlets(*ask), inlets(*ask, "--json")
    finally:
        stop_all(client, server)
    assert table.returncode == 0 and f"forward:{target}" in table.stdout, table
    (row,) = json.loads(document.stdout)["clients"]
    assert row["forwards"] == [target] and row["services"] == [], row


def test_a_429_met_by_a_try_a_waiting_user_brought_forward_is_waited_out(tls: TlsFiles, token: str,
                                                                        monkeypatch) -> None:
    """Found by review: the first 429 (every login from this address refused, Retry-After: 30) met by a try a
    --local user woke was not noted, and the client asked again each second while the user waited, every try
    another 429. One try now, then nothing before the server's Retry-After."""
    monkeypatch.setattr(local_forward, "TUNNEL_WAIT", 5.0)
    monkeypatch.setattr(dialer, "random", SimpleNamespace(uniform=lambda low, high: high))
    asked: list[float] = []

    async def scenario() -> None:
        control = free_port()

        async def refuse_every_login(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            asked.append(asyncio.get_running_loop().time())
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        forward = LocalForward(free_port(), "127.0.0.1", 9)
        client, task = await start_client(f"wss://127.0.0.1:{control}", token, tls,
                                          {free_port(): Upstream("127.0.0.1", 9)}, wait=False,
                                          extra={"forwards": [forward.target]}, backoff_initial=10.0, backoff_max=60.0)
        await asyncio.sleep(0.3)  # its first try found nothing listening: the next is 10 s away
        server = await asyncio.start_server(refuse_every_login, "127.0.0.1", control,
                                            ssl=server_context(tls.cert, tls.key))
        forwarder = LocalForwarder([forward], "127.0.0.1", lambda: client.session, wake=client.reconnect_now)
        await forwarder.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", forward.local_port)  # wakes the client each second
            await asyncio.sleep(4.5)
            writer.close()
        finally:
            forwarder.stop()
            await stop(task)
            server.close()

    run(scenario(), 30)
    assert len(asked) == 1, asked  # before: 5 in 4.5 s
