"""`inlets http server|client` as real processes: one-line errors, traffic, bounded memory on a 1 GiB upload."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.http import LOOPBACK, Stack, http_server_argv, need
from helpers.process import wait_while_running
from helpers.tunnel import free_port

INLETS = [str(Path(sys.executable).parent / "inlets")]


def inlets(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(INLETS + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "ftp://x"], "upstream must be http://"),
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "a.test=http://x/path"], "no path"),
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "bad host=http://x"], "invalid host"),
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "http://a", "--upstream", "http://b"],
     "more than one catch-all"),
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "http://a",
      "--basic-auth-username", "u"], "go together"),
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "http://a",
      "--request-header-add", "NoColon"], "Name: value"),
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "http://a",
      "--request-header-remove", "Content-Length"], "--request-header-remove Content-Length: framing"),
    (["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "http://a",
      "--response-header-add", "Content-Length: 0"], "--response-header-add Content-Length: framing"),
    (["http", "client", "--url", "https://h:1", "--token", "t", "--upstream", "http://a"], "--url must start"),
    (["http", "server", "--token", "t"], "choose one of"),
    (["http", "server", "--token", "t", "--plaintext", "--port", "0"], "--port"),
    (["http", "server", "--token", "t", "--plaintext", "--upstream-timeout", "abc"], "--upstream-timeout"),
])
def test_bad_input_is_one_line(args, message):
    out = inlets(*args)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def _status(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) // 1024  # type: ignore[union-attr]


def test_processes_carry_a_1gib_upload_in_bounded_memory(tmp_path):
    """The issue's bound: a 1 GiB chunked upload must not grow the server's memory past a few MiB;
    nor may a download whose user stopped reading."""
    need("curl")
    token = secrets.token_hex(32)
    (tmp_path / "token").write_text(token + "\n")
    stack = Stack()
    procs: list[subprocess.Popen] = []
    try:
        app, up = stack.upstream("U")
        control, data = free_port(), free_port()
        server = subprocess.Popen(INLETS + http_server_argv(tmp_path, control, data, tmp_path / "token"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(server)
        wait_while_running(lambda: (tmp_path / "tls" / "ca.crt").exists(), 20, "auto TLS", server)
        client = subprocess.Popen(INLETS + [
            "http", "client", "--url", f"wss://{LOOPBACK}:{control}", "--token-file", str(tmp_path / "token"),
            "--tls-ca", str(tmp_path / "tls" / "ca.crt"), "--upstream", f"up.test=http://{LOOPBACK}:{up}",
            "--basic-auth-username", "user", "--basic-auth-password", "pass-word",
            "--response-header-add", "X-Via: tunnel"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(client)

        def served() -> bool:
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: up.test",
                                  "-u", "user:pass-word",
                                  f"http://{LOOPBACK}:{data}/"], capture_output=True, text=True, timeout=10)
            return out.stdout == "200"

        wait_while_running(served, 20, "the tunnel to serve", client)
        # the client's flags reach the server: protection and response headers
        plain = subprocess.run(["curl", "-s", "-i", "-H", "Host: up.test", f"http://{LOOPBACK}:{data}/"],
                               capture_output=True, timeout=10).stdout
        assert plain.startswith(b"HTTP/1.1 401") and b"x-via: tunnel" not in plain.lower()
        authed = subprocess.run(["curl", "-s", "-i", "-u", "user:pass-word", "-H", "Host: up.test",
                                 f"http://{LOOPBACK}:{data}/"], capture_output=True, timeout=10).stdout
        assert authed.startswith(b"HTTP/1.1 200") and b"x-via: tunnel" in authed.lower()
        baseline = _status(server.pid, "VmRSS")
        size = 1024 * 1024 * 1024
        feeder = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
        started = time.monotonic()
        out = subprocess.run(["curl", "-sS", "-m", "90", "-H", "Host: up.test", "-u", "user:pass-word", "-T", "-",
                              f"http://{LOOPBACK}:{data}/sha256"], stdin=feeder.stdout, capture_output=True,
                             timeout=100)
        feeder.wait(10)
        elapsed = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["size"] == size
        peak = _status(server.pid, "VmHWM")
        growth = peak - baseline
        print(f"1 GiB upload in {elapsed:.1f}s; server RSS {baseline} MiB -> peak {peak} MiB (+{growth} MiB)")
        assert growth < 16, f"server memory grew by {growth} MiB during a 1 GiB upload"

        # the other direction: a user who stops reading a 512 MiB download holds the server at its window
        with socket.create_connection((LOOPBACK, data), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: up.test\r\nAuthorization: Basic dXNlcjpwYXNzLXdvcmQ=\r\n\r\n"
                         % (512 * 1024 * 1024))
            received = len(sock.recv(65536))
            time.sleep(1.5)  # not reading: the tunnel must stall this stream, not buffer it
            stalled = _status(server.pid, "VmRSS")
            while received < 512 * 1024 * 1024:
                piece = sock.recv(1024 * 1024)
                assert piece, "download cut short"
                received += len(piece)
        print(f"stalled 512 MiB download: server RSS {stalled} MiB (baseline {baseline} MiB)")
        assert stalled - baseline < 16, f"server memory grew to {stalled} MiB while the user did not read"
    finally:
        for proc in reversed(procs):
            proc.terminate()
        logs = "".join(proc.communicate(timeout=10)[1] for proc in procs)
        stack.close()
    assert token not in logs and "pass-word" not in logs  # secrets never logged
    assert all(proc.returncode == 0 for proc in procs), logs  # SIGTERM: clean exit


def test_site_protection_secrets_from_a_file_or_the_environment_stay_off_the_command_line(tmp_path):
    """--bearer-token-file and $INLETS_BASIC_AUTH_PASSWORD protect a site like the inline flags, unseen by ps. The
    password holds a space and a letter outside ASCII, as a browser sends them (base64 of UTF-8): only control
    characters are refused (test_cli_secrets)."""
    need("curl")
    (tmp_path / "token").write_text(secrets.token_hex(32) + "\n")
    (tmp_path / "bearer").write_text("bearer-from-a-file\n")
    stack = Stack()
    procs: list[subprocess.Popen] = []
    try:
        app, up = stack.upstream("U")
        control, data = free_port(), free_port()
        procs.append(subprocess.Popen(INLETS + http_server_argv(tmp_path, control, data, tmp_path / "token"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        wait_while_running(lambda: (tmp_path / "tls" / "ca.crt").exists(), 20, "auto TLS", procs[0])
        common = ["http", "client", "--url", f"wss://{LOOPBACK}:{control}", "--token-file", str(tmp_path / "token"),
                  "--tls-ca", str(tmp_path / "tls" / "ca.crt")]
        procs.append(subprocess.Popen(INLETS + common + [
            "--upstream", f"bearer.test=http://{LOOPBACK}:{up}", "--bearer-token-file", str(tmp_path / "bearer")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        procs.append(subprocess.Popen(INLETS + common + [
            "--upstream", f"basic.test=http://{LOOPBACK}:{up}", "--basic-auth-username", "alice"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "INLETS_BASIC_AUTH_PASSWORD": "basic-fröm the env"}))

        def code(host: str, *credentials: str) -> str:
            return subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}",
                                   *credentials, f"http://{LOOPBACK}:{data}/"], capture_output=True, text=True,
                                  timeout=10).stdout

        wait_while_running(lambda: code("bearer.test") == "401" and code("basic.test") == "401", 20, "both sites", procs[1])
        assert code("bearer.test", "-H", "Authorization: Bearer bearer-from-a-file") == "200"
        assert code("bearer.test", "-H", "Authorization: Bearer wrong") == "401"
        assert code("basic.test", "-u", "alice:basic-fröm the env") == "200"
        assert code("basic.test", "-u", "alice:wrong") == "401"
        shown = " ".join(Path(f"/proc/{p.pid}/cmdline").read_text() for p in procs)  # what ps shows
        assert "bearer-from-a-file" not in shown and "basic-fröm the env" not in shown
    finally:
        for proc in reversed(procs):
            proc.terminate()
        logs = "".join(proc.communicate(timeout=10)[1] for proc in procs)
        stack.close()
    assert "bearer-from-a-file" not in logs and "basic-fröm the env" not in logs


@pytest.mark.parametrize("args,env,message", [
    (["--bearer-token", "x", "--bearer-token-file", "/etc/hostname"], {},
     "give --bearer-token or --bearer-token-file, not both"),
    (["--bearer-token-file", "/nonexistent/bearer"], {}, "--bearer-token-file file not found: /nonexistent/bearer"),
    (["--basic-auth-username", "u"], {"INLETS_BEARER_TOKEN": "t"}, "--basic-auth-password (or its file or"),
    # a byte that is not UTF-8 (Latin-1 é) given inline: a UnicodeEncodeError traceback; the value is never shown
    # (a bearer token is ASCII, as --token: that, not UTF-8, is what to fix)
    (["--bearer-token", "caf\udce9"], {}, "the token from --bearer-token holds a character a token cannot have"),
    (["--basic-auth-username", "u", "--basic-auth-password", "caf\udce9"], {}, "--basic-auth-password is not UTF-8"),
])
def test_secret_forms_are_one_line_errors(args, env, message):
    out = subprocess.run(INLETS + ["http", "client", "--url", "wss://h:1", "--token", "t", "--upstream", "http://a",
                                   *args], capture_output=True, text=True, timeout=20, env={**os.environ, **env})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
