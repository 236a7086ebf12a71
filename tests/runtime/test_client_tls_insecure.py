"""``--tls-insecure`` on the tunnel clients is said once at start: real server and client processes, real TLS."""

from __future__ import annotations

from pathlib import Path

from helpers.process import server_args, spawn, terminate, wait_for_text
from helpers.tunnel import TlsFiles, free_port


def test_tls_insecure_is_said_once_at_start_with_what_to_give_instead(tmp_path: Path, tls: TlsFiles,
                                                                       token_file: Path) -> None:
    """Found by review: the client started without a word, while ``--upstream-insecure`` is warned of; a client
    left running with it (from a test, say) gave no sign that its tunnel and token were open to whoever is on the way."""
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = None
    try:
        wait_for_text(tmp_path / "server.log", "event=started")
        client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                       "--tls-insecure", "--upstream", f"{free_port()}=127.0.0.1:{free_port()}", log=tmp_path / "client.log")
        log = wait_for_text(tmp_path / "client.log", "event=connected")
    finally:
        for process in (client, server):
            if process is not None:
                terminate(process)
    warned = [line for line in log.splitlines() if "event=server_tls_unverified" in line]
    assert len(warned) == 1, log
    assert "level=WARNING" in warned[0] and f"wss://127.0.0.1:{control}" in warned[0], warned[0]
    assert "--tls-ca FILE" in warned[0], warned[0]


def test_a_ws_url_to_another_host_is_said_once_at_start(token: str, caplog) -> None:
    """A probe's client with ``--url ws://10.9.9.9:9122`` sent its token in clear, and retried, without a word (the
    server warns of --plaintext reachable from off the machine). Now the client says which servers get it in clear;
    a ws:// to this machine (a server behind a local TLS-terminating proxy) and wss:// are not named. In process:
    the warning comes as the flags are read, before any connection (none is made here)."""
    import logging

    from inlets_py.runtime.cli.client_config import client_configs

    caplog.set_level(logging.WARNING)
    urls = ["ws://tunnel.example.com:8123", "ws://[::1]:8123", "ws://localhost:8080/inlets", "wss://tunnel.example.com"]
    client_configs(urls=urls, token=token, token_files=None, tls_ca=None, tls_server_name=None, tls_insecure=False,
                   keepalive=10.0, mode="tcp", services=["tcp:8000"])
    warned = [r.getMessage() for r in caplog.records if "event=plaintext_url" in r.getMessage()]
    assert len(warned) == 1 and "urls=ws://tunnel.example.com:8123 " in warned[0], warned
    assert "use the server's wss:// URL" in warned[0], warned[0]
