"""The `inlets` command as users run it: real processes, real flags, real errors."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from process_helpers import echo_once, inlets, spawn, wait_for_text, wait_port
from tunnel_helpers import TlsFiles, free_port

@pytest.fixture
def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["tcp", "server"], "no token: give --token, --token-file or $INLETS_TOKEN"),
        (["tcp", "server", "--token", "x"], "choose one of --tls-cert/--tls-key, --auto-tls, or --plaintext"),
        (["tcp", "server", "--token", "x", "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "TLS file not found"),
        (["tcp", "server", "--token-file", "/nonexistent/token"], "token file not found: /nonexistent/token"),
        (["tcp", "server", "--token", "x", "--plaintext", "--allow-ports", "80,http"], "--allow-ports must be"),
        (["tcp", "server", "--control-port", "70000"], "Invalid value for '--control-port'"),
        (["tcp", "server", "--token", "x", "--plaintext", "--trusted-proxies", "10.0.0.300"],
         "--trusted-proxies: '10.0.0.300' is not an IP address or CIDR network"),
        (["tcp", "server", "--max-handshakes", "0"], "Invalid value for '--max-handshakes'"),
        (["tcp", "client", "--url", "wss://h:1", "--max-streams", "0"], "Invalid value for '--max-streams'"),
        (["tcp", "client", "--url", "wss://h:1", "--max-buffer", "none"], "Invalid value for '--max-buffer'"),
        (["tcp", "server", "--frobnicate"], "No such option: --frobnicate"),
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--upstream", "127.0.0.1"], "needs --ports"),
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--upstream", "99999=127.0.0.1:22"], "public port must be"),
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--upstream", "22=nohostport"], "expected HOST:PORT"),
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--upstream", "h", "--ports", "80,0"], "--ports entry must be"),
        (["tcp", "client", "--url", "http://h:1", "--token", "x", "--upstream", "22=h:22"], "--url must start with wss://"),
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--upstream", "22=h:22", "--tls-ca", "/nope.crt"], "CA file not found"),
        (["tcp", "client", "--url", "wss://h:1", "--upstream", "22=h:22"], "no token"),
    ],
)
def test_bad_input_gets_one_line_and_non_zero_exit(args: list[str], message: str) -> None:
    result = inlets(*args, env={"INLETS_TOKEN": ""})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_help_on_every_command() -> None:
    for args in (["--help"], ["tcp", "--help"], ["tcp", "server", "--help"], ["tcp", "client", "--help"]):
        result = inlets(*args)
        assert result.returncode == 0 and "Usage:" in result.stdout


def test_processes_carry_traffic_survive_a_server_kill_and_stop_cleanly(
    tmp_path: Path, tls: TlsFiles, token: str, token_file: Path, echo_port: int
) -> None:
    control, public = free_port(), free_port()
    server_args = [
        "tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr", "127.0.0.1",
        "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file), "--log-level", "debug",
    ]
    server = spawn(*server_args, log=tmp_path / "server.log")
    client = spawn(
        "tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca", str(tls.ca),
        "--upstream", f"{public}=127.0.0.1:{echo_port}", "--log-level", "debug",
        log=tmp_path / "client.log",
    )
    try:
        wait_port(public)
        assert echo_once(public, b"first") == b"first"
        server.send_signal(signal.SIGKILL)
        server.wait(5)
        server = spawn(*server_args, log=tmp_path / "server2.log")
        wait_port(public)  # the client reconnected by itself and re-advertised
        assert echo_once(public, b"second") == b"second"
        log = wait_for_text(tmp_path / "client.log", "event=disconnected")
        assert log.count("event=connected") == 2
    finally:
        for process in (client, server):
            process.send_signal(signal.SIGTERM)
        codes = [p.wait(10) for p in (client, server)]
    assert codes == [0, 0]
    logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert token not in logs, "the token leaked into a log"
    assert "Traceback" not in logs


def test_wrong_token_exits_with_a_clear_message(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    control = free_port()
    server = spawn(
        "tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--tls-cert", str(tls.cert),
        "--tls-key", str(tls.key), "--token-file", str(token_file), log=tmp_path / "server.log",
    )
    try:
        wait_port(control)
        result = inlets(
            "tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token", "not-the-token", "--tls-ca", str(tls.ca),
            "--upstream", "2222=127.0.0.1:22",
        )
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 1
    assert "inlets: error: the server refused the token (HTTP 401)" in result.stderr
    assert "Traceback" not in result.stderr
    assert "not-the-token" not in (tmp_path / "server.log").read_text()


def test_port_not_allowed_is_refused_with_the_reason(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    control = free_port()
    server = spawn(
        "tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--tls-cert", str(tls.cert),
        "--tls-key", str(tls.key), "--token-file", str(token_file), "--allow-ports", "8080,8443",
        log=tmp_path / "server.log",
    )
    try:
        wait_port(control)
        result = inlets(
            "tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca",
            str(tls.ca), "--upstream", "127.0.0.1", "--ports", "8080,22",
        )
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 1
    assert "port(s) 22 not allowed (--allow-ports 8080,8443)" in result.stderr


def test_auto_tls_generates_once_and_reuses_on_restart(tmp_path: Path, token_file: Path) -> None:
    control = free_port()
    args = [
        "tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--auto-tls",
        "--auto-tls-path", str(tmp_path / "tls"), "--auto-tls-san", "127.0.0.1", "--token-file", str(token_file),
        "--log-level", "debug",
    ]
    for attempt in range(2):
        server = spawn(*args, log=tmp_path / f"server{attempt}.log")
        try:
            wait_port(control)
            ca = (tmp_path / "tls" / "ca.crt").read_bytes()
            if attempt == 0:
                first_ca = ca
            else:
                assert ca == first_ca, "restart must keep the CA clients pinned"
        finally:
            server.terminate()
            server.wait(10)
    logs = "".join(p.read_text() for p in tmp_path.glob("server*.log"))
    assert "PRIVATE KEY" not in logs and (tmp_path / "tls" / "server.key").read_text()[40:80] not in logs
    assert oct((tmp_path / "tls" / "server.key").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"
