"""A server named with a final dot (``tunnel.example.com.``, the fully qualified form some users and resolvers
write): real processes, real TLS with a certificate for the name without it, as every certificate is issued."""

from __future__ import annotations

from pathlib import Path

from helpers.process import client_args, inlets, server_args, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import free_port, make_tls


def test_a_server_name_with_a_final_dot_matches_the_certificate(tmp_path: Path, token_file: Path) -> None:
    """Found by the README walk: ``--tls-server-name localhost.`` (or a ``--url`` host so written) failed with
    "Hostname mismatch ... give it with --tls-server-name", the name given being the certificate's; curl and browsers
    drop the dot for the check and SNI (RFC 6066 3), and now the client and ``inlets status`` do too."""
    tls = make_tls(tmp_path / "tls", ["Tunnel.Example.COM"])
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = None
    try:
        wait_port(control)
        status = inlets("status", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                        "--tls-ca", str(tls.ca), "--tls-server-name", "tunnel.example.com.")
        assert status.returncode == 0 and "inlets tcp server" in status.stdout, status.stderr
        client = spawn(*client_args(control, tls, token_file, "--tls-server-name", "TUNNEL.example.com.",
                                    "--upstream", f"{free_port()}=127.0.0.1:{free_port()}"),
                       log=tmp_path / "client.log")
        wait_for_text(tmp_path / "client.log", "event=connected")
    finally:
        stop_all(*(p for p in (client, server) if p is not None))
    assert "mismatch" not in (tmp_path / "client.log").read_text()
