"""A client's --tls-ca is re-read when it changes, as its token file is: moving a server to a new CA needs no
client restart. It was read once at start, so a client sent SIGHUP after its CA file gained the new CA still
pinned the old one only, and exited at the server's next restart on the new certificate (an HA client, told
"fix this one, then send SIGHUP", was refused again every minute until restarted)."""

from __future__ import annotations

import signal
from pathlib import Path

from helpers.process import client_args, echo_once, server_args, spawn, stop_all, wait_count, wait_for_text
from helpers.tunnel import TlsFiles, free_port, make_tls


def test_a_client_whose_ca_file_gained_the_new_ca_follows_the_server_to_it(
        tmp_path: Path, token_file: Path, echo_port: int) -> None:
    first, second = make_tls(tmp_path / "first"), make_tls(tmp_path / "second")  # two CAs
    live = TlsFiles(tmp_path / "client-ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    live.ca.write_bytes(first.ca.read_bytes())
    live.cert.write_bytes(first.cert.read_bytes())
    live.key.write_bytes(first.key.read_bytes())
    live.key.chmod(0o600)
    control, public = free_port(), free_port()
    server_log, client_log = tmp_path / "server.log", tmp_path / "client.log"
    server = spawn(*server_args(control, live, token_file), log=server_log)
    client = spawn(*client_args(control, live, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=client_log)
    try:
        wait_count(client_log, "event=connected ", 1)
        live.ca.write_text("")  # caught mid-write: the CA read before keeps serving, said once
        client.send_signal(signal.SIGHUP)
        wait_count(client_log, "event=connected ", 2)
        assert "event=tls_ca_unreadable" in client_log.read_text()
        live.ca.write_bytes(first.ca.read_bytes() + second.ca.read_bytes())  # 1. the client trusts both CAs
        client.send_signal(signal.SIGHUP)
        wait_count(client_log, "event=connected ", 3)
        live.cert.write_bytes(second.cert.read_bytes())  # 2. the server moves to the new CA
        live.key.write_bytes(second.key.read_bytes())
        server.send_signal(signal.SIGHUP)
        wait_for_text(server_log, "event=certificate_reloaded")
        server.send_signal(signal.SIGKILL)  # 3. and restarts: the client connects again, to the new certificate
        server.wait(15)
        server = spawn(*server_args(control, live, token_file), log=tmp_path / "server2.log")
        wait_count(client_log, "event=connected ", 4)
        assert client.poll() is None, client_log.read_text()
        assert echo_once(public, b"after the move") == b"after the move"
    finally:
        stop_all(client, server)
    log = client_log.read_text()
    assert log.count("event=tls_ca_unreadable") == 1 and "Traceback" not in log, log
