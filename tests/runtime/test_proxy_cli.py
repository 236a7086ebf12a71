"""`inlets ... client --proxy` as users run it: real processes, a real tinyproxy, debug logs checked
for the proxy password, one-line errors for bad proxy settings."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers.proxy_daemons import Daemon, dante, free_port, tinyproxy
from helpers.process import INLETS, echo_once, inlets
from helpers.tunnel import TlsFiles, make_tls

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "bob", "pw-Kx3-cli-never-logged"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "WSS_PROXY", "wss_proxy",
              "SOCKS_PROXY", "socks_proxy", "HTTP_PROXY", "http_proxy")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    return {**env, **extra}


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as handle:
        return subprocess.Popen([*INLETS, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=env or clean_env())


def finish(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise AssertionError("did not stop on SIGTERM") from None
    return process.returncode


def wait_for(check, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded in time
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory):
    daemon = tinyproxy(tmp_path_factory.mktemp("tinyproxy-cli"), auth=(USER, PASSWORD))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def socks_proxy(tmp_path_factory: pytest.TempPathFactory):
    daemon = dante(tmp_path_factory.mktemp("dante-cli"))
    yield daemon
    daemon.stop()


@pytest.fixture
def tunnel_server(tmp_path: Path, tls: TlsFiles, token: str):
    """An `inlets tcp server` process; yields (control port, token file, log)."""
    token_file = tmp_path / "token"
    token_file.write_text(token)
    control, log = free_port(), tmp_path / "server.log"
    process = spawn(["tcp", "server", "--control-addr", "127.0.0.1", "--control-port", str(control), "--data-addr",
                     "127.0.0.1", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file)],
                    log)
    wait_for(lambda: accepts(control), "the tunnel server")
    yield control, token_file, log
    finish(process)


def client_args(control: int, token_file: Path, tls: TlsFiles, public: int, upstream_port: int) -> list[str]:
    return ["tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca",
            str(tls.ca), "--upstream", f"{public}=127.0.0.1:{upstream_port}", "--log-level", "debug"]


def test_client_uses_https_proxy_from_the_environment_and_never_logs_its_password(
    tmp_path: Path, tls: TlsFiles, auth_proxy: Daemon, tunnel_server, echo_port: int
) -> None:
    control, token_file, server_log = tunnel_server
    public, log = free_port(), tmp_path / "client.log"
    env = clean_env(HTTPS_PROXY=f"http://{USER}:{PASSWORD}@127.0.0.1:{auth_proxy.port}")
    client = spawn(client_args(control, token_file, tls, public, echo_port), log, env)
    try:
        wait_for(lambda: accepts(public), "the data port the client advertised")
        with socket.create_connection(("127.0.0.1", public), timeout=5) as sock:
            sock.sendall(b"through tinyproxy")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"through tinyproxy"
    finally:
        assert finish(client) == 0
    output = log.read_text()
    assert f"event=proxy proxy=http://{USER}@127.0.0.1:{auth_proxy.port} source=HTTPS_PROXY" in output
    assert f"remote={auth_proxy.bound_from}:" in server_log.read_text(), "the client did not come through the proxy"
    assert PASSWORD not in output and "Traceback" not in output


@pytest.mark.parametrize("form", ["--proxy-password-file", "INLETS_PROXY_PASSWORD"])
def test_proxy_password_from_a_file_or_the_environment_stays_off_the_command_line(
    tmp_path: Path, tls: TlsFiles, auth_proxy: Daemon, tunnel_server, echo_port: int, form: str
) -> None:
    control, token_file, server_log = tunnel_server
    public, log = free_port(), tmp_path / "client.log"
    args = [*client_args(control, token_file, tls, public, echo_port), "--proxy", f"http://{USER}@127.0.0.1:{auth_proxy.port}"]
    env = clean_env()
    if form == "--proxy-password-file":
        (tmp_path / "proxy-password").write_text(PASSWORD + "\n")
        args += [form, str(tmp_path / "proxy-password")]
    else:
        env[form] = PASSWORD
    client = spawn(args, log, env)
    try:
        wait_for(lambda: accepts(public), "the data port the client advertised")
        assert PASSWORD not in Path(f"/proc/{client.pid}/cmdline").read_text()  # what ps shows
        assert echo_once(public, b"password kept off ps") == b"password kept off ps"
    finally:
        assert finish(client) == 0
    assert f"remote={auth_proxy.bound_from}:" in server_log.read_text(), "the client did not come through the proxy"
    assert PASSWORD not in log.read_text()


def test_client_uses_all_proxy_socks5_from_the_environment(
    tmp_path: Path, tls: TlsFiles, socks_proxy: Daemon, tunnel_server, echo_port: int
) -> None:
    """The command runs on uvloop when installed: SOCKS through it, end to end."""
    control, token_file, server_log = tunnel_server
    public, log = free_port(), tmp_path / "client.log"
    env = clean_env(ALL_PROXY=f"socks5://127.0.0.1:{socks_proxy.port}")
    client = spawn(client_args(control, token_file, tls, public, echo_port), log, env)
    try:
        wait_for(lambda: accepts(public), "the data port the client advertised")
        with socket.create_connection(("127.0.0.1", public), timeout=5) as sock:
            sock.sendall(b"through dante")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"through dante"
    finally:
        assert finish(client) == 0
    assert f"event=proxy proxy=socks5://127.0.0.1:{socks_proxy.port} source=ALL_PROXY" in log.read_text()
    assert f"remote={socks_proxy.bound_from}:" in server_log.read_text(), "the client did not come through the proxy"


def test_wrong_proxy_password_is_one_line_per_attempt_and_the_client_keeps_retrying(
    tmp_path: Path, tls: TlsFiles, auth_proxy: Daemon, tunnel_server
) -> None:
    control, token_file, _ = tunnel_server
    log = tmp_path / "client.log"
    wrong = "not-" + PASSWORD
    proxy = f"http://{USER}:{wrong}@127.0.0.1:{auth_proxy.port}"
    client = spawn([*client_args(control, token_file, tls, free_port(), 9), "--proxy", proxy], log)
    try:
        wait_for(lambda: log.read_text().count("event=connect_failed") >= 2, "two failed attempts")
        assert client.poll() is None, "the client gave up instead of retrying"
    finally:
        assert finish(client) == 0
    output = log.read_text()
    failed = [line for line in output.splitlines() if "event=connect_failed" in line]
    assert all(f"proxy http://{USER}@127.0.0.1:{auth_proxy.port} refused CONNECT 127.0.0.1:{control}: HTTP 401" in line
               for line in failed), failed
    assert wrong not in output and PASSWORD not in output and "Traceback" not in output


@pytest.mark.parametrize("command", ["tcp", "http"])
@pytest.mark.parametrize("proxy, env, message", [
    ("ftp://u:hush-hush@corp:21", {}, "--proxy: proxy scheme 'ftp' is not supported"),
    ("http://u@corp:3128", {}, "--proxy: invalid proxy http://u@corp:3128: username provided without password "
                               "(keep it in --proxy-password-file or $INLETS_PROXY_PASSWORD)"),
    ("http://corp:3128", {"INLETS_PROXY_PASSWORD": "hush-hush"},
     "$INLETS_PROXY_PASSWORD: --proxy http://corp:3128 names no user: use http://USER@HOST:PORT"),
    ("http://u:hush-hush@corp:3128", {"INLETS_PROXY_PASSWORD": "hush-hush"},
     "$INLETS_PROXY_PASSWORD: --proxy http://u@corp:3128 already holds a password: give it once"),
    (None, {"INLETS_PROXY_PASSWORD": "hush-hush"}, "a proxy password needs --proxy http://USER@HOST:PORT"),
    (None, {"HTTPS_PROXY": "http://u:hush-hush@:3128"}, "HTTPS_PROXY: the proxy URL names no host"),
    (None, {"ALL_PROXY": "gopher://corp:70"}, "ALL_PROXY: proxy scheme 'gopher' is not supported"),
    # websockets reads a port of 0 as none: the CONNECT went to port 80 (socks5: 1080)
    ("http://127.0.0.1:0", {}, "--proxy: invalid proxy http://127.0.0.1:0: '0' is not a port between 1 and 65535"),
    ("socks5://127.0.0.1:0", {}, "--proxy: invalid proxy socks5://127.0.0.1:0: '0' is not a port between 1 and 65535"),
    ("http://u:hush-hush@127.0.0.1:0", {}, "invalid proxy http://u@127.0.0.1:0: '0' is not a port between 1 and 65535"),
    ("http://u@127.0.0.1:0", {"INLETS_PROXY_PASSWORD": "hush-hush"}, "invalid proxy http://u@127.0.0.1:0: '0' is not"),
    ("http://127.0.0.1:٣١٢٨", {}, "invalid proxy http://127.0.0.1:٣١٢٨: '٣١٢٨' is not a port between 1 and 65535"),
    (None, {"HTTPS_PROXY": "http://127.0.0.1:0"}, "HTTPS_PROXY: invalid proxy http://127.0.0.1:0: '0' is not a port"),
    # a '#', '/' or '?' in the password ends urlsplit's authority there: the password's start was then shown as the
    # host and port ("invalid proxy http://u:hush-hush: 'hush-hush' is not a port between 1 and 65535")
    ("http://u:hush-hush#1@127.0.0.1:3128", {}, "invalid proxy http://u@127.0.0.1:3128: a '/', '?' or '#' in its"),
    (None, {"HTTPS_PROXY": "http://u:hush-hush/1@127.0.0.1:3128"}, "HTTPS_PROXY: invalid proxy http://u@127.0.0.1:3128"),
    (None, {"ALL_PROXY": "socks5://u:hush-hush?1@127.0.0.1:1080"}, "ALL_PROXY: invalid proxy socks5://u@127.0.0.1:1080"),
    ("http://hush-hush/1@127.0.0.1:3128", {}, "invalid proxy http://127.0.0.1:3128: a '/', '?' or '#' in its"),
    # said as "invalid proxy http://?:3128: hostname isn't provided" (python-socks' words, the URL shown mangled)
    ("http://::1:3128", {}, "--proxy: the proxy URL's IPv6 address needs brackets: write it as http://[2001:db8::1]:PORT"),
    ("http://", {}, "--proxy: the proxy URL names no host: write it as http://HOST:PORT"),
    ("socks5://u:hush-hush@:1080", {}, "--proxy: the proxy URL names no host"),
    # a host no resolver could find was taken, then "name resolution failed" at every retry, for ever
    ("not a host", {}, "--proxy: 'not a host' is not a valid host name: give an IP address or a DNS name"),
    ("http://u:hush-hush@not a host:3128", {}, "--proxy: 'not a host' is not a valid host name"),
    (None, {"HTTPS_PROXY": "http://not a host:3128"}, "HTTPS_PROXY: 'not a host' is not a valid host name"),
])
def test_bad_proxy_settings_are_one_line_errors(command: str, proxy: str | None, env: dict, message: str) -> None:
    upstream = ["--upstream", "22=127.0.0.1:22"] if command == "tcp" else ["--upstream", "http://127.0.0.1:8080"]
    args = [command, "client", "--url", "wss://127.0.0.1:1", "--token", "x", *upstream]
    if proxy:
        args += ["--proxy", proxy]
    done = inlets(*args, timeout=30, environment=clean_env(**env))
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("inlets: error: "), done.stderr
    assert message in done.stderr and "hush-hush" not in done.stderr, done.stderr


MALFORMED = "--proxy: the proxy URL has a malformed [IPv6] address: write it as http://[2001:db8::1]:PORT"


@pytest.mark.parametrize("args, env", [
    (["tcp", "client", "--upstream", "22=127.0.0.1:22", "--proxy", "http://u@[::1"], {"INLETS_PROXY_PASSWORD": "hush-hush"}),
    (["http", "client", "--upstream", "http://127.0.0.1:8080", "--proxy", "http://u@[::1"],
     {"INLETS_PROXY_PASSWORD": "hush-hush"}),
    (["status", "--proxy", "http://u@[::1"], {"INLETS_PROXY_PASSWORD": "hush-hush"}),
    (["tcp", "client", "--upstream", "22=127.0.0.1:22", "--proxy", "http://[::1", "--generate", "systemd"], {}),
    (["http", "client", "--upstream", "http://127.0.0.1:8080", "--proxy", "http://u:hush-hush@[::1", "--generate",
      "k8s_yaml"], {}),
], ids=lambda value: " ".join(value) if isinstance(value, list) else ",".join(value))
def test_a_malformed_proxy_url_is_one_line_with_a_password_or_generate(args: list[str], env: dict) -> None:
    """Only the plain path checked the URL before splitting it: adding the password ($INLETS_PROXY_PASSWORD,
    --proxy-password-file) or taking it out for --generate met urlsplit's "ValueError: Invalid IPv6 URL"."""
    done = inlets(*args, "--url", "wss://127.0.0.1:1", "--token", "x", timeout=30, environment=clean_env(**env))
    assert (done.returncode, done.stderr) == (2, f"inlets: error: {MALFORMED}\n"), done


