"""`inlets http server --letsencrypt-domain` as users run it: real processes, pebble, curl.

The server process obtains its certificate from pebble, the `inlets http client`
process serves the domain from a local app, and curl (trusting only pebble's root)
reaches the app over HTTPS; plain HTTP redirects. SIGTERM exits cleanly, keys stay
0600 and out of the log, and the server process never loads the ACME or crypto
libraries (each issuance runs in a child process).
"""

from __future__ import annotations

import functools
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.http import need
from helpers.letsencrypt import dnsmasq, pebble
from helpers.process import INLETS, ROOT, recorded_environments, recording_environments, spawn, stop_all, wait_for_text
from helpers.tunnel import free_port

DOMAIN = "site.example.test"


class _App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = f"hello from the app, proto={self.headers.get('X-Forwarded-Proto')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_server_and_client_commands_serve_https_from_pebble(tmp_path: Path, tls, token: str) -> None:
    curl = need("curl")
    app = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=app.serve_forever, args=(0.05,), daemon=True).start()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    control, http_port, https_port = free_port(), free_port(), free_port()
    le_path = tmp_path / "letsencrypt"
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns) as ca:
        server = spawn(
            "http", "server", "--control-addr", "127.0.0.1", "--control-port", str(control),
            "--data-addr", "127.0.0.1", "--port", str(http_port), "--https-port", str(https_port),
            "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file),
            "--letsencrypt-domain", DOMAIN, "--letsencrypt-email", "ops@example.test",
            "--letsencrypt-issuer", ca.directory, "--letsencrypt-ca", str(ca.api_ca),
            "--letsencrypt-path", str(le_path), log=tmp_path / "server.log",
        )
        client = spawn(
            "http", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file),
            "--tls-ca", str(tls.ca), "--upstream", f"{DOMAIN}=http://127.0.0.1:{app.server_address[1]}",
            log=tmp_path / "client.log",
        )
        try:
            wait_for_text(tmp_path / "server.log", f"event=certificate_issued domain={DOMAIN}", timeout=30)
            wait_for_text(tmp_path / "server.log", f"services=http:{DOMAIN}", timeout=15)
            root = tmp_path / "root.pem"
            root.write_bytes(ca.root_pem())
            result = subprocess.run(
                [curl, "-sS", "--max-time", "10", "--cacert", str(root), "--resolve", f"{DOMAIN}:{https_port}:127.0.0.1",
                 f"https://{DOMAIN}:{https_port}/"], capture_output=True, text=True, timeout=20,
            )
            assert result.stdout == "hello from the app, proto=https\n", result
            redirect = subprocess.run(
                [curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                 "--resolve", f"{DOMAIN}:{http_port}:127.0.0.1", f"http://{DOMAIN}:{http_port}/a?b"],
                capture_output=True, text=True, timeout=20,
            )
            assert redirect.stdout == f"308 https://{DOMAIN}:{https_port}/a?b", redirect
            # ACME ran in a child process: the long-running server never mapped the crypto/ACME libraries
            maps = Path(f"/proc/{server.pid}/maps").read_text()
            assert "cryptography" not in maps
        finally:
            codes = stop_all(client, server)
            app.shutdown()
    assert codes == [0, 0]
    log = (tmp_path / "server.log").read_text()
    assert "PRIVATE KEY" not in log and token not in log and "Traceback" not in log
    assert "level=WARNING" not in log and "level=ERROR" not in log, log
    keys = sorted([*le_path.rglob("account.key"), *le_path.rglob("key.pem")])
    store = keys[0].parent
    assert [str(k.relative_to(store)) for k in keys] == ["account.key", f"certs/{DOMAIN}/1/key.pem"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o700 for d in [le_path, store, *keys[1].parents[:3]])


def test_https_port_taken_is_a_one_line_error(tmp_path: Path, tls, token: str) -> None:
    from helpers.process import inlets
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = inlets(
            "http", "server", "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
            "--data-addr", "127.0.0.1", "--port", str(free_port()), "--https-port", str(taken),
            "--plaintext", "--token", token, "--letsencrypt-domain", DOMAIN,
            "--letsencrypt-path", str(tmp_path / "le"),
        )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f":{taken}" in lines[0] and "cannot listen" in lines[0], result.stderr


@pytest.mark.parametrize("under", ["", "/sub"])
def test_a_letsencrypt_path_that_is_a_file_is_said_so(tmp_path: Path, token: str, under: str) -> None:
    """It said "cannot keep certificates in FILE/127.0.0.1-...: File exists" (mkdir's EEXIST), naming no file."""
    from helpers.process import inlets

    (tmp_path / "afile").write_text("x")
    result = inlets("http", "server", "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
                    "--data-addr", "127.0.0.1", "--port", str(free_port()), "--https-port", str(free_port()),
                    "--plaintext", "--token", token, "--letsencrypt-domain", DOMAIN,
                    "--letsencrypt-path", str(tmp_path / "afile") + under)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result
    assert f"{tmp_path / 'afile'} is not a folder" in lines[0] and "File exists" not in lines[0], lines[0]


