"""A client whose token the server revoked (close 1008), real processes: when its token file already holds another
token it connects again at once; rotation after rotation its wait had doubled (0.4, 0.8, 1.5, 3.4, 5.4 s ... 30 s)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from helpers.process import client_args, server_args, spawn, stop_all, wait_count
from helpers.tunnel import TlsFiles, free_port


def test_a_revoked_client_whose_token_file_has_a_new_token_reconnects_at_once_every_rotation(
        tmp_path: Path, tls: TlsFiles, echo_port: int) -> None:
    """The README's rotation, the client's token file rewritten but the client not sent SIGHUP (a missed reload):
    removing the old token cuts it (1008), and it finds the new token in its file. Four quick rotations in a row."""
    server_tokens, client_token = tmp_path / "server-tokens", tmp_path / "client-token"
    old = "token-0-" + "a" * 40
    server_tokens.write_text(old + "\n")
    client_token.write_text(old + "\n")
    control, public = free_port(), free_port()
    server_log, client_log = tmp_path / "server.log", tmp_path / "client.log"
    server = spawn(*server_args(control, tls, server_tokens), log=server_log)
    client = spawn(*client_args(control, tls, client_token, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=client_log)
    rounds = 4
    try:
        wait_count(client_log, "event=connected ", 1)
        for n in range(1, rounds + 1):
            new = f"token-{n}-" + "b" * 40
            server_tokens.write_text(f"{old}\n{new}\n")  # 1. the server accepts both
            server.send_signal(signal.SIGHUP)
            wait_count(server_log, "event=tokens_reloaded count=2", n)
            client_token.write_text(new + "\n")  # 2. the client's file has the new one (its SIGHUP missed)
            server_tokens.write_text(new + "\n")  # 3. the old token is gone: the client is cut
            server.send_signal(signal.SIGHUP)
            wait_count(client_log, "event=connected ", n + 1)  # back, with the new token
            old = new
        assert client.poll() is None
    finally:
        codes = stop_all(client, server)
    log = client_log.read_text()
    waits = re.findall(r'event=disconnected .*close="1008 token revoked" retry_in=([0-9.]+)s', log)
    assert waits == ["0.0"] * rounds, log
    assert codes == [0, 0]
    assert "Traceback" not in log
