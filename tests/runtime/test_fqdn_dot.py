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


def test_a_server_name_the_certificate_does_not_carry_is_named_in_the_error(tmp_path: Path, token_file: Path) -> None:
    """Found by the README walk: a --tls-server-name the certificate lacks was answered "the certificate is for
    another name: give it with --tls-server-name", to a user who had given it; now the error names the name given."""
    tls = make_tls(tmp_path / "tls", ["tunnel.example.com"])
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    try:
        wait_port(control)
        url = f"wss://127.0.0.1:{control}"
        status = inlets("status", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca),
                        "--tls-server-name", "other.example.com")
        client = inlets("tcp", "client", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca),
                        "--tls-server-name", "other.example.com", "--upstream", "127.0.0.1", "--ports", "80")
    finally:
        stop_all(server)
    for result in (status, client):
        assert result.returncode == 1 and "the certificate is not for other.example.com, the --tls-server-name " \
            "given: give one of the names it carries" in result.stderr, result.stderr
