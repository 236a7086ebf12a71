"""Tokens and secrets as users give them: refused in one line that never quotes them, checked the
same way by every command and by --generate, and never written where ps or a unit shows them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers.process import INLETS, inlets, one_line_error, spawn, stop_all, wait_for_text

SECRET = "MYSECRET"


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    contents = {"ctl": f"{SECRET}\x01b\n", "empty": "", "blank": "   \n", "nonascii": f"{SECRET}été\n",
                "big": SECRET * 600 + "\n", "good": f"{SECRET}-0123456789\n",
                "huge": "".join(f"{SECRET}-{n:07}\n" for n in range(5000))}  # 85 kB of good tokens: not a token file
    paths = {}
    for name, text in contents.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        path.chmod(0o600)
        paths[name] = str(path)
    sparse = tmp_path / "sparse.img"  # 2 GiB of zeros taking no disk: past the 1 GiB MEMORY_CAPPED if read whole
    with sparse.open("wb") as handle:
        handle.truncate(2 << 30)
    paths["sparse"] = str(sparse)
    return paths


CLIENT = ["tcp", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "20031=127.0.0.1:20032"]
SERVER = ["tcp", "server", "--plaintext", "--control-addr", "127.0.0.1", "--control-port", "20033"]
STATUS = ["status", "--url", "wss://127.0.0.1:20030"]


@pytest.mark.parametrize("args, message", [
    # a control character: the client logged the header, token included, at every retry
    (CLIENT + ["--token-file", "{ctl}"], "holds a character a token cannot have"),
    (SERVER + ["--token-file", "{ctl}"], "holds a character a token cannot have"),
    (STATUS + ["--token-file", "{ctl}"], "holds a character a token cannot have"),
    # non-ASCII: the tunnel connected, status (encoded differently) got 401; 200 kB: HTTP 431 forever
    (CLIENT + ["--token-file", "{nonascii}"], "holds a character a token cannot have"),
    (STATUS + ["--token-file", "{nonascii}"], "holds a character a token cannot have"),
    (CLIENT + ["--token-file", "{big}"], "is longer than 4096 characters"),
    # blank and doubled tokens
    (SERVER + ["--token", "   "], "--token is blank"),
    (CLIENT + ["--token", "   "], "--token is blank"),
    (SERVER + ["--token", SECRET, "--token-file", "{good}"], "give --token or --token-file, not both"),
    (CLIENT + ["--token", SECRET, "--token-file", "{good}"], "give --token or --token-file, not both"),
    (["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "http://127.0.0.1:20032", "--token-file",
      "{good}", "--bearer-token-file", "{blank}"], "--bearer-token-file file"),
    # --generate: the same checks, and no secret on a command line
    (SERVER + ["--generate", "k8s_yaml", "--token", f"--{SECRET}"], "--token's value starts with '--'"),
    (SERVER + ["--generate", "systemd", "--token", f"--{SECRET}"], "--token's value starts with '--'"),
    (SERVER + ["--generate", "k8s_yaml", "--token-file", "{empty}"], "holds no token"),
    (SERVER + ["--generate", "k8s_yaml", "--token-file", "{blank}"], "holds no token"),
    (SERVER + ["--generate", "systemd", "--token-file", "{ctl}"], "holds a character a token cannot have"),
])
def test_bad_secrets_are_refused_in_one_line_that_does_not_quote_them(args, message, secrets) -> None:
    result = inlets(*(arg.format(**secrets) for arg in args), env={"INLETS_TOKEN": ""})
    one_line_error(result, message)
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("args", [
    SERVER + ["--token-file", "{sparse}"], STATUS + ["--token-file", "{sparse}"], CLIENT + ["--token-file", "{sparse}"],
    STATUS + ["--token-file", "{huge}"], SERVER + ["--generate", "systemd", "--token-file", "{sparse}"],
    ["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "http://127.0.0.1:20032", "--token-file", "{good}",
     "--bearer-token-file", "{sparse}"],
], ids=lambda args: " ".join(args[:2] + args[-1:]))
def test_a_token_file_larger_than_64_kib_is_refused_not_read_whole(args: list[str], secrets) -> None:
    """/dev/zero (or a disk image or log given by mistake) was read whole: a MemoryError traceback under a memory
    limit. (/dev/zero itself is now refused as a device, unread: see the next test.)"""
    import subprocess

    from helpers.process import INLETS, MEMORY_CAPPED, ROOT

    args = [arg.format(**secrets) for arg in args]
    result = subprocess.run([*MEMORY_CAPPED, *INLETS, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    one_line_error(result, f"file {args[-1]} is larger than 64 KiB, more than tokens take: give the file that holds the token")


@pytest.mark.parametrize("flag, limit", [("--bearer-token-file", "64 KiB"), ("--tls-ca", "1 MiB")])
def test_generate_k8s_yaml_reads_the_files_it_puts_in_the_secret_with_a_limit(flag: str, limit: str, secrets) -> None:
    import subprocess

    from helpers.process import INLETS, MEMORY_CAPPED, ROOT

    args = ["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "http://127.0.0.1:20032", "--token-file",
            secrets["good"], flag, secrets["sparse"], "--generate", "k8s_yaml"]
    result = subprocess.run([*MEMORY_CAPPED, *INLETS, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    one_line_error(result, f"{flag} {secrets['sparse']} is larger than {limit}, too large to go into the Secret: give "
                   "the file itself")


HTTP_CLIENT = ["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "https://127.0.0.1:20032"]
LE_SERVER = ["http", "server", "--plaintext", "--control-addr", "127.0.0.1", "--control-port", "20033", "--port",
             "20034", "--letsencrypt-domain", "example.com", "--https-port", "20035"]


@pytest.mark.parametrize("args, what", [
    (SERVER + ["--token-file", "{odd}"], "token file"),
    (CLIENT + ["--token-file", "{odd}"], "token file"),
    (STATUS + ["--token-file", "{odd}"], "token file"),
    (SERVER + ["--token-file", "{odd}", "--generate", "systemd"], "token file"),
    (SERVER + ["--token-file", "{odd}", "--generate", "k8s_yaml"], "token file"),
    (CLIENT + ["--token-file", "{good}", "--proxy", "http://alice@127.0.0.1:20036", "--proxy-password-file", "{odd}"],
     "--proxy-password-file file"),
    (HTTP_CLIENT + ["--token-file", "{good}", "--bearer-token-file", "{odd}"], "--bearer-token-file file"),
    (HTTP_CLIENT + ["--token-file", "{good}", "--basic-auth-username", "alice", "--basic-auth-password-file", "{odd}"],
     "--basic-auth-password-file file"),
    (HTTP_CLIENT + ["--token-file", "{good}", "--bearer-token-file", "{odd}", "--generate", "k8s_yaml"],
     "--bearer-token-file"),
    (SERVER[:1] + ["server", "--token-file", "{good}", "--tls-cert", "{odd}", "--tls-key", "{odd}"], "TLS file"),
    (SERVER[:1] + ["server", "--token-file", "{good}", "--tls-cert", "{odd}", "--tls-key", "{good}", "--generate",
                   "k8s_yaml"], "--tls-cert"),
    (CLIENT + ["--token-file", "{good}", "--tls-ca", "{odd}"], "CA file"),
    (STATUS + ["--token-file", "{good}", "--tls-ca", "{odd}"], "CA file"),
    (HTTP_CLIENT + ["--token-file", "{good}", "--upstream-ca", "{odd}"], "--upstream-ca file"),
    (LE_SERVER + ["--token-file", "{good}", "--letsencrypt-ca", "{odd}", "--letsencrypt-path", "{le}"], "--letsencrypt-ca"),
], ids=lambda value: " ".join(value[-2:]) if isinstance(value, list) else None)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_file_flag_given_a_fifo_or_a_device_is_refused_at_once(args: list[str], what: str, kind: str, secrets,
                                                                 tmp_path: Path) -> None:
    """A FIFO (``mkfifo``, or a file replaced by one) hung every command in open() until something wrote to it, without
    a word; /dev/zero was read up to the limit and called a large file. Neither is a file a secret or a PEM is kept in,
    nor one the runtime can read again (on SIGHUP, at each connection)."""
    import os

    odd = tmp_path / "fifo"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd = Path("/dev/zero")
    args = [arg.format(odd=odd, le=tmp_path / "le", **secrets) for arg in args]
    result = inlets(*args, timeout=60, env={"INLETS_TOKEN": ""})  # a hang fails with TimeoutExpired
    label = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    line = one_line_error(result, f"{what} {odd} is {label}, not a regular file: ")
    assert line.endswith(("give its path", "give the file itself", "give the PEM file itself")), line


@pytest.mark.parametrize("variable", ["INLETS_BEARER_TOKEN", "INLETS_BASIC_AUTH_PASSWORD"])
def test_a_site_secrets_variable_set_but_blank_is_refused_not_taken_as_none(variable: str, secrets) -> None:
    """``INLETS_BEARER_TOKEN=$UNSET`` (blank) served the site unprotected without a word; a blank flag was refused."""
    args = ["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "http://127.0.0.1:20032", "--token-file",
            secrets["good"]] + (["--basic-auth-username", "alice"] if "BASIC" in variable else [])
    one_line_error(inlets(*args, env={variable: "  "}), f"${variable} is set but blank")


HTTP_CLIENT = ["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "http://127.0.0.1:20032",
               "--token-file", "{good}"]
BASIC = ["--basic-auth-username", "alice"]
UNCARRIED = "holds a character a token cannot have (a control character or a letter outside ASCII)"


@pytest.mark.parametrize("args, env, message", [
    (["--bearer-token", f"{SECRET}\x01x"], {}, f"the token from --bearer-token {UNCARRIED}"),
    (["--bearer-token", f"{SECRET}\nx"], {}, f"the token from --bearer-token {UNCARRIED}"),
    (["--bearer-token", f"{SECRET}été"], {}, f"the token from --bearer-token {UNCARRIED}"),
    ([], {"INLETS_BEARER_TOKEN": f"{SECRET}\x01x"}, f"the token from $INLETS_BEARER_TOKEN {UNCARRIED}"),
    (["--bearer-token-file", "{ctl}"], {}, f"the token from --bearer-token-file file {{ctl}} {UNCARRIED}"),
    ([*BASIC, "--basic-auth-password", f"{SECRET}\nx"], {},
     "the password from --basic-auth-password holds a control character (a line break, a tab...), which no browser"),
    (BASIC, {"INLETS_BASIC_AUTH_PASSWORD": f"{SECRET}\x7fx"}, "the password from $INLETS_BASIC_AUTH_PASSWORD holds a "
     "control character"),
    ([*BASIC, "--basic-auth-password-file", "{ctl}"], {}, "the password from --basic-auth-password-file file {ctl} "
     "holds a control character"),
    (["--basic-auth-username", "ali\tce", "--basic-auth-password", SECRET], {},
     "--basic-auth-username holds a control character"),
    # --generate: refused before a unit is written, in the same words
    (["--generate", "systemd", "--bearer-token", f"{SECRET}\x01x"], {}, f"the token from --bearer-token {UNCARRIED}"),
    (["--generate", "systemd", *BASIC], {"INLETS_BASIC_AUTH_PASSWORD": f"{SECRET}\rx"},
     "the password from $INLETS_BASIC_AUTH_PASSWORD holds a control character"),
], ids=["bearer-ctl", "bearer-newline", "bearer-non-ascii", "bearer-env", "bearer-file", "password-newline",
        "password-env-del", "password-file", "username-tab", "generate-bearer", "generate-password-env"])
def test_a_site_secret_no_request_could_carry_is_refused_naming_where_it_came_from(args, env, message, secrets) -> None:
    """A bearer token, or a basic-auth user or password, holding a control character (a line break, say) let the
    client start, and then no request could ever carry it (RFC 9110 5.5, RFC 6750 2.1, RFC 7617 2): the site was
    locked without a word. (A password outside ASCII is fine: it travels base64-encoded, see test_http_cli.)"""
    result = inlets(*(arg.format(**secrets) for arg in HTTP_CLIENT + args), env={"INLETS_TOKEN": "", **env}, timeout=10)
    one_line_error(result, message.format(**secrets))
    assert SECRET not in result.stderr + result.stdout


#: A byte that is not UTF-8 (Latin-1's ÿ) in a secret, as Python holds it: the surrogate escape of b"\xff".
NOT_UTF8 = f"{SECRET}\udcff"
TO_PROXY = ["--proxy", "http://bob@127.0.0.1:20036"]
AS_K8S = ["--generate", "k8s_yaml"]
BASIC_FILE = [*BASIC, "--basic-auth-password-file", "{good}"]


@pytest.mark.parametrize("args, env, message", [
    (HTTP_CLIENT + TO_PROXY, {"INLETS_PROXY_PASSWORD": NOT_UTF8}, "$INLETS_PROXY_PASSWORD is not UTF-8"),
    (STATUS + ["--token-file", "{good}", *TO_PROXY], {"INLETS_PROXY_PASSWORD": NOT_UTF8},
     "$INLETS_PROXY_PASSWORD is not UTF-8"),
    (HTTP_CLIENT + TO_PROXY + AS_K8S, {"INLETS_PROXY_PASSWORD": NOT_UTF8}, "$INLETS_PROXY_PASSWORD is not UTF-8"),
    (HTTP_CLIENT + BASIC + AS_K8S, {"INLETS_BASIC_AUTH_PASSWORD": NOT_UTF8},
     "$INLETS_BASIC_AUTH_PASSWORD is not UTF-8"),
    (HTTP_CLIENT + [*BASIC, "--basic-auth-password", NOT_UTF8, *AS_K8S], {}, "--basic-auth-password is not UTF-8"),
    (HTTP_CLIENT + ["--proxy", f"http://bob:{NOT_UTF8}@127.0.0.1:20036", *AS_K8S], {},
     "--proxy http://bob@127.0.0.1:20036: its password is not UTF-8"),
    # the run named the flag the user never typed: "--basic-auth-password is not UTF-8"
    (HTTP_CLIENT + BASIC, {"INLETS_BASIC_AUTH_PASSWORD": NOT_UTF8}, "$INLETS_BASIC_AUTH_PASSWORD is not UTF-8"),
], ids=["client-proxy-env", "status-proxy-env", "k8s-proxy-env", "k8s-password-env", "k8s-password-inline",
        "k8s-proxy-url", "client-password-env"])
def test_a_secret_holding_a_byte_that_is_not_utf8_is_one_line_naming_where_it_came_from(args, env, message,
                                                                                      secrets) -> None:
    """From the environment or the command line (not a file, whose error said so already), such a byte raised a
    UnicodeEncodeError traceback where the secret was sent or written into the Kubernetes Secret."""
    result = inlets(*(arg.format(**secrets) for arg in args), env={"INLETS_TOKEN": "", **env}, timeout=10)
    line = one_line_error(result, message)
    assert SECRET not in result.stderr + result.stdout and "udc" not in line, line


@pytest.mark.parametrize("args, env, message", [
    # with basic auth: "choose one of --basic-auth-username/--basic-auth-password and --bearer-token"
    (HTTP_CLIENT + BASIC_FILE, {"INLETS_BEARER_TOKEN": ""},
     "$INLETS_BEARER_TOKEN is set but blank: put the secret in it, or unset it to serve without one"),
    (HTTP_CLIENT + BASIC_FILE + ["--generate", "systemd"], {"INLETS_BEARER_TOKEN": ""},
     "$INLETS_BEARER_TOKEN is set but blank"),
    # alone: "--basic-auth-username and --basic-auth-password (...) go together"
    (HTTP_CLIENT, {"INLETS_BASIC_AUTH_PASSWORD": ""}, "$INLETS_BASIC_AUTH_PASSWORD is set but blank"),
    # "no token: give --token, --token-file or $INLETS_TOKEN", which the user had set
    (STATUS, {"INLETS_TOKEN": "  "},
     "no token: give --token, --token-file or $INLETS_TOKEN, which is set but blank"),
    # --generate: "--token is blank"
    (SERVER + ["--generate", "systemd"], {"INLETS_TOKEN": "  "}, "$INLETS_TOKEN is set but blank"),
    # "username provided without password (keep it in --proxy-password-file or $INLETS_PROXY_PASSWORD)"
    (HTTP_CLIENT + TO_PROXY, {"INLETS_PROXY_PASSWORD": " "},
     "$INLETS_PROXY_PASSWORD is set but blank: put the secret in it, or unset it"),
    (STATUS + ["--token-file", "{good}", *TO_PROXY], {"INLETS_PROXY_PASSWORD": " "},
     "$INLETS_PROXY_PASSWORD is set but blank"),
], ids=["bearer-with-basic", "generate-bearer-with-basic", "password-alone", "status-token", "generate-token",
        "client-proxy-password", "status-proxy-password"])
def test_a_secrets_variable_set_but_blank_is_named_not_a_flag_never_typed(args, env, message, secrets) -> None:
    """``INLETS_X=$UNSET_VAR``: the error named flags the user never typed, or asked for the variable they had set."""
    one_line_error(inlets(*(arg.format(**secrets) for arg in args), env={"INLETS_TOKEN": "", **env}, timeout=10),
                   message)


def test_a_site_password_keeps_spaces_at_either_end(tmp_path: Path, tls, token_file) -> None:
    """RFC 7617 lets a password begin or end with a space, and htpasswd keeps them: stripped, from a file, the
    variable or the flag, the site refused the real password (401) and let in the stripped one. A line ending (a
    file's, or a variable's from a Kubernetes Secret made from a file) is no part of it."""
    import base64
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from helpers.tunnel import free_port

    class Upstream(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    password = f"  {SECRET} pw "
    (tmp_path / "password").write_text(password + "\r\n")
    (tmp_path / "password").chmod(0o600)
    control, data = free_port(), free_port()
    server = spawn("http", "server", "--port", str(data), "--data-addr", "127.0.0.1", "--control-addr", "127.0.0.1",
                   "--control-port", str(control), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
                   "--token-file", str(token_file), log=tmp_path / "server.log")
    client = ["http", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file), "--tls-ca",
              str(tls.ca), "--basic-auth-username", "carol"]
    forms = {"file": ["--basic-auth-password-file", str(tmp_path / "password")],
             "inline": ["--basic-auth-password", password], "env": []}
    clients = []
    try:
        wait_for_text(tmp_path / "server.log", "event=started")
        for form, args in forms.items():
            env = {"INLETS_BASIC_AUTH_PASSWORD": password + "\n"} if form == "env" else {}  # a Secret made from a file
            with open(tmp_path / f"{form}.log", "w") as log:
                clients.append(subprocess.Popen([*INLETS, *client, *args, "--upstream",
                                                 f"{form}.test=http://127.0.0.1:{upstream.server_port}"],
                                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}))
            wait_for_text(tmp_path / f"{form}.log", "event=connected")

        def status(form: str, secret: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", data, timeout=5)
            credentials = base64.b64encode(f"carol:{secret}".encode()).decode()
            connection.request("GET", "/", headers={"Host": f"{form}.test", "Authorization": f"Basic {credentials}"})
            code = connection.getresponse().status
            connection.close()
            return code

        assert {form: status(form, password) for form in forms} == dict.fromkeys(forms, 200)
        assert {form: status(form, password.strip()) for form in forms} == dict.fromkeys(forms, 401)
    finally:
        stop_all(server, *clients)
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.parametrize("args", [
    ["--bearer-token", "--rewrite-host"],
    [*BASIC, "--basic-auth-password", "--upstream-insecure"],
    ["--generate", "systemd", "--bearer-token", "--rewrite-host"],
], ids=["bearer", "basic-password", "generate-bearer"])
def test_a_secret_flag_whose_value_was_left_out_does_not_take_the_next_flag(args: list[str], secrets) -> None:
    """``--bearer-token --rewrite-host`` ran with the token "--rewrite-host", and without --rewrite-host: only
    --token had this guard."""
    flag = args[-2]
    result = inlets(*(arg.format(**secrets) for arg in HTTP_CLIENT + args), env={"INLETS_TOKEN": ""}, timeout=10)
    one_line_error(result, f"{flag}'s value starts with '--': was the value left out? (a secret that starts with '--' "
                           f"goes in {flag}-file)")
    assert result.stdout == ""


def test_status_without_a_token_exits_2_like_every_command() -> None:
    result = inlets(*STATUS, env={"INLETS_TOKEN": ""})
    assert result.returncode == 2 and "no token" in result.stderr


def test_a_token_file_others_can_read_gets_one_warning(secrets) -> None:
    Path(secrets["good"]).chmod(0o644)
    result = inlets(*STATUS, "--timeout", "0.5", "--token-file", secrets["good"])
    assert result.stderr.count("can be read by other users (mode 0644): run chmod 600") == 1, result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize("args", [
    CLIENT + ["--proxy", "http://alice@127.0.0.1:20034", "--proxy-password-file", "{loose}"],
    ["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "http://127.0.0.1:20031",
     "--basic-auth-username", "alice", "--basic-auth-password-file", "{loose}"],
    ["http", "client", "--url", "wss://127.0.0.1:20030", "--upstream", "http://127.0.0.1:20031",
     "--bearer-token-file", "{loose}"],
])
def test_other_secret_files_others_can_read_get_one_warning_too(tmp_path, secrets, args) -> None:
    """A token file that others can read got its warning; a proxy password, a site's password or bearer
    token in such a file went by without one."""
    loose = tmp_path / "loose.txt"
    loose.write_text(SECRET + "\n")
    loose.chmod(0o644)
    log = tmp_path / "client.log"
    client = spawn(*(arg.format(loose=loose) for arg in args), "--token-file", secrets["good"], log=log)
    try:
        text = wait_for_text(log, "event=", timeout=15)  # started: the secrets were read
    finally:
        stop_all(client)
    assert text.count(f"file {loose} can be read by other users (mode 0644): run chmod 600 {loose}") == 1, text
    assert SECRET not in text


def test_a_token_that_starts_with_one_dash_is_a_token() -> None:
    """secrets.token_urlsafe, which makes inletsctl's tokens, starts one in 64 with '-': only '--'
    (a flag taken for the value) is refused."""
    pod = ["tcp", "server", "--plaintext", "--control-port", "20033", "--allow-ports", "2222"]  # k8s: no loopback
    result = inlets(*pod, "--generate", "k8s_yaml", "--token", f"-{SECRET}-0123456789", env={"INLETS_TOKEN": ""})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result


@pytest.mark.parametrize("control_addr, warned", [("", True), ("0.0.0.0", True), ("192.0.2.10", True), ("::", True),
                                                  ("127.0.0.1", False), ("::1", False), ("[::1]", False),
                                                  ("localhost", False)])
def test_plaintext_on_an_address_others_reach_is_warned_of(control_addr: str, warned: bool,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """--plaintext is for a control plane behind a TLS-terminating proxy on the same machine; on every
    interface it sent the token in clear without a word."""
    import logging

    from inlets_py.runtime.cli.server_config import warn_if_plaintext_reachable

    with caplog.at_level(logging.WARNING):
        warn_if_plaintext_reachable(control_addr)
    lines = [r.getMessage() for r in caplog.records if "plaintext_control_plane" in r.getMessage()]
    assert bool(lines) == warned, lines
    if warned:
        assert "use --auto-tls" in lines[0]



def test_a_tls_key_others_can_read_gets_one_warning(tmp_path, tls, token_file) -> None:
    """A token file others could read was warned of; the server's private key, the one file that lets
    anyone impersonate the server, was not."""
    from helpers.process import server_args
    from helpers.tunnel import TlsFiles, free_port

    key = tmp_path / "server.key"
    key.write_bytes(tls.key.read_bytes())
    key.chmod(0o644)
    log = tmp_path / "server.log"
    server = spawn(*server_args(free_port(), TlsFiles(tls.ca, tls.cert, key), token_file), log=log)
    try:
        text = wait_for_text(log, "event=started", timeout=15)
    finally:
        stop_all(server)
    assert text.count(f"TLS key {key} can be read by other users (mode 0644): run chmod 600 {key}") == 1, text
    assert "PRIVATE KEY" not in text


def test_a_token_given_through_a_pipe_connects_and_survives_a_reconnect(tmp_path, tls, token, token_file) -> None:
    """``--token-file <(pass show inlets)`` keeps the token off disk and out of ``ps``: a FIFO's refusal refused this
    pipe too. It is read once, at start: a reconnect uses it again, with no 'unreadable' warning for the empty pipe."""
    import shlex
    import subprocess

    from helpers.process import INLETS, server_args
    from helpers.tunnel import free_port

    port, log = free_port(), tmp_path / "client.log"
    server = spawn(*server_args(port, tls, token_file), log=tmp_path / "server.log")
    client_argv = [*INLETS, "tcp", "client", "--url", f"wss://127.0.0.1:{port}", "--tls-ca", str(tls.ca),
                   "--upstream", "127.0.0.1", "--ports", str(free_port())]
    script = f'exec {shlex.join(client_argv)} --token-file <(printf "%s\\n" "$SECRET")'
    with open(log, "w") as handle:
        client = subprocess.Popen(["bash", "-c", script], stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, "SECRET": token})
    try:
        wait_for_text(tmp_path / "server.log", "event=started")
        wait_for_text(log, "event=connected")
        stop_all(server)
        server = spawn(*server_args(port, tls, token_file), log=tmp_path / "server2.log")
        wait_for_text(tmp_path / "server2.log", "event=client_connected", timeout=20)
    finally:
        stop_all(client, server)
    text = log.read_text()
    assert "/dev/fd/" not in text and "token_file_unreadable" not in text and token not in text, text
