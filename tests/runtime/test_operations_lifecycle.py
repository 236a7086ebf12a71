"""Running a tunnel day to day: inlets status, generated systemd units and Kubernetes YAML, token rotation,
graceful drain on SIGTERM and JSON logs. Real processes, and systemd-analyze where it exists."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers.proxy_daemons import binary
from helpers.process import (
    INLETS, ROOT, client_args, echo_once, inlets, server_args, spawn, stop_all, wait_for_text, wait_port,
)
from helpers.service_python import unit_inlets
from helpers.tunnel import TlsFiles, free_port


def test_status_shows_clients_and_refuses_a_wrong_token(
    tmp_path: Path, tls: TlsFiles, token: str, token_file: Path, echo_port: int
) -> None:
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=tmp_path / "client.log")
    try:
        wait_port(public)
        assert echo_once(public, b"x" * 1000) == b"x" * 1000
        url = f"wss://127.0.0.1:{control}"
        table = inlets("status", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca))
        assert table.returncode == 0, table.stderr
        assert "inlets tcp server" in table.stdout and f"tcp:{public}" in table.stdout
        # not "IN"/"OUT", which /metrics' tcp_dataplane_bytes_total{direction} counts the other way round
        assert table.stdout.splitlines()[1].endswith("STREAMS  FROM CLIENT  TO CLIENT"), table.stdout
        doc = json.loads(inlets("status", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca),
                                "--json").stdout)
        (entry,) = doc["clients"]
        assert entry["services"] == [f"tcp:{public}"] and entry["bytes_in"] >= 1000 and entry["bytes_out"] >= 1000
        assert {"version", "mode", "started", "hostname"} <= set(doc)
        assert token not in json.dumps(doc)
        wrong = inlets("status", "--url", url, "--token", "nope", "--tls-ca", str(tls.ca))
        assert wrong.returncode == 1 and "refused the token (HTTP 401)" in wrong.stderr
    finally:
        stop_all(client, server)
    gone = inlets("status", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca", str(tls.ca))
    assert gone.returncode == 1 and "cannot reach 127.0.0.1" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_past_the_failed_login_limit_status_and_the_client_say_logins_from_this_address_are_refused(
    tmp_path: Path, tls: TlsFiles, token_file: Path
) -> None:
    """After 10 wrong tokens from an address the server answers 429 to every login from it for the rest of the
    minute, the right token's too (else 429 told a guesser a token was wrong). Status and the client said "the
    server refused the token", which sent the user to check a right token; the client exited for it. Now both say
    the server refuses logins from this address and for how long; status exits 1, the client keeps retrying."""
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = None
    try:
        wait_port(control)
        url = f"wss://127.0.0.1:{control}"
        statuses = [inlets("status", "--url", url, "--token", "nope", "--tls-ca", str(tls.ca)) for _ in range(11)]
        assert "(HTTP 401)" in statuses[0].stderr
        words = (r"the server refuses logins from this address for [0-9]+ s after too many failed ones \(a wrong "
                 r"token from this address: this client's, or another client's behind the same address\)")
        for result in (statuses[-1], inlets("status", "--url", url, "--token-file", str(token_file), "--tls-ca",
                                            str(tls.ca))):  # the right token too
            assert result.returncode == 1 and result.stdout == "", result.stderr
            assert re.fullmatch(f"inlets: error: {words}: try again then\n", result.stderr), result.stderr
        client = spawn(*client_args(control, tls, token_file, "--upstream", "127.0.0.1", "--ports", "80"),
                       log=tmp_path / "client.log")
        line = wait_for_text(tmp_path / "client.log", "event=connect_failed").splitlines()[-1]
        assert re.search(f'error="{words}" retry_in=', line), line
        assert client.poll() is None  # not given up: it gets in once the minute is up
    finally:
        stop_all(*([client] if client else []), server)


def test_generated_systemd_units_verify(tmp_path: Path) -> None:
    analyze = binary("systemd-analyze")
    files = ["--tls-cert", "/etc/inlets/server.crt", "--tls-key", "/etc/inlets/server.key"]  # outside PrivateTmp's /tmp
    token_file = "/etc/inlets/server-token"
    units = {
        "inlets-tcp-server.service": unit_inlets("tcp", "server", "--control-port", "8123", *files, "--token-file",
                                                 token_file, "--allow-ports", "80,443", "--generate", "systemd"),
        "inlets-tcp-client.service": unit_inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token",
                                                 "secret-x", "--upstream", "127.0.0.1", "--ports", "80",
                                                 "--generate=systemd"),
    }
    for name, result in units.items():
        assert result.returncode == 0, result.stderr
        path = tmp_path / name
        path.write_text(result.stdout)
        check = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and check.stderr.strip() == "", check.stderr
        assert "Restart=always" in result.stdout and "NoNewPrivileges=true" in result.stdout
        assert "--generate" not in result.stdout
    client_unit = units["inlets-tcp-client.service"].stdout
    assert "secret-x" not in client_unit and "--token-file /etc/inlets/token" in client_unit
    assert "CapabilityBoundingSet=\n" in client_unit  # a client needs no capability
    assert f"--token-file {token_file}" in units["inlets-tcp-server.service"].stdout


def test_generated_kubernetes_yaml(tls: TlsFiles, token: str, token_file: Path) -> None:
    loopback = server_args(9123, tls, token_file, "--allow-ports", "2222", "--generate", "k8s_yaml")
    refused = inlets(*loopback)  # the Service reaches the pod's own address, never its loopback
    assert refused.returncode == 2 and "--control-addr 127.0.0.1 cannot be used with --generate=k8s_yaml" in refused.stderr
    pod = [arg for n, arg in enumerate(loopback) if arg not in ("--control-addr", "--data-addr")
           and loopback[n - 1] not in ("--control-addr", "--data-addr")]
    result = inlets(*pod)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    kinds = {doc["kind"]: doc for doc in docs}
    assert set(kinds) == {"Secret", "Deployment", "Service"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["tcp", "server"] and token not in " ".join(args)
    assert args[args.index("--token-file") + 1] == "/var/run/secrets/inlets/token"
    assert args[args.index("--tls-key") + 1] == "/var/run/secrets/inlets/tls-key"
    import base64

    secret = kinds["Secret"]["data"]
    assert base64.b64decode(secret["token"]) == token_file.read_bytes()  # the token file, as it is
    assert base64.b64decode(secret["tls-key"]) == tls.key.read_bytes()
    assert {p["port"] for p in kinds["Service"]["spec"]["ports"]} == {9123, 2222}
    client = inlets("tcp", "client", "--url", "wss://h:8123", "--token-file", str(token_file),
                    "--upstream", "2222=db:22", "--generate", "k8s_yaml")
    assert {d["kind"] for d in yaml.safe_load_all(client.stdout)} == {"Secret", "Deployment"}


class Traffic(threading.Thread):
    """Short connections through the tunnel, one after another, until stopped; counts failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                payload = f"n{self.ok}".encode()
                if echo_once(self.port, payload) != payload:
                    raise AssertionError("wrong echo")
                self.ok += 1
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))
            time.sleep(0.01)

    def carries(self, more: int = 10, timeout: float = 30) -> None:
        """Wait until ``more`` further connections went through: traffic flows in this phase, however loaded the
        machine (a fixed 0.5 s per phase carried 27 connections in all on a loaded machine, 50 were asked for)."""
        target, deadline = self.ok + more, time.monotonic() + timeout
        while self.ok < target and not self.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.ok >= target, f"{self.ok} connections, {target} awaited: {self.failures[:3]}"


