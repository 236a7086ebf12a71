"""The `inlets` command as users run it: real processes, real flags, real errors."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers.process import INLETS, ROOT, echo_once, inlets, one_line_error, server_args, spawn, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port

@pytest.mark.parametrize(
    "args, message",
    [
        (["tcp", "server", "--plaintext"], "no token: give --token, --token-file or $INLETS_TOKEN"),
        (["tcp", "server", "--token", "x"], "choose one of --tls-cert/--tls-key, --auto-tls, or --plaintext"),
        (["tcp", "server", "--token", "x", "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "TLS file not found"),
        (["tcp", "server", "--plaintext", "--token-file", "/nonexistent/token"], "token file not found: /nonexistent/token"),
        (["tcp", "server", "--token", "x", "--plaintext", "--allow-ports", "80,http"], "--allow-ports must be"),
        (["tcp", "server", "--control-port", "70000"], "Invalid value for '--control-port'"),
        (["tcp", "server", "--token", "x", "--plaintext", "--trusted-proxies", "10.0.0.300"],
         "--trusted-proxies: '10.0.0.300' is not an IP address or CIDR network"),
        # the failed-login limit's exempt list: the project's address-list rules and words, on both servers
        (["tcp", "server", "--token", "x", "--plaintext", "--login-limit-exempt", "10.0.0.0/8,10.0.0.300"],
         "--login-limit-exempt: '10.0.0.300' is not an IP address or CIDR network"),
        (["http", "server", "--token", "x", "--plaintext", "--login-limit-exempt", "fe80::1%eth0"],
         "--login-limit-exempt: 'fe80::1%eth0': a zone (%...) cannot be matched: give fe80::1"),
        (["tcp", "server", "--token", "x", "--plaintext", "--login-limit-exempt", ""],
         "--login-limit-exempt is empty: give the addresses the failed-login limit spares"),
        (["tcp", "server", "--max-handshakes", "0"], "Invalid value for '--max-handshakes'"),
        (["tcp", "server", "--max-client-buffer", "0"], "Invalid value for '--max-client-buffer'"),
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
        # a bad --local-addr got "Unknown error -2"; an empty one (an unset variable) listened on every interface
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--local", "15432:127.0.0.1:5432",
          "--local-addr", "999.1.1.1"], "--local-addr: '999.1.1.1' is not an IP address"),
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--local", "15432:127.0.0.1:5432", "--local-addr", ""],
         "--local-addr: '' is not a valid host name"),
        # the second listener failed, saying "another program uses it"
        (["tcp", "client", "--url", "wss://h:1", "--token", "x", "--local", "15432:127.0.0.1:5432",
          "--local", "15432:127.0.0.1:6379"], "--local: LOCAL_PORT 15432 given more than once: one port per --local"),
    ],
)
def test_bad_input_gets_one_line_and_non_zero_exit(args: list[str], message: str) -> None:
    one_line_error(inlets(*args, env={"INLETS_TOKEN": ""}), message)


def test_help_on_every_command() -> None:
    for args in (["--help"], ["tcp", "--help"], ["tcp", "server", "--help"], ["tcp", "client", "--help"]):
        result = inlets(*args)
        assert result.returncode == 0 and "Usage:" in result.stdout


def test_server_logs_a_ready_line_once_its_control_port_accepts(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    control = free_port()
    server = spawn("tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr",
                   "127.0.0.1", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file),
                   log=tmp_path / "server.log")
    try:
        log = wait_for_text(tmp_path / "server.log", "event=started")
        line = next(l for l in log.splitlines() if "event=started" in l)
        assert f"mode=tcp control=wss://127.0.0.1:{control} data_addr=127.0.0.1" in line
        wait_port(control, timeout=0.5)  # ready means ready: no wait after the line
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


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


def test_client_whose_token_file_vanishes_keeps_retrying_with_the_token_it_read(
    tmp_path: Path, tls: TlsFiles, token: str, token_file: Path, echo_port: int
) -> None:
    """As when inletsctl deletes an exit server (its folder goes, token file included) and a
    server comes back: the client is still there, said once what happened, and reconnects."""
    control, public = free_port(), free_port()
    client_token = tmp_path / "client-token"
    client_token.write_text(token + "\n")
    server_args = ["tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr",
                   "127.0.0.1", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file)]
    server = spawn(*server_args, log=tmp_path / "server.log")
    client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(client_token),
                   "--tls-ca", str(tls.ca), "--upstream", f"{public}=127.0.0.1:{echo_port}", log=tmp_path / "client.log")
    try:
        wait_port(public)
        server.send_signal(signal.SIGTERM)
        server.wait(15)
        client_token.unlink()
        wait_for_text(tmp_path / "client.log", "event=token_file_unreadable")
        server = spawn(*server_args, log=tmp_path / "server2.log")
        wait_port(public, timeout=40)  # reconnected with the token read before the file went
        assert echo_once(public, b"still here") == b"still here"
        assert client.poll() is None
        client_token.write_text(token + "\n")
        client.send_signal(signal.SIGHUP)  # reconnect: the file is read again
        log = wait_for_text(tmp_path / "client.log", "event=token_file_readable")
        assert log.count("event=token_file_unreadable") == 1, log
        assert "token file not found: " + str(client_token) in log and "inletsctl" in log
    finally:
        for process in (client, server):
            process.send_signal(signal.SIGTERM)
        for process in (client, server):
            process.wait(15)


def test_a_client_cut_off_by_the_server_logs_why_and_when_it_tries_again(
    tmp_path: Path, tls: TlsFiles, token_file: Path, echo_port: int
) -> None:
    """Its token revoked (server SIGHUP), the client logged only ``event=disconnected``: neither the server's
    reason nor when it would try again was anywhere in its log."""
    control, public = free_port(), free_port()
    server_tokens = tmp_path / "server-tokens"
    server_tokens.write_text(token_file.read_text())
    server = spawn(*server_args(control, tls, server_tokens), log=tmp_path / "server.log")
    client = spawn(
        "tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca", str(tls.ca),
        "--upstream", f"{public}=127.0.0.1:{echo_port}", log=tmp_path / "client.log",
    )
    try:
        wait_port(public)
        server_tokens.write_text("another-token-for-everyone-else\n")
        server.send_signal(signal.SIGHUP)
        assert client.wait(10) == 1
    finally:
        client.kill()
        server.terminate()
        server.wait(10)
    line = next(line for line in (tmp_path / "client.log").read_text().splitlines() if "event=disconnected" in line)
    assert 'close="1008 token revoked" retry_in=' in line


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


def test_data_port_in_use_is_refused_in_one_whole_line_saying_what_to_do(
    tmp_path: Path, tls: TlsFiles, token_file: Path
) -> None:
    control = free_port()
    server = spawn(
        "tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr", "127.0.0.2",
        "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file),
        log=tmp_path / "server.log",
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.2", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        try:
            wait_port(control)
            result = inlets("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                            "--tls-ca", str(tls.ca), "--upstream", "127.0.0.1", "--ports", str(taken))
        finally:
            server.terminate()
            server.wait(10)
    assert result.returncode == 1
    assert result.stderr == (f"inlets: error: the server refused this client: server cannot listen on 127.0.0.2:{taken}: "
                             "port in use there; free it or give the server another --data-addr\n")


def test_a_privileged_data_port_says_what_the_server_needs(tmp_path: Path, token: str) -> None:
    """A server without the right to bind ports under 1024 refused the client with 'Permission denied' and no
    word of what to change; the one who can act (on the server) learns it from the client's line or its log."""
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("every user may bind port 80 on this machine (net.ipv4.ip_unprivileged_port_start)")
    prefix: list[str] = []
    home = tmp_path
    if os.geteuid() == 0:  # run the server as nobody, as a server without CAP_NET_BIND_SERVICE runs
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to run the server without root")
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        home = Path(tempfile.mkdtemp())
        home.chmod(0o755)
    server_token = home / "token"
    server_token.write_text(token + "\n")
    server_token.chmod(0o600)
    if prefix:
        os.chown(server_token, pwd.getpwnam("nobody").pw_uid, -1)
    control = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([*prefix, *INLETS, "tcp", "server", "--plaintext", "--control-addr", "127.0.0.1",
                               "--control-port", str(control), "--data-addr", "127.0.0.1", "--token-file",
                               str(server_token)], stdout=log, stderr=subprocess.STDOUT, cwd=home)
    try:
        wait_port(control)
        result = inlets("tcp", "client", "--url", f"ws://127.0.0.1:{control}", "--token", token,
                        "--upstream", "127.0.0.1", "--ports", "80")
    finally:
        server.terminate()
        server.wait(10)
        if prefix:
            shutil.rmtree(home)
    assert result.returncode == 1
    assert result.stderr == ("inlets: error: the server refused this client: server cannot listen on 127.0.0.1:80: "
                             "Permission denied: ports under 1024 need root or CAP_NET_BIND_SERVICE\n")