def test_an_acme_server_out_of_reach_is_said_in_words(tmp_path: Path, token_file: Path) -> None:
    """requests' text ("HTTPSConnectionPool(host=...) Max retries exceeded ... [Errno 111]") is no message."""
    dead = free_port()
    server = spawn("http", "server", "--token-file", str(token_file), "--plaintext", "--control-addr", "127.0.0.1",
                   "--control-port", str(free_port()), "--data-addr", "127.0.0.1", "--port", str(free_port()),
                   "--https-port", str(free_port()), "--letsencrypt-domain", DOMAIN,
                   "--letsencrypt-issuer", f"https://127.0.0.1:{dead}/dir", "--letsencrypt-path", str(tmp_path / "le"),
                   log=tmp_path / "server.log")
    try:
        log = wait_for_text(tmp_path / "server.log", "event=certificate_failed", timeout=60)
    finally:
        stop_all(server)
    line = next(line for line in log.splitlines() if "event=certificate_failed" in line)
    assert (f"cannot reach the ACME server https://127.0.0.1:{dead}/dir: connection refused: check the network "
            "and --letsencrypt-issuer") in line
    assert not any(word in line for word in ("HTTPSConnectionPool", "Errno", "NewConnectionError"))


def _start_unreachable(tmp_path: Path, token_file: Path, dead: int, log: str):
    """An HTTP server whose --letsencrypt-issuer is a port nothing listens on, its store in tmp_path/le."""
    return spawn("http", "server", "--token-file", str(token_file), "--plaintext", "--control-addr", "127.0.0.1",
                 "--control-port", str(free_port()), "--data-addr", "127.0.0.1", "--port", str(free_port()),
                 "--https-port", str(free_port()), "--letsencrypt-domain", DOMAIN,
                 "--letsencrypt-issuer", f"https://127.0.0.1:{dead}/dir",
                 "--letsencrypt-path", str(tmp_path / "le"), log=tmp_path / log)


def test_a_restart_keeps_the_wait_after_a_failure(tmp_path: Path, token_file: Path) -> None:
    """Each start asked the CA at once: a failing domain's backoff lived in memory only, so 5 restarts within
    an hour were 5 failed validations, Let's Encrypt's limit per hostname and hour (then refused for an hour)."""
    start = functools.partial(_start_unreachable, tmp_path, token_file, free_port())

    server = start("first.log")
    try:
        first = wait_for_text(tmp_path / "first.log", "event=certificate_failed", timeout=60)
    finally:
        stop_all(server)
    retry_at = first.split("retry_at=")[1].split()[0]
    server = start("second.log")
    try:
        kept = wait_for_text(tmp_path / "second.log", "event=certificate_retry_kept", timeout=20)
        time.sleep(2)  # the second start would have asked by now (it asked within 0.3 s)
        second = (tmp_path / "second.log").read_text()
    finally:
        codes = stop_all(server)
    assert codes == [0], second
    assert "event=certificate_requesting" not in second, second
    line = next(line for line in kept.splitlines() if "event=certificate_retry_kept" in line)
    assert f"domain={DOMAIN}" in line and f"retry_at={retry_at}" in line and "failures=1" in line, line
    [note] = (tmp_path / "le").rglob("retry.json")
    assert stat.S_IMODE(note.stat().st_mode) == 0o600 and str(note) in line, line


def test_a_damaged_retry_note_is_said_and_the_ca_asked(tmp_path: Path, token_file: Path) -> None:
    """Found by a review helper: a retry.json damaged (by hand, a full disk) was ignored without a word, and the CA
    asked at start with nothing in the log to say why the wait noted was not kept."""
    start = functools.partial(_start_unreachable, tmp_path, token_file, free_port())

    server = start("first.log")
    try:
        wait_for_text(tmp_path / "first.log", "event=certificate_failed", timeout=60)
    finally:
        stop_all(server)
    [note] = (tmp_path / "le").rglob("retry.json")
    note.write_text("{")
    server = start("second.log")
    try:
        second = wait_for_text(tmp_path / "second.log", "event=certificate_failed", timeout=60)
    finally:
        stop_all(server)
    line = next(line for line in second.splitlines() if "event=certificate_retry_unreadable" in line)
    assert f"domain={DOMAIN}" in line and str(note) in line and "the CA is asked now" in line, line
    assert "Traceback" not in second


def test_the_acme_child_gets_the_proxy_and_ca_settings_but_none_of_the_servers_secrets(tmp_path: Path,
                                                                                       token: str) -> None:
    """Each issuance runs in a child process, which inherited the server's whole environment ($INLETS_TOKEN, any
    cloud token its shell held). It keeps what dialling the CA reads (the proxy and CA variables), nothing more. A
    sitecustomize on $PYTHONPATH (kept: Python finds this installation's modules with it) writes each process's."""
    site = tmp_path / "site"
    env = {**recording_environments(site), "INLETS_TOKEN": token, "DIGITALOCEAN_ACCESS_TOKEN": "do-secret",
           "NO_PROXY": "127.0.0.1", "SSL_CERT_FILE": str(tmp_path / "ca.pem")}
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        server = subprocess.Popen(
            [*INLETS, "http", "server", "--plaintext", "--control-addr", "127.0.0.1", "--control-port",
             str(free_port()), "--data-addr", "127.0.0.1", "--port", str(free_port()), "--https-port",
             str(free_port()), "--letsencrypt-domain", DOMAIN, "--letsencrypt-issuer",
             f"https://127.0.0.1:{free_port()}/dir", "--letsencrypt-path", str(tmp_path / "le")],
            stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_for_text(log, "event=certificate_failed", timeout=60)
    finally:
        stop_all(server)
    children = recorded_environments(site, "inlets_py.runtime.acme.client")
    assert children
    assert "INLETS_TOKEN" not in children[0] and "DIGITALOCEAN_ACCESS_TOKEN" not in children[0], sorted(children[0])
    assert (children[0]["NO_PROXY"], children[0]["SSL_CERT_FILE"]) == ("127.0.0.1", str(tmp_path / "ca.pem"))