def test_generate_never_puts_a_misread_proxy_password_into_the_definition() -> None:
    """A password beginning with a number and holding a '/' (http://u:8080/hush-hush@HOST:PORT) split as host "u",
    port 8080 and no password, so --generate kept the whole URL, password and all, in the Deployment's args."""
    args = ["tcp", "client", "--url", "wss://127.0.0.1:1", "--token", "x", "--upstream", "22=127.0.0.1:22", "--proxy",
            "http://u:8080/hush-hush@127.0.0.1:3128", "--generate", "k8s_yaml"]
    done = inlets(*args, timeout=30, environment=clean_env())
    assert done.returncode == 2 and "hush-hush" not in done.stdout + done.stderr, done
    assert "invalid proxy http://u@127.0.0.1:3128: a '/', '?' or '#' in its user or password" in done.stderr, done


@pytest.mark.parametrize("args", [["status"], ["tcp", "client", "--upstream", "22=127.0.0.1:22", "--generate", "systemd"]],
                         ids=["status", "generate"])
def test_a_proxy_host_that_is_no_host_name_is_refused_by_status_and_generate(args: list[str]) -> None:
    """status retried the name and failed with "name resolution failed"; --generate wrote a unit that did so for ever."""
    done = inlets(*args, "--url", "wss://127.0.0.1:1", "--token", "x", "--proxy", "http://not a host:3128", timeout=30,
                  environment=clean_env())
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.startswith("inlets: error: --proxy: 'not a host' is not a valid host name") and \
        done.stderr.count("\n") == 1, done.stderr