def test_bind_failure_on_every_interface_suggests_a_data_address_of_its_own() -> None:
    from inlets_py.runtime.server.dataplane import bind_failure

    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", 0))
        first.listen()
        port = first.getsockname()[1]
        with pytest.raises(OSError) as taken:
            second.bind(("127.0.0.1", port))
    assert bind_failure(None, port, taken.value) == (
        f"server cannot listen on *:{port}: port in use; free it, or on one machine use --data-addr 127.0.0.2")
    assert bind_failure("::1", port, OSError(errno.EACCES, "x")) == f"server cannot listen on [::1]:{port}: Permission denied"


def test_close_reasons_over_the_websocket_limit_are_cut_after_a_word() -> None:
    from inlets_py.runtime.server.control import _close_reason

    reason = _close_reason("server cannot listen on " + "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535: " * 3)
    assert len(reason.encode()) <= 123 and reason.endswith("65535:...") and _close_reason("short") == "short"


def test_ws_url_for_a_tls_server_says_use_wss_and_the_server_logs_it_once(
    tmp_path: Path, tls: TlsFiles, token_file: Path
) -> None:
    control = free_port()
    server = spawn("tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr",
                   "127.0.0.1", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file),
                   log=tmp_path / "server.log")
    try:
        wait_port(control)
        for _ in range(2):  # a second attempt is not logged again
            result = inlets("tcp", "client", "--url", f"ws://127.0.0.1:{control}", "--token-file", str(token_file),
                            "--upstream", "127.0.0.1", "--ports", "8080")
            assert result.returncode == 1
            assert result.stderr == (f"inlets: error: ws://127.0.0.1:{control}: the server speaks TLS: "
                                     f"use --url wss://127.0.0.1:{control}\n")
    finally:
        server.terminate()
        server.wait(10)
    log = (tmp_path / "server.log").read_text()
    assert log.count("event=plaintext_on_tls_port source=127.0.0.1 ") == 1 and "must start with wss://" in log, log


