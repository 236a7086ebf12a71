"""A second SIGTERM/SIGINT while a server drains exits at once, saying so in one log line; a client's SIGTERM
waits for the streams of every connection it still holds, the one it has just replaced included."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

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
    finally:
        stop_all(client, server)
    assert code == 1
    log = (tmp_path / "server.log").read_text()
    assert "event=forced_exit signal=SIGINT" in log and "Traceback" not in log


def test_sigterm_just_after_sighup_lets_the_replaced_connections_streams_finish(
        tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int) -> None:
    """SIGHUP connects anew and drains the old connection; a SIGTERM then drained only the new one and exited,
    resetting the user connection still open on the old one."""
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client_log = tmp_path / "client.log"
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=client_log)
    try:
        wait_port(public)
        with socket.create_connection(("127.0.0.1", public), timeout=5) as user:
            user.sendall(b"hold")
            assert user.recv(4) == b"hold"
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
    finally:
        stop_all(client, server)
    assert code == 0
    assert "Traceback" not in client_log.read_text()


def test_a_clients_sigterm_says_it_waits_for_open_streams(
        tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int) -> None:
    """The server logs event=draining at SIGTERM; the client said nothing while it waited up to --drain-timeout."""
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client_log = tmp_path / "client.log"
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}",
                                "--drain-timeout", "20"), log=client_log)
    try:
        wait_port(public)
        with socket.create_connection(("127.0.0.1", public), timeout=5) as user:
            user.sendall(b"hold")
            assert user.recv(4) == b"hold"
            client.send_signal(signal.SIGTERM)
            line = wait_for_text(client_log, "event=draining", timeout=5)
        code = client.wait(10)
    finally:
        stop_all(client, server)
    assert code == 0
    assert "open_streams=1 timeout=20.0s" in line, line


def test_a_sighup_while_the_client_drains_opens_no_new_connection(
        tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int) -> None:
    """SIGHUP after SIGTERM connected anew: the server admitted a session that took new users' connections, which the
    client's exit then cut (later, one closed at once as "not needed"). A stopping client does not reconnect."""
    control, public = free_port(), free_port()
    server_log, client_log = tmp_path / "server.log", tmp_path / "client.log"
    server = spawn(*server_args(control, tls, token_file), log=server_log)
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=client_log)
    try:
        wait_port(public)
        with socket.create_connection(("127.0.0.1", public), timeout=5) as user:
            user.sendall(b"hold")
            assert user.recv(4) == b"hold"
            client.send_signal(signal.SIGTERM)
            wait_for_text(client_log, "event=draining")
            client.send_signal(signal.SIGHUP)
            time.sleep(1.0)  # it would have connected by now
        assert client.wait(10) == 0
    finally:
        stop_all(client, server)
    assert server_log.read_text().count("event=client_connected") == 1, server_log.read_text()