#: The proxy variables as the client reads them, first to last (``outbound_proxy.choose``, as websockets reads them)
PROXY_ORDER = ["NO_PROXY", "WSS_PROXY", "WS_PROXY", "SOCKS_PROXY", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"]


def test_the_readme_names_every_proxy_variable_in_the_order_the_client_reads_them() -> None:
    """The README said NO_PROXY, then HTTPS_PROXY, then ALL_PROXY: a WSS_PROXY or SOCKS_PROXY left set won over
    HTTPS_PROXY without a word. Each variable named there wins over the next, as status shows (its proxies down)."""
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Without `--proxy` the client reads"):].partition("\n\n")[0]
    named = list(dict.fromkeys(re.findall(r"`([A-Z]+_PROXY)`", paragraph)))
    assert named == PROXY_ORDER, named
    for first, then in [("WSS_PROXY", "SOCKS_PROXY"), ("SOCKS_PROXY", "HTTPS_PROXY"), ("HTTPS_PROXY", "ALL_PROXY")]:
        ports = {first: free_port(), then: free_port()}
        env = clean_env(**{name: f"http://127.0.0.1:{port}" for name, port in ports.items()})
        done = inlets("status", "--url", "wss://127.0.0.1:1", "--token", "x", "--timeout", "2", environment=env)
        assert done.returncode == 1 and f"127.0.0.1:{ports[first]} unreachable" in done.stderr, (first, done.stderr)


def _status(control: int, token_file: Path, tls: TlsFiles, env: dict[str, str], *more: str) -> subprocess.CompletedProcess:
    args = ["status", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca", str(tls.ca),
            "--json", *more]
    return inlets(*args, timeout=30, environment=env)


def test_status_asks_the_server_through_the_proxy_its_client_would_take(
    tmp_path: Path, tls: TlsFiles, auth_proxy: Daemon, tunnel_server
) -> None:
    """`inlets status` dialled the server directly whatever HTTPS_PROXY said, so behind a proxy it could not
    reach a server its client could; the proxy's answer now decides, and its password is never shown."""
    control, token_file, _ = tunnel_server
    token_file.chmod(0o600)
    proxy = f"127.0.0.1:{auth_proxy.port}"
    good = _status(control, token_file, tls, clean_env(HTTPS_PROXY=f"http://{USER}:{PASSWORD}@{proxy}"))
    assert good.returncode == 0 and '"clients"' in good.stdout, good.stderr
    wrong = _status(control, token_file, tls, clean_env(HTTPS_PROXY=f"http://{USER}:not-{PASSWORD}@{proxy}"))
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert f"proxy http://{USER}@{proxy} refused CONNECT 127.0.0.1:{control}: HTTP 401" in wrong.stderr
    assert PASSWORD not in wrong.stderr + good.stderr
    (tmp_path / "proxy-password").write_text(PASSWORD + "\n")
    flags = _status(control, token_file, tls, clean_env(), "--proxy", f"http://{USER}@{proxy}",
                    "--proxy-password-file", str(tmp_path / "proxy-password"))
    assert flags.returncode == 0, flags.stderr
    direct = _status(control, token_file, tls, clean_env(HTTPS_PROXY=f"http://{USER}:not-{PASSWORD}@{proxy}"),
                     "--proxy", "none")
    assert direct.returncode == 0, direct.stderr
    down = _status(control, token_file, tls, clean_env(HTTPS_PROXY=f"http://127.0.0.1:{free_port()}"))
    assert down.returncode == 1 and "unreachable: Connection refused" in down.stderr, down.stderr
    bad = _status(control, token_file, tls, clean_env(ALL_PROXY="gopher://corp:70"))
    assert bad.returncode == 2 and "ALL_PROXY: proxy scheme 'gopher' is not supported" in bad.stderr, bad.stderr


def test_status_through_socks_and_the_provisioners_wait_through_the_environments_proxy(
    tmp_path: Path, tls: TlsFiles, tunnel_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SOCKS as the client speaks it (Dante refusing the control port shows which way the request went), and
    inletsctl's wait on a new server's /healthz, which dialled directly while libcloud's calls took the proxy."""
    control, token_file, _ = tunnel_server
    blocking = dante(tmp_path / "dante", block_port=control)
    try:
        refused = _status(control, token_file, tls, clean_env(ALL_PROXY=f"socks5://127.0.0.1:{blocking.port}"))
        assert refused.returncode == 1, refused.stderr
        assert f"proxy socks5://127.0.0.1:{blocking.port} refused the connection to 127.0.0.1:{control}" in refused.stderr
        from inlets_py.provisioner.wait import healthz_error

        for name in PROXY_VARS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ALL_PROXY", f"socks5://127.0.0.1:{blocking.port}")
        assert f"refused the connection to 127.0.0.1:{control}" in (healthz_error("127.0.0.1", control, tls.ca) or "")
    finally:
        blocking.stop()
    open_socks = dante(tmp_path / "dante-open")
    try:
        through = _status(control, token_file, tls, clean_env(ALL_PROXY=f"socks5h://127.0.0.1:{open_socks.port}"))
        assert through.returncode == 0 and '"clients"' in through.stdout, through.stderr
    finally:
        open_socks.stop()


@pytest.fixture(scope="module")
def socks_users_only(tmp_path_factory: pytest.TempPathFactory):
    daemon = dante(tmp_path_factory.mktemp("dante-users"), users_only=True)
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("kind", ["http", "socks5"])
def test_refused_proxy_credentials_name_where_they_were_read(
    tmp_path: Path, tls: TlsFiles, auth_proxy: Daemon, socks_users_only: Daemon, tunnel_server, kind: str
) -> None:
    """A wrong proxy password read from a file was told "check --proxy and its password (--proxy-password-file or
    $INLETS_PROXY_PASSWORD)", one from $HTTPS_PROXY the same (flags never given), and a SOCKS5 proxy's refusal had
    no hint at all: each line now names the file or the variable to fix, the client's and `inlets status`'s alike."""
    control, token_file, _ = tunnel_server
    token_file.chmod(0o600)
    proxy = f"127.0.0.1:{(auth_proxy if kind == 'http' else socks_users_only).port}"
    wrong = tmp_path / "proxy-password"
    wrong.write_text("not-" + PASSWORD + "\n")
    wrong.chmod(0o600)
    in_file = ["--proxy", f"{kind}://{USER}@{proxy}", "--proxy-password-file", str(wrong)]
    variable = "HTTPS_PROXY" if kind == "http" else "ALL_PROXY"
    cases = [  # (flags, environment, what the line must say)
        (in_file, clean_env(), f"proxy credentials refused: check the user in --proxy and the password in "
                               f"--proxy-password-file {wrong}"),
        ([], clean_env(**{variable: f"{kind}://{USER}:not-{PASSWORD}@{proxy}"}),
         f"proxy credentials refused: check the user and password in ${variable})"),
        (["--proxy", f"{kind}://{proxy}"], clean_env(), f"proxy credentials missing: give --proxy {kind}://USER@HOST:PORT"
                                                        " with --proxy-password-file FILE or $INLETS_PROXY_PASSWORD)"),
        # a password and no user: an HTTP proxy gets ":PASSWORD" (curl's way), so it refused them, not found none;
        # python-socks offers no credentials without a user, so there they are missing
        (["--proxy", f"{kind}://:not-{PASSWORD}@{proxy}"], clean_env(),
         "proxy credentials refused: the password in --proxy was sent with no user: check it, and add the proxy's user"
         if kind == "http" else f"proxy credentials missing: give --proxy {kind}://USER@HOST:PORT"),
    ]
    for flags, env, said in cases:
        status = _status(control, token_file, tls, env, *flags)
        assert status.returncode == 1 and status.stderr.count("\n") == 1 and said in status.stderr, status.stderr
        log = tmp_path / "client.log"
        client = spawn([*client_args(control, token_file, tls, free_port(), 9), *flags], log, env)
        try:
            wait_for(lambda: "event=connect_failed" in log.read_text(), "a failed attempt")
        finally:
            assert finish(client) == 0
        failed = next(line for line in log.read_text().splitlines() if "event=connect_failed" in line)
        assert said in failed and PASSWORD not in log.read_text(), failed


def _granting_proxy(then: ssl.SSLContext | None) -> tuple[int, threading.Thread]:
    """A one-connection HTTP proxy that grants CONNECT, then closes (``then`` None) or speaks TLS itself with
    ``then``'s certificate, as a TLS-inspecting corporate proxy does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if then is not None:
                    with contextlib.suppress(OSError):
                        then.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize("then", ["close", "own-certificate"])
def test_status_names_the_proxy_when_the_tunnel_it_granted_fails(tmp_path: Path, tls: TlsFiles, then: str) -> None:
    """Once a proxy granted CONNECT, what went wrong after was said as the server's alone: "127.0.0.1:P: the TLS
    handshake failed: is P the server's control port?", or "check --tls-ca" for a proxy inspecting TLS with a
    certificate of its own; the client's line says "through proxy ...", and now so does `inlets status`'s."""
    token_file = tmp_path / "token"
    token_file.write_text("t" * 32)
    token_file.chmod(0o600)
    context = None
    if then == "own-certificate":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        own = make_tls(tmp_path / "inspecting", ["127.0.0.1"])
        context.load_cert_chain(own.cert, own.key)
    port, thread = _granting_proxy(context)
    done = _status(free_port(), token_file, tls, clean_env(), "--proxy", f"http://127.0.0.1:{port}")
    thread.join(20)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"inlets: error: through proxy http://127.0.0.1:{port}: "), done.stderr