def test_wss_url_for_a_plaintext_server_says_use_ws(tmp_path: Path, token_file: Path) -> None:
    control = free_port()
    server = spawn("tcp", "server", "--plaintext", "--control-addr", "127.0.0.1", "--control-port", str(control),
                   "--data-addr", "127.0.0.1", "--token-file", str(token_file), log=tmp_path / "server.log")
    try:
        wait_port(control)
        result = inlets("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                        "--upstream", "127.0.0.1", "--ports", "8080")
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 1
    assert result.stderr == (f"inlets: error: wss://127.0.0.1:{control} answers plain HTTP, not TLS: for a server run "
                             f"with --plaintext use --url ws://127.0.0.1:{control} (or give it --tls-cert/--tls-key); "
                             "else give its control port (8123 unless set), not a data port\n")


def test_plaintext_attempts_are_logged_per_source_at_most_once_an_interval_with_their_count(caplog) -> None:
    import time

    from inlets_py.runtime.core.tls import PlaintextAttempts

    attempts = PlaintextAttempts()
    attempts.interval, attempts.max_sources = 0.2, 2
    with caplog.at_level("WARNING", logger="inlets.tls"):
        for _ in range(3):
            attempts.seen("192.0.2.1")
        attempts.seen("192.0.2.2")  # another source is logged at once
        time.sleep(0.3)
        attempts.seen("192.0.2.1")
        attempts.seen("192.0.2.3")  # a third source: the oldest remembered (192.0.2.2) is forgotten
        attempts.seen("192.0.2.2")
    lines = [r.getMessage().split()[:3] for r in caplog.records]
    assert lines == [["event=plaintext_on_tls_port", "source=192.0.2.1", "attempts=1"],
                     ["event=plaintext_on_tls_port", "source=192.0.2.2", "attempts=1"],
                     ["event=plaintext_on_tls_port", "source=192.0.2.1", "attempts=3"],
                     ["event=plaintext_on_tls_port", "source=192.0.2.3", "attempts=1"],
                     ["event=plaintext_on_tls_port", "source=192.0.2.2", "attempts=1"]]
    assert len(attempts._sources) == 2


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
    (key,) = (tmp_path / "tls").glob("server-*.key")
    assert "PRIVATE KEY" not in logs and key.read_text()[40:80] not in logs
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"


def test_reasonless_connection_errors_are_described_in_words_not_class_names() -> None:
    import asyncio

    from inlets_py.runtime.client.dialer import _describe

    assert _describe(ConnectionResetError()) == "the server closed the connection"
    assert _describe(asyncio.TimeoutError()) == "timed out"
    assert _describe(RuntimeError()) == "the connection failed"
    assert _describe(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"


def test_a_refused_connection_is_said_in_words_without_uvloop_too(tmp_path: Path, token_file: Path) -> None:
    """uvloop is optional: on asyncio's own loop the log said error="Connect call failed ('127.0.0.1', PORT)",
    a Python tuple, where uvloop says 'Connection refused'; and a name with two addresses, 'Multiple exceptions:'."""
    import sys

    from inlets_py.runtime.client.diagnose import describe

    without_uvloop = [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; "
                      "from inlets_py.runtime.cli.main import main; main()"]
    log = tmp_path / "client.log"
    with open(log, "w") as handle:
        client = subprocess.Popen([*without_uvloop, "tcp", "client", "--url", f"ws://127.0.0.1:{free_port()}",
                                   "--token-file", str(token_file), "--upstream", "127.0.0.1", "--ports", "9"],
                                  stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        line = wait_for_text(log, "event=connect_failed")
    finally:
        client.terminate()
        client.wait(10)
    assert 'error="Connection refused"' in line and "Connect call failed" not in line, line
    both = OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 9, 0, 0), "
                   "[Errno 111] Connect call failed ('127.0.0.1', 9)")  # asyncio's words for localhost, on 3.11
    assert describe(both) == "Connection refused"


def test_a_wss_url_to_a_port_speaking_another_protocol_is_said_in_words(tmp_path: Path, token_file: Path) -> None:
    """--url wss:// to a port that answers neither TLS nor HTTP (sshd, a database) logged OpenSSL's own text at every
    retry: '[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)'."""
    import contextlib
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def sshd() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):  # the client may be gone already
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=sshd, daemon=True).start()
    log = tmp_path / "client.log"
    client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{listener.getsockname()[1]}", "--token-file", str(token_file),
                   "--upstream", "127.0.0.1", "--ports", "9", log=log)
    try:
        text = wait_for_text(log, "event=connect_failed")
    finally:
        client.terminate()
        client.wait(10)
        done.set()
        listener.close()
    assert "TLS handshake failed: wrong version number (that port does not speak TLS" in text, text
    assert "_ssl.c" not in text and "[SSL:" not in text, text