def test_token_rotation_keeps_traffic_flowing(tmp_path: Path, tls: TlsFiles, echo_port: int) -> None:
    old, new = "old-token-" + "a" * 40, "new-token-" + "b" * 40
    server_tokens, client_token = tmp_path / "server-tokens", tmp_path / "client-token"
    server_tokens.write_text(old + "\n")
    client_token.write_text(old + "\n")
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, server_tokens), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, client_token, "--upstream", f"{public}=127.0.0.1:{echo_port}"),
                   log=tmp_path / "client.log")
    traffic = Traffic(public)
    try:
        wait_port(public)
        traffic.start()
        traffic.carries()
        server_tokens.write_text(old + "\n" + new + "\n")  # 1. the server accepts both
        server.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=tokens_reloaded count=2")
        client_token.write_text(new + "\n")  # 2. the client reconnects with the new one, then lets the old go
        client.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=peer_draining")
        traffic.carries()
        server_tokens.write_text(new + "\n")  # 3. the old token is gone
        server.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=tokens_reloaded count=1")
        traffic.carries()
        traffic.halt.set()
        traffic.join(10)
        status = inlets("status", "--url", f"wss://127.0.0.1:{control}", "--token", new, "--tls-ca", str(tls.ca), "--json")
        assert len(json.loads(status.stdout)["clients"]) == 1
    finally:
        traffic.halt.set()
        codes = stop_all(client, server)
    assert traffic.failures == [], (traffic.ok, traffic.failures[:3])
    logs = (tmp_path / "server.log").read_text() + (tmp_path / "client.log").read_text()
    assert old not in logs and new not in logs
    assert codes == [0, 0]


