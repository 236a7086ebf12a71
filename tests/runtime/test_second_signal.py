"""A second SIGTERM/SIGINT while a server drains exits at once, saying so in one log line; a client's SIGTERM
waits for the streams of every connection it still holds, the one it has just replaced included."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from helpers.process import client_args, server_args, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port


def test_a_second_signal_during_the_drain_exits_at_once(
        tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int) -> None:
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file, "--drain-timeout", "60"), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=tmp_path / "client.log")
    try:
        wait_port(public)
        with socket.create_connection(("127.0.0.1", public), timeout=5) as user:  # an open stream: the drain waits
            user.sendall(b"hold")
            assert user.recv(4) == b"hold"
            server.send_signal(signal.SIGTERM)
            wait_for_text(tmp_path / "server.log", "event=draining")
            started = time.monotonic()
            server.send_signal(signal.SIGINT)
            code = server.wait(10)
            assert time.monotonic() - started < 5
            # cut, so said with a reset: a FIN let a user reading until the close take a cut transfer for whole
            with pytest.raises(ConnectionResetError):
                user.recv(4)
    finally:
        stop_all(client, server)
    assert code == 1
    log = (tmp_path / "server.log").read_text()
    assert "event=forced_exit signal=SIGINT" in log and "Traceback" not in log


@contextlib.contextmanager
def _client_holding_a_stream(tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int,
                             *client_flags: str) -> Iterator[tuple[subprocess.Popen, socket.socket]]:
    """A server and a client process (logs server.log, client.log in ``tmp_path``), and a user connection open
    through them (an echo upstream), so that a drain has a stream to wait for; both processes stopped after."""
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}",
                                *client_flags), log=tmp_path / "client.log")
    try:
        # the server listens on public before it welcomes the client; wait_port's own connection was a second
        # stream, still closing under load when a drain counted them (open_streams=2 in a CI run)
        wait_for_text(tmp_path / "client.log", "event=connected")
        with socket.create_connection(("127.0.0.1", public), timeout=5) as user:
            user.sendall(b"hold")
            assert user.recv(4) == b"hold"
            yield client, user
    finally:
        stop_all(client, server)


def test_sigterm_just_after_sighup_lets_the_replaced_connections_streams_finish(
        tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int) -> None:
    """SIGHUP connects anew and drains the old connection; a SIGTERM then drained only the new one and exited,
    resetting the user connection still open on the old one."""
    client_log = tmp_path / "client.log"
    with _client_holding_a_stream(tmp_path, tls, token_file, echo_port) as (client, user):
        client.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while client_log.read_text().count("event=connected") < 2:
            assert time.monotonic() < deadline, client_log.read_text()
            time.sleep(0.05)
        client.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the client would have exited by now
        user.sendall(b"more")
        assert user.recv(4) == b"more"
        user.shutdown(socket.SHUT_WR)
        assert user.recv(4) == b""
        code = client.wait(10)
    assert code == 0
    assert "Traceback" not in client_log.read_text()


def test_a_clients_sigterm_says_it_waits_for_open_streams(
        tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int) -> None:
    """The server logs event=draining at SIGTERM; the client said nothing while it waited up to --drain-timeout."""
    with _client_holding_a_stream(tmp_path, tls, token_file, echo_port, "--drain-timeout", "20") as (client, user):
        client.send_signal(signal.SIGTERM)
        line = wait_for_text(tmp_path / "client.log", "event=draining", timeout=5)
        user.close()
        code = client.wait(10)
    assert code == 0
    assert "open_streams=1 timeout=20.0s" in line, line


def test_a_client_stopped_while_it_cannot_connect_says_it_was_stopped(tmp_path: Path, tls: TlsFiles,
                                                                     token_file: Path) -> None:
    """A client retrying a server that is down exited 0 at SIGTERM without a word: its log ended on
    event=connect_failed ... retry_in=..., which reads like a crash. Found by a review helper."""
    port = free_port()  # nothing listens there
    client = spawn(*client_args(port, tls, token_file, "--upstream", f"{free_port()}=127.0.0.1:9"),
                   log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connect_failed")
        client.send_signal(signal.SIGTERM)
        assert client.wait(10) == 0
    finally:
        stop_all(client)
    log = (tmp_path / "client.log").read_text()
    assert "event=stopping signal=SIGTERM" in log.rsplit("event=connect_failed", 1)[1], log


def test_a_sighup_while_the_client_drains_opens_no_new_connection(
        tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int) -> None:
    """SIGHUP after SIGTERM connected anew: the server admitted a session that took new users' connections, which the
    client's exit then cut (later, one closed at once as "not needed"). A stopping client does not reconnect."""
    with _client_holding_a_stream(tmp_path, tls, token_file, echo_port) as (client, user):
        client.send_signal(signal.SIGTERM)
        wait_for_text(tmp_path / "client.log", "event=draining")
        client.send_signal(signal.SIGHUP)
        time.sleep(1.0)  # it would have connected by now
        user.close()
        assert client.wait(10) == 0
    assert (tmp_path / "server.log").read_text().count("event=client_connected") == 1, (tmp_path / "server.log").read_text()