def test_the_servers_own_control_port_as_a_data_port_says_so(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """Asking for the port the control plane holds got 'port in use there; free it or give the server another
    --data-addr': it cannot be freed, the server holds it itself."""
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    try:
        wait_port(control)
        result = inlets("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
                        "--tls-ca", str(tls.ca), "--upstream", "127.0.0.1", "--ports", str(control))
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 1
    assert result.stderr == (f"inlets: error: the server refused this client: server cannot listen on "
                             f"127.0.0.1:{control}: it is this server's control port: use --upstream OTHER_PORT=HOST:{control}\n")


#: A server of each kind, on loopback ports it never gets to bind when refused.
PLAIN_SERVER = ["--plaintext", "--token-file", "/etc/inlets/token", "--control-addr", "127.0.0.1", "--data-addr",
                "127.0.0.1", "--control-port", "23910"]


@pytest.mark.parametrize("server, cap", [
    (["tcp", "server"], "--max-handshakes"),
    (["http", "server", "--port", "23911"], "--max-handshakes"),
    (["http", "server", "--port", "23911", "--letsencrypt-domain", "a.example.com"], "--max-https-handshakes"),
])
def test_a_per_source_handshake_cap_above_its_total_is_refused_in_one_line(server: list[str], cap: str) -> None:
    """--max-handshakes 8 --max-handshakes-per-source 100 started, the 100 never reachable; now refused, by
    --generate too (its unit would start a server that ignores the number written in it)."""
    said = f"{cap}-per-source 100 is above {cap} 8: lower it, or raise {cap}"
    args = [*server, *PLAIN_SERVER, cap, "8", f"{cap}-per-source", "100"]
    one_line_error(inlets(*args), said)
    one_line_error(inlets(*args, "--generate=systemd"), said)


def test_a_total_handshake_cap_alone_below_the_per_source_default_still_starts(tmp_path: Path, token_file: Path) -> None:
    """The per-source default (16) is the total when that is lower: --max-handshakes 8 alone is no error."""
    control = free_port()
    server = spawn("tcp", "server", "--plaintext", "--token-file", str(token_file), "--control-addr", "127.0.0.1",
                   "--control-port", str(control), "--data-addr", "127.0.0.1", "--max-handshakes", "8",
                   log=tmp_path / "server.log")
    try:
        wait_for_text(tmp_path / "server.log", "event=started")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