def test_removing_the_old_token_lets_the_rotated_clients_old_connection_finish_and_cuts_the_others(
        tmp_path: Path, tls: TlsFiles, echo_port: int) -> None:
    """Step 3 of a rotation (the old token removed) closed every connection made with the old token, so a
    download still running on the connection the rotated client was draining was reset mid-way. Now that one
    finishes (within --drain-timeout), and a client that never rotated is cut at once, as before."""
    import hashlib
    import os

    old, new = "old-token-" + "c" * 40, "new-token-" + "d" * 40
    server_tokens, rotated_token, stale_token = tmp_path / "server-tokens", tmp_path / "rotated", tmp_path / "stale"
    server_tokens.write_text(old + "\n" + new + "\n")  # step 1 done: the server accepts both
    rotated_token.write_text(old + "\n")
    stale_token.write_text(old + "\n")
    body = os.urandom(8 * 1024 * 1024)
    listener = socket.create_server(("127.0.0.1", 0))

    def slow_download() -> None:  # one connection: 8 MiB over ~3 s, started when it says "go"
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if conn.recv(2) == b"go":
                    for i in range(16):
                        conn.sendall(body[i * len(body) // 16:(i + 1) * len(body) // 16])
                        time.sleep(0.2)

    threading.Thread(target=slow_download, daemon=True).start()
    control, public, other = free_port(), free_port(), free_port()
    server = spawn(*server_args(control, tls, server_tokens, "--drain-timeout", "20"), log=tmp_path / "server.log")
    rotated = spawn(*client_args(control, tls, rotated_token, "--upstream",
                                 f"{public}=127.0.0.1:{listener.getsockname()[1]}"), log=tmp_path / "rotated.log")
    stale = spawn(*client_args(control, tls, stale_token, "--upstream", f"{other}=127.0.0.1:{echo_port}"),
                  log=tmp_path / "stale.log")
    try:
        wait_port(public)
        wait_port(other)
        time.sleep(0.2)
        assert echo_once(other, b"before") == b"before"
        sock = socket.create_connection(("127.0.0.1", public), timeout=10)
        sock.sendall(b"go")
        first = sock.recv(1 << 16)
        rotated_token.write_text(new + "\n")  # step 2: the client reconnects with the new token, drains the old
        rotated.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=peer_draining")
        server_tokens.write_text(new + "\n")  # step 3 at once, the download still under way on the old connection
        server.send_signal(signal.SIGHUP)
        wait_for_text(tmp_path / "server.log", "event=tokens_reloaded count=1 clients_revoked=2")
        received = bytearray(first)
        while chunk := sock.recv(1 << 20):
            received += chunk
        sock.close()
        assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest(), (len(received), len(body))
        log = (tmp_path / "server.log").read_text()
        assert "then=drain" in log and "then=close" in log, log[-3000:]
        with pytest.raises(OSError):  # the client that kept the old token serves nothing now
            if echo_once(other, b"after") != b"after":
                raise ConnectionResetError("not echoed")
    finally:
        stop_all(rotated, stale, server)
        listener.close()


def test_sigterm_lets_open_streams_finish_then_exits(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """A download in progress completes after SIGTERM; new connections are refused meanwhile."""
    size = 8 * 1024 * 1024
    slow_started = threading.Event()

    def slow_upstream(listener: socket.socket) -> None:
        while True:  # every connection: probes close at once, the real one says "go"
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            if conn.recv(2) != b"go":
                return
            slow_started.set()
            for _ in range(16):  # 8 MiB over ~1.6 s
                conn.sendall(b"d" * (size // 16))
                time.sleep(0.1)

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=slow_upstream, args=(listener,), daemon=True).start()
    control, public = free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file, "--drain-timeout", "20"), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{listener.getsockname()[1]}"),
                   log=tmp_path / "client.log")
    try:
        wait_port(public)
        time.sleep(0.2)
        sock = socket.create_connection(("127.0.0.1", public), timeout=10)
        sock.sendall(b"go")
        assert slow_started.wait(10)
        server.send_signal(signal.SIGTERM)
        wait_for_text(tmp_path / "server.log", "event=draining")
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):  # the data port is closed while draining
            socket.create_connection(("127.0.0.1", public), timeout=2)
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        sock.close()
        assert received == size
        assert server.wait(20) == 0
    finally:
        stop_all(client, server)
        listener.close()


#: Reads JSON log lines on stdin as a pipeline does: one object each, or it fails; prints the objects as one list.
JSON_LINES_READER = ("import json, sys\n"
                     "records = [json.loads(line) for line in sys.stdin if line.strip()]\n"
                     "assert all(isinstance(r, dict) for r in records)\n"
                     "print(json.dumps(records))")


def test_json_logs_have_one_key_per_field(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    """The fields stayed inside ``msg`` (``"msg": "event=started mode=tcp ..."``): ``jq 'select(.event=="x")'``
    found nothing. Each is a key of its own now, as a pipeline's JSON parser reads it; ``msg`` stays whole."""
    control, upstream_port, public = free_port(), free_port(), free_port()
    pipe_out, pipe_in = os.pipe()  # inlets ... 2>&1 | python -c READER
    reader = subprocess.Popen([sys.executable, "-c", JSON_LINES_READER], stdin=pipe_out, stdout=subprocess.PIPE,
                              text=True)
    server = subprocess.Popen([*INLETS, *server_args(control, tls, token_file, "--log-format", "json")],
                              stderr=pipe_in, stdout=subprocess.DEVNULL, cwd=ROOT)
    os.close(pipe_out), os.close(pipe_in)  # the server holds the only writer: the reader ends when it does
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"{public}=127.0.0.1:{upstream_port}"), log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
    finally:
        stop_all(client, server)
    out, _ = reader.communicate(timeout=15)
    assert reader.returncode == 0, out
    records = json.loads(out)
    assert records and all({"time", "level", "logger", "event", "msg"} <= set(r) for r in records), records
    started = next(r for r in records if r["event"] == "started")
    assert started["mode"] == "tcp" and started["control"] == f"wss://127.0.0.1:{control}"
    assert started["msg"].startswith("event=started mode=tcp ")
    joined = next(r for r in records if r["event"] == "client_connected")
    assert re.fullmatch(r"[0-9a-f]{12}", joined["client"]) and joined["remote"].startswith("127.0.0.1:")
    assert joined["services"] == f"tcp:{public}" and joined["logger"].startswith("inlets")
    assert any(r["event"] == "draining" and r["timeout"] == "30.0s" for r in records)  # strings, as written
