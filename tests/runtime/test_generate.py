"""``--generate=systemd|k8s_yaml``: every secret in a file or the Secret, never in the command line the
service runs; a unit whose own sandboxing would hide what it needs is refused; units pass systemd-analyze."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers.proxy_daemons import binary
from helpers.process import ROOT as PROCESS_ROOT
from helpers.process import inlets, one_line_error
from helpers.service_python import ServiceInlets, folder_outside_tmp, make_venv, service_inlets, unit_inlets

from inlets_py.runtime.generate import reachable

SECRETS = {"token": "tok-Zq81", "basic": "basic-Pw92", "proxy": "proxy-Pw/@:73", "bearer": "bearer-Bx55"}
HTTP_CLIENT = ["http", "client", "--url", "wss://203.0.113.10:8123", "--upstream", "http://127.0.0.1:3000",
               "--token", SECRETS["token"], "--basic-auth-username", "alice", "--basic-auth-password", SECRETS["basic"],
               "--proxy", "http://bob:proxy-Pw%2F%40%3A73@proxy.corp:3128"]


def _verified(tmp_path: Path, text: str, name: str = "inlets-http-client.service") -> str:
    unit = tmp_path / name
    unit.write_text(text)
    check = subprocess.run([binary("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stderr.strip() == "", check.stderr
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


def test_systemd_unit_reads_every_secret_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INLETS_BEARER_TOKEN", raising=False)  # set but blank is refused: it must be unset
    result = unit_inlets(*HTTP_CLIENT, "--generate=systemd")
    assert result.returncode == 0, result.stderr
    exec_start = _verified(tmp_path, result.stdout)
    for secret in SECRETS.values():
        assert secret not in result.stdout and secret.split("-")[1] not in result.stdout, secret
    assert "--token-file /etc/inlets/token" in exec_start
    assert "--basic-auth-password-file /etc/inlets/basic-auth-password" in exec_start
    assert "--proxy http://bob@proxy.corp:3128" in exec_start
    assert "--proxy-password-file /etc/inlets/proxy-password" in exec_start
    assert "ReadOnlyPaths=-/etc/inlets" in result.stdout  # "-": a folder not made yet is no start failure


def test_the_https_handshake_caps_go_into_the_unit_as_given(tmp_path: Path) -> None:
    """--max-https-handshakes(-per-source) are the HTTPS front's caps (not the control port's --max-handshakes)."""
    result = unit_inlets("http", "server", "--auto-tls", "--token-file", "/etc/inlets/token", "--letsencrypt-domain",
                         "a.example.com", "--max-https-handshakes", "2048", "--max-https-handshakes-per-source", "128",
                         "--generate=systemd")
    assert result.returncode == 0, result.stderr
    exec_start = _verified(tmp_path, result.stdout, "inlets-http-server.service")
    assert "--max-https-handshakes 2048 --max-https-handshakes-per-source 128" in exec_start, exec_start
    refused = inlets("http", "server", "--plaintext", "--token-file", "/etc/inlets/token", "--max-https-handshakes",
                     "2048", "--generate=systemd")
    assert refused.returncode == 2 and "need --letsencrypt-domain" in refused.stderr, refused.stderr


def test_the_data_port_pending_caps_go_into_the_unit_and_the_k8s_args_as_given(tmp_path: Path) -> None:
    """--max-pending-connections(-per-source): --port's caps, carried as written; one the server refuses is refused."""
    caps = ["--max-pending-connections", "4096", "--max-pending-connections-per-source", "512"]
    base = ["http", "server", "--auto-tls", "--token-file", "/etc/inlets/token", *caps]
    result = unit_inlets(*base, "--generate=systemd")
    assert result.returncode == 0, result.stderr
    exec_start = _verified(tmp_path, result.stdout, "inlets-http-server.service")
    assert " ".join(caps) in exec_start, exec_start
    token = tmp_path / "token"
    token.write_text("t0ken-of-the-test\n")
    token.chmod(0o600)
    k8s = inlets("http", "server", "--plaintext", "--token-file", str(token), *caps, "--generate=k8s_yaml")
    assert k8s.returncode == 0, k8s.stderr
    args = next(doc for doc in yaml.safe_load_all(k8s.stdout) if doc["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index(caps[0]):args.index(caps[0]) + 4] == caps, args
    refused = inlets("http", "server", "--plaintext", "--token-file", "/etc/inlets/token", "--max-pending-connections",
                     "32", "--max-pending-connections-per-source", "64", "--generate=systemd")
    one_line_error(refused, "--max-pending-connections-per-source 64 is above --max-pending-connections 32")


def test_secrets_from_the_environment_or_files_become_files_in_the_unit(tmp_path: Path) -> None:
    bearer = Path("/etc/inlets/site-bearer")  # a file given is referenced where it is (need not exist yet)
    env = {"INLETS_BEARER_TOKEN": SECRETS["bearer"], "INLETS_TOKEN": SECRETS["token"]}
    from_env = unit_inlets("http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000",
                      "--generate=systemd", env=env)
    assert from_env.returncode == 0, from_env.stderr
    exec_start = _verified(tmp_path, from_env.stdout)
    assert SECRETS["bearer"] not in from_env.stdout and SECRETS["token"] not in from_env.stdout
    assert "--bearer-token-file /etc/inlets/bearer-token" in exec_start and "--token-file /etc/inlets/token" in exec_start
    from_file = unit_inlets("http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000",
                       "--token-file", "/etc/inlets/token", "--bearer-token-file", str(bearer), "--generate=systemd",
                       env={"INLETS_BEARER_TOKEN": ""})
    assert f"--bearer-token-file {bearer}" in _verified(tmp_path, from_file.stdout)
    server = unit_inlets("tcp", "server", "--plaintext", "--generate=systemd", env=env)  # a server takes no bearer token
    assert "--bearer-token" not in server.stdout and "--token-file /etc/inlets/token" in server.stdout


def test_kubernetes_secret_holds_every_secret_and_the_args_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INLETS_BEARER_TOKEN", raising=False)  # set but blank is refused: it must be unset
    (tmp_path / "bearer").write_text(SECRETS["bearer"] + "\n")
    result = inlets(*HTTP_CLIENT, "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout)}
    data = {k: base64.b64decode(v).decode() for k, v in kinds["Secret"]["data"].items()}
    assert data == {"token": SECRETS["token"], "basic-auth-password": SECRETS["basic"], "proxy-password": SECRETS["proxy"]}
    args = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(secret in arg for arg in args for secret in SECRETS.values()), args
    for key in data:
        assert args[args.index(f"--{key}-file") + 1] == f"/var/run/secrets/inlets/{key}"
    assert args[args.index("--proxy") + 1] == "http://bob@proxy.corp:3128"
    bearer = inlets("http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--token", "t",
                    "--bearer-token-file", str(tmp_path / "bearer"), "--generate=k8s_yaml")
    secret = next(d for d in yaml.safe_load_all(bearer.stdout) if d["kind"] == "Secret")
    assert base64.b64decode(secret["data"]["bearer-token"]).decode() == SECRETS["bearer"] + "\n"


def _kubelet_expand(text: str, env: dict[str, str]) -> str:
    """What the kubelet makes of a container's command or args (its expansion package): ``$$`` is ``$``, ``$(VAR)``
    of a known VAR is its value (of an unknown one, left as written), any other ``$`` stays."""
    out, index = [], 0
    while index < len(text):
        if text.startswith("$$", index):
            out.append("$")
            index += 2
        elif text.startswith("$(", index) and (end := text.find(")", index)) > 0:
            name = text[index + 2:end]
            out.append(env.get(name, text[index:end + 1]))
            index = end + 1
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def test_kubernetes_args_are_escaped_against_the_kubelets_variable_expansion() -> None:
    """A header value with ``$(VAR)`` or ``$$`` reached the pod expanded (the Service's address, one ``$``): every
    ``$`` in the args is now ``$$``, which the kubelet turns back into the value given; other values are unchanged."""
    header = "X-A: $(KUBERNETES_SERVICE_HOST) a$$b $HOME"
    result = inlets("http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--token", "t",
                    "--request-header-add", header, "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    container = next(d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    written = args[args.index("--request-header-add") + 1]
    assert written == "X-A: $$(KUBERNETES_SERVICE_HOST) a$$$$b $$HOME", written
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOME": "/root"}
    assert _kubelet_expand(written, env) == header
    assert args[args.index("--upstream") + 1] == "http://127.0.0.1:3000"  # no "$": as given
    assert args[:2] == ["http", "client"] and container["command"] == ["inlets"]


# ------------------------------------------------------------- the unit's own sandbox


def test_a_file_under_tmp_is_refused_since_private_tmp_hides_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    result = unit_inlets("tcp", "client", "--url", "wss://h:8123", "--token-file", str(token), "--upstream",
                         "127.0.0.1", "--ports", "80", "--generate=systemd")
    assert result.returncode == 2
    assert result.stderr == (f"inlets: error: --token-file {token} is under /tmp, which the unit's PrivateTmp=true "
                             "hides from the service: keep it elsewhere (e.g. /etc/inlets/) and give that path\n")


def test_an_inlets_under_tmp_is_refused_and_one_under_home_gets_a_readable_home(tmp_path: Path) -> None:
    service = service_inlets()
    args = ["tcp", "client", "--url", "wss://h:8123", "--token-file", "/etc/inlets/token", "--upstream", "127.0.0.1",
            "--ports", "80", "--generate=systemd"]
    under_tmp = ServiceInlets(make_venv(tmp_path / "venv", str(service.python)) / "python", tmp_path / "venv" / "bin")
    refused = under_tmp.run(*args)  # as if installed from a checkout under /tmp
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"this inlets runs from {under_tmp.bin / 'inlets'}, under /tmp, which the unit's PrivateTmp=true hides" in \
        refused.stderr
    assert "pip install ." in refused.stderr
    home = _home_others_can_enter()
    try:
        readable = ServiceInlets(make_venv(home / "venv", str(service.python)) / "python", home / "venv" / "bin").run(*args)
        assert readable.returncode == 0, readable.stderr
        assert "ProtectHome=read-only" in readable.stdout  # ProtectHome=true would make the command vanish
        exec_start = _verified(tmp_path, readable.stdout, "inlets-tcp-client.service")
        assert exec_start.startswith(f"ExecStart={home / 'venv' / 'bin' / 'inlets'} tcp client --url wss://h:8123 ")
    finally:
        shutil.rmtree(home)


def _home_others_can_enter() -> Path:
    """A 0755 scratch folder where ProtectHome= applies (this user's home, or /home) that the unit's user can enter
    (a home of 0700, as /root is, refuses the unit: tests/runtime/test_unit_reachable.py)."""
    for parent in (Path.home(), Path("/home")):
        if not (str(parent) + "/").startswith(("/home/", "/root/")) or not os.access(parent, os.W_OK):
            continue
        home = Path(tempfile.mkdtemp(prefix="inlets-generate-", dir=parent))
        home.chmod(0o755)
        if reachable.blocked(str(home), "inlets") is None:
            return home
        shutil.rmtree(home)
    pytest.skip(f"no folder under {Path.home()} or /home that the unit's user may enter, where ProtectHome= applies")


# ------------------------------------------------------------- a client of several servers: a token each

def test_a_token_file_per_url_stays_one_file_per_server(tmp_path: Path) -> None:
    """``--token-file`` once per ``--url``: each server's token keeps its own Secret key or file, in order."""
    with folder_outside_tmp() as home:  # not under /tmp, which the unit's PrivateTmp hides
        files = []
        for n in range(2):
            files.append(home / f"token-{n}")
            files[-1].write_text(f"server-{n}-token-Qx7{n}\n")
        argv = ["tcp", "client", "--url", "wss://a:8123", "--url", "wss://b:8123", "--token-file", str(files[0]),
                "--token-file", str(files[1]), "--upstream", "127.0.0.1", "--ports", "80"]
        k8s = inlets(*argv, "--generate=k8s_yaml")
        assert k8s.returncode == 0, k8s.stderr
        kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(k8s.stdout)}
        data = {k: base64.b64decode(v).decode() for k, v in kinds["Secret"]["data"].items()}
        assert data == {"token-1": files[0].read_text(), "token-2": files[1].read_text()}
        args = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [args[i + 1] for i, a in enumerate(args) if a == "--token-file"] == [
            "/var/run/secrets/inlets/token-1", "/var/run/secrets/inlets/token-2"]
        assert not any("token-Qx7" in arg for arg in args)
        unit = unit_inlets(*argv, "--generate=systemd")
        assert unit.returncode == 0, unit.stderr
        exec_start = _verified(tmp_path, unit.stdout, "inlets-tcp-client.service")
        assert exec_start.count("--token-file") == 2, exec_start
        assert exec_start.index(f"--token-file {files[0]}") < exec_start.index(f"--token-file {files[1]}"), exec_start
        one = inlets(*argv[:8], "--upstream", "127.0.0.1", "--ports", "80", "--generate=k8s_yaml")  # one file for both
        assert set(next(d for d in yaml.safe_load_all(one.stdout) if d["kind"] == "Secret")["data"]) == {"token"}


@pytest.mark.parametrize("kind", ["systemd", "k8s_yaml"])
@pytest.mark.parametrize("argv, says", [
    (["http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--request-header-add", "X-A: a\nb"],
     "expected 'Name: value' (printable value)"),
    (["http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--request-header-add",
      "X-A: caf\udce9"], "the value of header 'X-A' is not UTF-8"),
    # the command's checks of basic auth, which need no file read: --generate wrote a unit that failed at every start
    (["http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--basic-auth-username", "a:b",
      "--basic-auth-password-file", "/etc/inlets/pw"], "--basic-auth-username must not contain ':'"),
    (["http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--basic-auth-username", "a"],
     "--basic-auth-username and --basic-auth-password (or its file or $INLETS_BASIC_AUTH_PASSWORD) go together"),
    (["http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--basic-auth-password-file",
      "/etc/inlets/pw"], "--basic-auth-username and --basic-auth-password (or its file or $INLETS_BASIC_AUTH_PASSWORD) go"),
    (["http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--basic-auth-username", "a",
      "--basic-auth-password-file", "/etc/inlets/pw", "--bearer-token-file", "/etc/inlets/bt"],
     "choose one of --basic-auth-username/--basic-auth-password and --bearer-token"),
    (["http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--basic-auth-username",
      "caf\udce9", "--basic-auth-password-file", "/etc/inlets/pw"], "--basic-auth-username is not UTF-8"),  # a byte not UTF-8 (Latin-1 é): a traceback
    (["tcp", "server", "--auto-tls", "--auto-tls-san", "a b"], "--auto-tls-san: 'a b' is not a valid host name"),
    (["tcp", "server", "--allow-ports", "abc"], "--allow-ports must be a comma-separated list of ports"),
    (["http", "server", "--log-level", "bogus"], "--log-level must be debug, info, warning or error, got 'bogus'"),
    (["tcp", "client", "--url", "wss://h:8123", "--upstream", "bad host", "--ports", "80"], "'bad host' is not a valid host name"),
    (["tcp", "client", "--url", "wss://h:8123", "--local", "abc"], "--local must be LOCAL_PORT:HOST:REMOTE_PORT"),
    (["http", "server", "--letsencrypt-domain", "bad_name"], "--letsencrypt-domain 'bad_name' is not a DNS name"),
    (["http", "server", "--letsencrypt-domain", "a.example.com", "--letsencrypt-issuer", "http://ca/dir"],
     "--letsencrypt-issuer must be prod, staging or an https:// directory URL"),
    (["http", "server", "--letsencrypt-domain", "a.example.com", "--letsencrypt-email", "nope"], "is not an email address"),
    (["http", "server", "--letsencrypt-email", "ops@example.com"], "need --letsencrypt-domain"),
    (["http", "server", "--letsencrypt-domain", "a.example.com", "--lb-proxy-protocol", "v2"],
     "--lb-proxy-protocol cannot be combined with --letsencrypt-domain"),
])
def test_flags_the_command_would_refuse_are_refused_before_a_unit_is_written(kind: str, argv: list[str], says: str) -> None:
    """A unit or Deployment that fails at every start is worse than a one-line error now; files named by the
    flags are not read (they may exist only where the unit runs: this token file does not exist here)."""
    result = inlets(*argv, "--token-file", "/etc/inlets/token", f"--generate={kind}")
    assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""



TOKENS = [arg for n in range(3) for arg in ("--token-file", f"/etc/inlets/token-{n}")]
QUIET_SERVER = ["--plaintext", "--control-addr", "127.0.0.1", "--control-port", "21110"]
UPSTREAM = {"tcp": ["--upstream", "127.0.0.1", "--ports", "80"], "http": ["--upstream", "http://127.0.0.1:3000"]}


@pytest.mark.parametrize("kind", ["systemd", "k8s_yaml"])
@pytest.mark.parametrize("argv, says", [
    (["tcp", "server"], "choose one of --tls-cert/--tls-key, --auto-tls, or --plaintext"),
    (["http", "server", "--plaintext", "--auto-tls"], "choose one of --tls-cert/--tls-key, --auto-tls, or --plaintext"),
    (["tcp", "server", "--tls-cert", "/etc/inlets/server.crt"], "--tls-cert and --tls-key go together"),
    (["http", "server", "--tls-key", "/etc/inlets/server.key"], "--tls-cert and --tls-key go together"),
    (["tcp", "server", "--plaintext", "--auto-tls-san", "example.com"], "--auto-tls-san and --auto-tls-path go with --auto-tls"),
    (["http", "server", "--auto-tls", "--auto-tls-path", ""], "--auto-tls-path is empty"),
    (["tcp", "server", "--plaintext", "--data-addr", "127.0.0.1 %n"], "--data-addr: '127.0.0.1 %n' is not a valid host name"),
    (["http", "server", "--plaintext", "--control-addr", "a..b"], "--control-addr: 'a..b' is not a valid host name"),
    (["tcp", "server", "--plaintext", "--trusted-proxies", "bogus"], "--trusted-proxies: 'bogus' is not an IP address"),
    (["tcp", "client", "--url", "wss://a:1", "--url", "wss://b:1", *TOKENS], "--token-file given 3 times for 2 --url"),
    (["http", "client", "--url", "wss://a:1", "--url", "wss://a:1"], "the same --url is given twice"),
    (["tcp", "client", "--url", "http://a:1"], "--url must start with wss:// (or ws:// behind a TLS proxy), got 'http://a:1'"),
    (["http", "client", "--url", "wss://a:1", "--tls-ca", "/etc/inlets/ca.crt", "--tls-insecure"],
     "give --tls-ca or --tls-insecure, not both"),
    (["tcp", "client", "--url", "wss://a:1", "--tls-server-name", ".."], "--tls-server-name: '..' is not a valid host name"),
    (["http", "client", "--url", "wss://a:99999"], "'99999' is not a port"),
    # blank ("$VAR" unset), each was taken as the flag left out: every interface, no trusted proxy, the environment's
    # proxy or none, the site served without its login, no expiry notices (a port of this test's own, should one run)
    (["tcp", "server", *QUIET_SERVER, "--control-addr", ""], "--control-addr is empty: give the address"),
    (["tcp", "server", *QUIET_SERVER, "--data-addr", " "], "--data-addr is empty: give the address"),
    (["http", "server", *QUIET_SERVER, "--port", "21111", "--data-addr", ""], "--data-addr is empty: give the address"),
    (["tcp", "server", *QUIET_SERVER, "--trusted-proxies", ""], "--trusted-proxies is empty: give the proxies'"),
    (["http", "server", *QUIET_SERVER, "--port", "21111", "--trusted-proxies", ""], "--trusted-proxies is empty: give the proxies'"),
    (["http", "server", *QUIET_SERVER, "--port", "21111", "--login-limit-exempt", ""],
     "--login-limit-exempt is empty: give the addresses"),
    (["tcp", "server", *QUIET_SERVER, "--login-limit-exempt", "bogus"], "--login-limit-exempt: 'bogus' is not an IP address"),
    (["tcp", "client", "--url", "wss://a:1", "--proxy", ""], "--proxy is empty: give http://HOST:PORT"),
    (["http", "client", "--url", "wss://a:1", "--proxy", ""], "--proxy is empty: give http://HOST:PORT"),
    # --proxy's own form, which only the run checked (after reading the token): a unit that failed at every start
    (["tcp", "client", "--url", "wss://a:1", "--proxy", "bogus://x"],
     "--proxy: proxy scheme 'bogus' is not supported (use http://, https:// or socks5://)"),
    (["http", "client", "--url", "wss://a:1", "--proxy", "http://127.0.0.1:3128/x"],
     "--proxy: invalid proxy http://127.0.0.1:3128: path is meaningless"),
    (["tcp", "client", "--url", "wss://a:1", "--proxy", "http://u@127.0.0.1:3128"],
     "--proxy: invalid proxy http://u@127.0.0.1:3128: username provided without password (keep it in"),
    (["http", "client", "--url", "wss://a:1", "--proxy", "http://u@127.0.0.1:3128?q", "--proxy-password-file",
      "/etc/inlets/proxy-pw"], "--proxy: invalid proxy http://u@127.0.0.1:3128: query is meaningless"),
    (["http", "client", "--url", "wss://a:1", "--basic-auth-username", "", "--basic-auth-password-file",
      "/etc/inlets/pw"], "--basic-auth-username is empty: give the user name"),
    (["http", "server", *QUIET_SERVER, "--port", "21111", "--letsencrypt-domain", "a.example.com", "--letsencrypt-email", ""],
     "--letsencrypt-email is empty: give an address"),
])
def test_flag_combinations_the_command_refuses_are_refused_by_generate_in_its_words(
        kind: str, argv: list[str], says: str) -> None:
    """One check for both paths: these were refused only once the command ran, so --generate wrote a unit or a
    Deployment that failed at every start. No file named here exists: neither path reads one before refusing."""
    argv = argv + (UPSTREAM[argv[0]] if argv[1] == "client" else []) + ([] if "--token-file" in argv else TOKENS[:2])
    ran = inlets(*argv)
    generated = inlets(*argv, f"--generate={kind}")
    one_line_error(generated, says)
    assert generated.stdout == "" and generated.stderr == ran.stderr, (generated.stderr, ran.stderr)


# ------------------------------------------------------------- a secret given inline and as a file

HTTP_UP = ["--url", "wss://h:8123", *UPSTREAM["http"], "--token-file", "{token}"]
TCP_UP = ["--url", "wss://h:8123", *UPSTREAM["tcp"], "--token-file", "{token}"]
SERVER_TLS = {"systemd": ["--auto-tls", "--auto-tls-path", "{folder}/certs"],  # k8s_yaml refuses --auto-tls
              "k8s_yaml": ["--tls-cert", "{secret}", "--tls-key", "{secret}"]}


@pytest.mark.parametrize("kind", ["systemd", "k8s_yaml"])
@pytest.mark.parametrize("argv, says", [
    (["tcp", "server", "--token-file", "{token}", "--token", "x"], "give --token or --token-file, not both"),
    (["http", "server", "--token", "x", "--token-file", "{token}"], "give --token or --token-file, not both"),
    (["tcp", "client", *TCP_UP, "--token", "x"], "give --token or --token-file, not both"),
    (["http", "client", *HTTP_UP, "--token", "x"], "give --token or --token-file, not both"),
    (["http", "client", *HTTP_UP, "--bearer-token", "x", "--bearer-token-file", "{secret}"],
     "give --bearer-token or --bearer-token-file, not both"),
    (["http", "client", *HTTP_UP, "--basic-auth-username", "a", "--basic-auth-password", "x",
      "--basic-auth-password-file", "{secret}"], "give --basic-auth-password or --basic-auth-password-file, not both"),
    (["tcp", "client", *TCP_UP, "--proxy", "http://u:p@127.0.0.1:3", "--proxy-password-file", "{secret}"],
     "--proxy-password-file: --proxy http://u@127.0.0.1:3 already holds a password: give it once"),
    (["http", "client", *HTTP_UP, "--proxy", "http://u:p@127.0.0.1:3", "--proxy-password-file", "{secret}"],
     "--proxy-password-file: --proxy http://u@127.0.0.1:3 already holds a password: give it once"),
])
def test_a_secret_given_inline_and_as_a_file_is_refused_by_generate_as_by_the_command(
        kind: str, argv: list[str], says: str) -> None:
    """--generate kept one of the two values and dropped the other (exit 0), where the command refuses both in one
    line: it now runs the command's own check. Real files, in a folder the unit's user may enter, so that nothing
    but the secret given twice could refuse the unit (the run path refuses before it reads or makes any file)."""
    with folder_outside_tmp() as folder:
        for name in ("token", "secret"):
            (folder / name).write_text(f"{name}-Vk3\n")
            (folder / name).chmod(0o600)
        server = argv[1] == "server"
        argv = [arg.format(folder=folder, token=folder / "token", secret=folder / "secret")
                for arg in argv + (SERVER_TLS[kind] if server else [])]
        ran = inlets(*argv)
        generated = (unit_inlets if kind == "systemd" else inlets)(*argv, f"--generate={kind}")
        one_line_error(ran, says)
        one_line_error(generated, says)
        assert generated.stdout == "" and generated.stderr == ran.stderr, (generated.stderr, ran.stderr)
        assert not (folder / "certs").exists()


@pytest.mark.parametrize("kind", ["systemd", "k8s_yaml"])
@pytest.mark.parametrize("argv, env, says", [
    ([], {"INLETS_BEARER_TOKEN": ""}, "$INLETS_BEARER_TOKEN is set but blank"),
    (["--basic-auth-username", "alice"], {"INLETS_BASIC_AUTH_PASSWORD": " "}, "$INLETS_BASIC_AUTH_PASSWORD is set but blank"),
    (["--bearer-token", " "], {}, "--bearer-token is blank"),
])
def test_a_blank_site_secret_is_refused_by_generate_as_by_the_command(
        kind: str, argv: list[str], env: dict[str, str], says: str) -> None:
    """``INLETS_BEARER_TOKEN=$UNSET --generate=systemd`` printed a unit serving the site unprotected (exit 0), where
    the command refuses the blank variable: the definition now gets the command's own one line."""
    argv = ["http", "client", "--url", "wss://203.0.113.10:8123", "--upstream", "http://127.0.0.1:3000",
            "--token", "tok-Zq81", *argv]
    ran = inlets(*argv, env=env)
    generated = (unit_inlets if kind == "systemd" else inlets)(*argv, f"--generate={kind}", env=env)
    one_line_error(ran, says)
    one_line_error(generated, says)
    assert generated.stdout == ""


# ------------------------------------------------------------- folders the service writes

@pytest.mark.parametrize("option, extra", [
    ("--auto-tls-path", ["tcp", "server", "--auto-tls"]),
    ("--letsencrypt-path", ["http", "server", "--auto-tls", "--letsencrypt-domain", "tunnel.example.com"]),
])
def test_a_folder_the_server_writes_is_writable_in_the_unit(option: str, extra: list[str], tmp_path: Path) -> None:
    """ProtectSystem=strict leaves only the StateDirectory writable: a server told to keep its certificates
    elsewhere failed at every start. The folder becomes a ReadWritePaths= and the setup hint makes it."""
    result = unit_inlets(*extra, "--token-file", "/etc/inlets/token", option, "certs", "--generate=systemd")
    assert result.returncode == 0, result.stderr
    folder = PROCESS_ROOT.resolve() / "certs"  # relative to where inlets ran: the service's working directory is /
    assert f"ReadWritePaths={folder}\n" in result.stdout
    assert f" {option} {folder}" in _verified(tmp_path, result.stdout, "inlets-server.service")
    assert f"; mkdir -p {folder}; chown inlets: {folder}; chmod 700 {folder}" in result.stdout


def test_a_folder_the_server_writes_and_reads_a_file_from_is_only_writable(tmp_path: Path) -> None:
    """The token kept in the --auto-tls-path folder made it a ReadOnlyPaths= and a ReadWritePaths= both: systemd
    keeps the more restrictive of two mounts of one path (namespace.c, drop_duplicates), so the server could not
    write its CA there and failed at every start. The folder is now only writable (the token still read there)."""
    with folder_outside_tmp() as folder:
        (folder / "token").write_text("tok-Rw71\n")
        (folder / "token").chmod(0o600)
        result = unit_inlets("tcp", "server", "--auto-tls", "--auto-tls-path", str(folder), "--token-file",
                             str(folder / "token"), "--generate=systemd")
        assert result.returncode == 0, result.stderr
        assert f" --token-file {folder}/token" in _verified(tmp_path, result.stdout, "inlets-tcp-server.service")
        paths = [line for line in result.stdout.splitlines() if line.startswith(("ReadOnlyPaths=", "ReadWritePaths="))]
        assert paths == [f"ReadWritePaths={folder}"], paths


def test_the_setup_line_leaves_a_certificate_others_read_as_it_is(tmp_path: Path) -> None:
    """``--tls-ca /etc/ssl/certs/ca-certificates.crt`` had the setup line chown that shared bundle to the unit's user
    and chmod it 600: every other user of the host could no longer verify TLS. A certificate the unit's user can read
    is left alone; one it cannot read (0600 root's) is still handed over, as the secrets are."""
    with folder_outside_tmp() as folder:
        shared, private = folder / "shared-ca.crt", folder / "private-ca.crt"
        for path, mode in ((shared, 0o644), (private, 0o600)):
            path.write_text("-----BEGIN CERTIFICATE-----\n")
            path.chmod(mode)
        hints = []
        for ca in (shared, private):
            result = unit_inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", "/etc/inlets/token",
                                 "--tls-ca", str(ca), "--upstream", "127.0.0.1", "--ports", "80", "--generate=systemd")
            assert result.returncode == 0, result.stderr
            assert f" --tls-ca {ca}" in _verified(tmp_path, result.stdout, "inlets-tcp-client.service")
            hints.append(next(line for line in result.stdout.splitlines() if line.startswith("# Before the first")))
        assert str(shared) not in hints[0] and "chmod 600 /etc/inlets/token" in hints[0], hints[0]
        # the line sorts its paths, so where the test's folder lies (/work, /check) decides the order
        assert f"chmod 600 {' '.join(sorted(['/etc/inlets/token', str(private)]))}" in hints[1], hints[1]


def test_the_proxy_the_environment_names_goes_into_the_unit(tmp_path: Path) -> None:
    """The client took HTTPS_PROXY from its environment, which a unit does not have: the unit connected directly and,
    where only the proxy gets out, never connected. It becomes the unit's --proxy, its password a file; NO_PROXY is
    honoured; --urls the environment sends different ways are refused in one line."""
    client = ["tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", "/etc/inlets/token", "--upstream",
              "127.0.0.1", "--ports", "80", "--generate=systemd"]
    result = unit_inlets(*client, env={"HTTPS_PROXY": "http://al:pw-Px4@proxy.corp:3128"})
    assert result.returncode == 0, result.stderr
    exec_start = _verified(tmp_path, result.stdout, "inlets-tcp-client.service")
    assert " --proxy http://al@proxy.corp:3128 " in exec_start and "pw-Px4" not in result.stdout, exec_start
    assert "--proxy-password-file /etc/inlets/proxy-password" in exec_start
    bypassed = unit_inlets(*client, env={"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "203.0.113.10"})
    assert bypassed.returncode == 0 and "--proxy" not in bypassed.stdout, bypassed.stderr
    mixed = inlets(*client, "--url", "wss://203.0.113.11:8123",
                   env={"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": "203.0.113.10"})
    one_line_error(mixed, "the environment's proxy settings (HTTPS_PROXY, NO_PROXY, ...) send these --urls different")


def test_a_written_folder_under_tmp_is_refused() -> None:
    result = unit_inlets("tcp", "server", "--auto-tls", "--auto-tls-path", "/tmp/inlets-certs", "--token-file",
                         "/etc/inlets/token", "--generate=systemd")
    assert result.returncode == 2
    assert result.stderr == ("inlets: error: --auto-tls-path /tmp/inlets-certs is under /tmp, which the unit's "
                             "PrivateTmp=true hides from the service: keep it elsewhere (e.g. /etc/inlets/) and give that path\n")


def test_a_secret_given_inline_gets_its_file_made_by_the_setup_line_and_named_on_stderr(tmp_path: Path) -> None:
    """``--token X`` becomes ``--token-file /etc/inlets/token``, a file nobody has written: the setup line's chown
    failed on it ("No such file or directory") and nothing said to write the token there, so the unit failed at
    every start. The setup line makes it (0600, before the secret goes in) and stderr names it, never the secret."""
    result = unit_inlets("tcp", "client", "--url", "wss://h:8123", "--token", SECRETS["token"], "--upstream",
                         "127.0.0.1", "--ports", "80", "--generate=systemd", env={"INLETS_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    _verified(tmp_path, result.stdout, "inlets-tcp-client.service")
    hint = next(line for line in result.stdout.splitlines() if line.startswith("# Before the first start: "))
    commands = [shlex.split(part) for part in hint.removeprefix("# Before the first start: ").split("; ")]
    made = commands.index(["(umask", "077", "&&", "touch", "/etc/inlets/token)"])  # 0600 from the start
    folder = commands.index(["install", "-d", "-m", "0750", "-o", "root", "-g", "inlets", "/etc/inlets"])
    assert folder < made < commands.index(["chown", "inlets:", "/etc/inlets/token"])
    assert next(i for i, c in enumerate(commands) if c[0] == "chmod") > made
    (note,) = result.stderr.strip().splitlines()
    assert "/etc/inlets/token" in note and "write" in note and SECRETS["token"] not in result.stderr + result.stdout
    given = unit_inlets("tcp", "client", "--url", "wss://h:8123", "--token-file", "/etc/inlets/token", "--upstream",
                        "127.0.0.1", "--ports", "80", "--generate=systemd", env={"INLETS_TOKEN": ""})
    assert given.returncode == 0 and given.stderr == "" and "touch" not in given.stdout, given.stderr  # the user's file


def test_the_setup_line_makes_the_secret_files_private_from_the_start(tmp_path: Path) -> None:
    """``--token X`` in a unit: its setup line made /etc/inlets/token with ``mkdir -p; touch`` under umask 022, a 0644
    file in a 0755 folder until the chmod, and a user who opened it meanwhile kept reading the token written into it.
    The line's steps up to the hand-over, run in a shell (umask 022) on a stand-in for /etc/inlets: a folder only root
    and the service enter, files 0600 from the start, and a token already there kept when the line is run again."""
    import grp
    import stat

    result = unit_inlets("tcp", "client", "--url", "wss://h:8123", "--token", "tok-Zq81", "--upstream", "127.0.0.1",
                         "--ports", "80", "--generate=systemd", env={"INLETS_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    hint = next(line for line in result.stdout.splitlines() if line.startswith("# Before the first start: "))
    steps = hint.removeprefix("# Before the first start: ").split("; ")
    making = [step for step in steps if not step.startswith(("useradd ", "chown ", "chmod "))]  # no user made here
    folder = tmp_path / "etc-inlets"
    script = "; ".join(making).replace("/etc/inlets", str(folder))
    group = grp.getgrgid(os.getgid()).gr_name
    script = script.replace("-g inlets", f"-g {group}").replace("-o root", f"-o {os.getuid()}")
    for run in range(2):
        made = subprocess.run(["sh", "-ec", f"umask 022; {script}"], capture_output=True, text=True, timeout=30)
        assert made.returncode == 0, made.stderr
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750, script
        assert stat.S_IMODE((folder / "token").stat().st_mode) == 0o600, script
        if not run:
            (folder / "token").write_text("tok-Zq81\n")
    assert (folder / "token").read_text() == "tok-Zq81\n"  # the line run again keeps the secret written


@pytest.mark.parametrize(("local", "binds_low"), [("443:127.0.0.1:8443", True), ("8443:127.0.0.1:443", False)])
def test_a_client_listening_on_a_port_under_1024_may_bind_it(local: str, binds_low: bool, tmp_path: Path) -> None:
    """A client's ``--local 443:...`` listens on 443 itself: its unit had no capability at all
    (CapabilityBoundingSet= empty), so it failed at every start with "cannot listen on 127.0.0.1:443 for --local:
    Permission denied". Such a client gets the server's one right, CAP_NET_BIND_SERVICE; any other keeps none."""
    result = unit_inlets("tcp", "client", "--url", "wss://h:8123", "--token-file", "/etc/inlets/token", "--local",
                         local, "--generate=systemd")
    assert result.returncode == 0, result.stderr
    _verified(tmp_path, result.stdout, "inlets-tcp-client.service")
    lines = result.stdout.splitlines()
    if binds_low:
        assert {"AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"} <= set(lines)
    else:
        assert "CapabilityBoundingSet=" in lines and not any(line.startswith("AmbientCapabilities=") for line in lines)


@pytest.mark.parametrize(("flags", "binds_low"), [
    (["tcp", "--allow-ports", "5432,6379"], False),
    (["tcp", "--allow-ports", "5432,443"], True),
    (["tcp", "--allow-ports", "5432", "--control-port", "443"], True),
    (["tcp"], True),  # a client may ask for any port
    (["http", "--port", "8000"], False),
    (["http"], False),  # --port 8000, --control-port 8123
    (["http", "--port", "80"], True),
    (["http", "--letsencrypt-domain", "a.example.com"], True),  # --port 80, --https-port 443
    (["http", "--letsencrypt-domain", "a.example.com", "--port", "8080"], True),  # still 443
    (["http", "--letsencrypt-domain", "a.example.com", "--port", "8080", "--https-port", "8443"], False),
])
def test_a_server_may_bind_ports_under_1024_only_when_it_listens_on_one(flags: list[str], binds_low: bool,
                                                                         tmp_path: Path) -> None:
    """Every server unit had CAP_NET_BIND_SERVICE, whatever it bound (``--allow-ports 5432,6379``, ``--port 8000``):
    a right it never used, left to whoever takes the process over. Now only a unit that may bind a port under 1024
    has it; the others keep none (CapabilityBoundingSet= empty), as a client does."""
    result = unit_inlets(flags[0], "server", "--auto-tls", "--token-file", "/etc/inlets/token", *flags[1:],
                         "--generate=systemd")
    assert result.returncode == 0, result.stderr
    _verified(tmp_path, result.stdout, f"inlets-{flags[0]}-server.service")
    lines = result.stdout.splitlines()
    if binds_low:
        assert {"AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"} <= set(lines)
    else:
        assert "CapabilityBoundingSet=" in lines and not any(line.startswith("AmbientCapabilities=") for line in lines)


def test_the_unit_runs_the_inlets_that_generated_it_not_another_on_path(tmp_path: Path) -> None:
    """``/opt/inlets/bin/inlets ... --generate=systemd``, as the README and the refusal say to run it, wrote the first
    ``inlets`` on PATH into ExecStart: another installation (an older version, or the pyenv one under /root that was
    refused, so the advice's own command was refused again). The unit runs the installation that printed it."""
    service = service_inlets()
    with folder_outside_tmp() as other:
        (other / "inlets").write_text("#!/bin/sh\nexit 0\n")
        (other / "inlets").chmod(0o755)
        result = service.run("tcp", "client", "--url", "wss://h:8123", "--token-file", "/etc/inlets/token", "--upstream",
                             "127.0.0.1", "--ports", "80", "--generate=systemd",
                             env={"PATH": f"{other}{os.pathsep}{service.bin}{os.pathsep}{os.environ.get('PATH', '')}"})
        assert result.returncode == 0, result.stderr
        exec_start = _verified(tmp_path, result.stdout, "inlets-tcp-client.service")
    assert exec_start.startswith(f"ExecStart={service.bin / 'inlets'} tcp client "), exec_start


def test_a_certificate_named_through_a_link_stays_the_link_so_a_renewal_is_reloaded(tmp_path: Path) -> None:
    """certbot's live/DOMAIN/fullchain.pem links to archive/DOMAIN/fullchain1.pem and moves to fullchain2.pem at each
    renewal. The unit named the link's target, so ``systemctl reload`` re-read the old certificate until it expired
    (measured: after renewal and SIGHUP, event=certificate_reloaded cert=.../fullchain1.pem, the old subject served)."""
    with folder_outside_tmp() as folder:
        (folder / "archive").mkdir()
        (folder / "live").mkdir()
        for name in ("fullchain", "privkey"):
            (folder / "archive" / f"{name}1.pem").write_text("renewed by certbot\n")
            (folder / "live" / f"{name}.pem").symlink_to(f"../archive/{name}1.pem")
        result = unit_inlets("http", "server", "--tls-cert", str(folder / "live" / "fullchain.pem"), "--tls-key",
                             str(folder / "live" / "privkey.pem"), "--token-file", "/etc/inlets/token",
                             "--generate=systemd")
        assert result.returncode == 0, result.stderr
        exec_start = _verified(tmp_path, result.stdout, "inlets-http-server.service")
    assert f"--tls-cert {folder}/live/fullchain.pem --tls-key {folder}/live/privkey.pem" in exec_start, exec_start
    assert f"ReadOnlyPaths=-{folder}/archive" in result.stdout.splitlines()  # where the kernel reads it, as before


@pytest.mark.parametrize("argv", [["tcp", "client", "--upstream", "127.0.0.1", "--ports", "80", "--tls-ca", ""],
                                  ["http", "client", "--upstream", "https://127.0.0.1:3000", "--upstream-ca", ""]])
def test_a_blank_file_flag_is_refused_not_made_the_current_folder(argv: list[str]) -> None:
    """``--tls-ca "$CA"`` with CA unset: the unit named the folder --generate ran in as the file (made absolute), and
    failed at every start with "is a directory", which the command says at once. (A blank token file is read, and
    refused, as it is.)"""
    result = unit_inlets(*argv, "--url", "wss://203.0.113.10:8123", "--token-file", "/etc/inlets/token",
                         "--generate=systemd")
    one_line_error(result, f"Invalid value for '{argv[-2]}': the path is empty: give a file or folder, or leave the flag out")
    assert result.stdout == ""


@pytest.mark.parametrize("kind", ["systemd", "k8s_yaml"])
def test_a_credential_header_gets_a_warning_that_it_lands_in_the_unit(kind: str) -> None:
    """``--request-header-add 'Authorization: Bearer ...'`` went into the unit's ExecStart (or the Deployment's args)
    without a word, while every other secret becomes a file: a header's value has no file form, so it is said, by
    name (the value never), and only for names that look like a credential."""
    value = "Bearer hdr-Kq71"
    with folder_outside_tmp() as folder:
        token = folder / "token"
        token.write_text("tok-Zq81\n")
        token.chmod(0o600)
        argv = ["http", "client", "--url", "wss://203.0.113.10:8123", "--upstream", "http://127.0.0.1:3000",
                "--token-file", str(token), "--request-header-add", "X-Env: dev", f"--generate={kind}"]
        plain = (unit_inlets if kind == "systemd" else inlets)(*argv)
        result = (unit_inlets if kind == "systemd" else inlets)(*argv, "--request-header-add", f"Authorization: {value}")
    assert plain.returncode == 0 and "warning" not in plain.stderr, plain.stderr
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    where = "the unit's ExecStart" if kind == "systemd" else "the Deployment's args"
    assert len(warnings) == 1 and warnings[0].startswith("inlets: warning: --request-header-add Authorization: "), warnings
    assert where in warnings[0] and "--bearer-token-file" in warnings[0], warnings[0]
    assert value not in result.stderr and value in result.stdout  # said by name; the unit still runs what was asked


def test_a_relative_letsencrypt_ca_becomes_absolute_in_the_unit(tmp_path: Path) -> None:
    """``--letsencrypt-ca ca.pem`` stayed relative in ExecStart: the service runs in /, so it failed at every start
    with "--letsencrypt-ca not found: ca.pem". It is made absolute as the other file flags are, and, a certificate
    the unit's user can read, left alone by the setup line."""
    result = unit_inlets("http", "server", "--auto-tls", "--token-file", "/etc/inlets/token", "--letsencrypt-domain",
                         "tunnel.example.com", "--letsencrypt-ca", "ca.pem", "--generate=systemd")
    assert result.returncode == 0, result.stderr
    ca = PROCESS_ROOT.resolve() / "ca.pem"  # relative to where inlets ran
    assert f" --letsencrypt-ca {ca} " in _verified(tmp_path, result.stdout, "inlets-http-server.service")
    assert f"ReadOnlyPaths=-{ca.parent}" in result.stdout.splitlines()


def _exposure(tmp_path: Path, text: str, name: str) -> float:
    """``systemd-analyze security``'s overall exposure level of a unit (0 is the most sandboxed, 10 none)."""
    unit = tmp_path / name
    unit.write_text(text)
    check = subprocess.run([binary("systemd-analyze"), "security", "--offline=true", str(unit)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    return float(check.stdout.split("Overall exposure level for ")[1].split(": ")[1].split()[0])


@pytest.mark.parametrize("argv", [["tcp", "server", "--auto-tls"],
                                  ["http", "client", "--url", "wss://203.0.113.10:8123", "--upstream",
                                   "http://127.0.0.1:3000"]])
def test_a_generated_unit_filters_system_calls_and_keeps_its_files_private(argv: list[str], tmp_path: Path) -> None:
    """The unit left every system call open (no SystemCallFilter=), /proc's other processes visible and a 0022 umask:
    exposure 3.4 (server). With systemd's @system-service filter (EPERM for the rest), ProtectProc=invisible,
    PrivateMounts, RemoveIPC and UMask=0077 it is 1.7: what the server needs (binding ports, reading its files,
    writing its certificate folder) stays allowed, as tests/boot shows on a booted VM."""
    result = unit_inlets(*argv, "--token-file", "/etc/inlets/token", "--generate=systemd")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert {"SystemCallFilter=@system-service", "SystemCallErrorNumber=EPERM", "UMask=0077"} <= set(lines)
    assert _exposure(tmp_path, result.stdout, "inlets-test.service") <= 2.0


# ------------------------------------------------------------- the definition runs the argv the command runs

def _unspecified(word: str) -> str:
    """``word`` after systemd's specifier and variable passes: ``%%`` and ``$$`` made single (any other ``%`` or
    ``$`` would be expanded, so none may be left)."""
    out, index = [], 0
    while index < len(word):
        if word[index] in "%$":
            assert word[index + 1:index + 2] == word[index], f"systemd would expand {word[index:index + 2]!r}: {word!r}"
            index += 1
        out.append(word[index])
        index += 1
    return "".join(out)


def _exec_argv(unit: str) -> list[str]:
    """The argv of a unit's ``ExecStart=`` as systemd reads it (config_parse_exec): words split at blanks outside
    double quotes, C escapes undone (``\\\\ \\" \\n \\t \\r \\xNN``), then specifiers and variables."""
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
    words = r'"((?:[^"\\]|\\.)*)"(?=\s|$)|([^\s"\\]+)'  # what exec_word writes: a plain word, or one quoted
    assert re.fullmatch(rf"\s*(?:(?:{words})\s*)*", line), line
    argv = []
    for word in re.finditer(words, line):
        text = word[2] if word[1] is None else re.sub(
            r"\\(x[0-9a-fA-F]{2}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 3 else escapes[m[1]], word[1])
        argv.append(_unspecified(text))
    return argv


def _definition_argv(kind: str, given: list[str]) -> list[str]:
    """``inlets GIVEN --generate=KIND``: the argv its unit's ExecStart (less the program) or its Deployment runs."""
    result = (unit_inlets if kind == "systemd" else inlets)(*given, f"--generate={kind}")
    assert result.returncode == 0, result.stderr
    if kind == "systemd":
        return _exec_argv(result.stdout)[1:]
    deployment = next(doc for doc in yaml.safe_load_all(result.stdout) if doc["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


HTTP_CLIENT_BASE = ["http", "client", "--url", "wss://203.0.113.10:8123", "--upstream", "http://127.0.0.1:3000"]


@pytest.mark.parametrize("kind", ["systemd", "k8s_yaml"])
@pytest.mark.parametrize("given, runs", [
    # a value that starts with "--" and holds "=": --generate's own reading of argv took it for --NAME=VALUE, so the
    # unit added the header "--X-Y: a" and a stray "b", or took the user name "--token=usr-Qv2" for an inline token
    (["--request-header-add", "--X-Y: a=b"], None),
    (["--basic-auth-username", "--token=usr-Qv2", "--basic-auth-password-file", "{pw}"], None),
    (["--request-header-remove", "--X-Z", "--basic-auth-username", "--token=usr-Qv2",
      "--basic-auth-password-file={pw}"],
     ["--request-header-remove", "--X-Z", "--basic-auth-username", "--token=usr-Qv2", "--basic-auth-password-file",
      "{pw}"]),
    # an empty proxy password is no secret: its file would be empty, which the unit refused at every start
    (["--proxy", "http://u:@127.0.0.1:3128"], None),
    # typer takes the last --proxy: the unit kept both, with the first one's password in a file, and refused it
    (["--proxy", "http://u:prx-Pw4@127.0.0.1:3128", "--proxy", "none"], ["--proxy", "none"]),
])
def test_the_definition_runs_exactly_the_flags_the_command_takes(kind: str, given: list[str],
                                                                 runs: list[str] | None) -> None:
    """What --generate writes, read as systemd (or the kubelet) reads it, is the argv the command ran with: the same
    flags and values, each secret's file where the definition keeps it (last, where --generate puts it)."""
    with folder_outside_tmp() as folder:
        for name in ("token", "pw"):
            (folder / name).write_text(f"{name}-Vk3\n")
            (folder / name).chmod(0o600)
        files = {"token": str(folder / "token"), "pw": str(folder / "pw")}
        ran = [*HTTP_CLIENT_BASE, *[arg.format(**files) for arg in given], "--token-file", files["token"]]
        argv = _definition_argv(kind, ran)
    expected = [*HTTP_CLIENT_BASE, *[arg.format(**files) for arg in runs or given], "--token-file", files["token"]]
    if kind == "k8s_yaml":  # the files are keys of the Secret, mounted here
        expected = [{files["token"]: "/var/run/secrets/inlets/token", files["pw"]:
                     "/var/run/secrets/inlets/basic-auth-password"}.get(arg, arg) for arg in expected]
    assert argv == expected
    assert "prx-Pw4" not in " ".join(argv)


@pytest.mark.parametrize("kind", ["systemd", "k8s_yaml"])
@pytest.mark.parametrize("proxy, says", [
    # sent as ":PASSWORD" (curl's way): --proxy-password-file, where a unit keeps a password, needs a user
    ("http://:prx-Pw4@127.0.0.1:3128", "--proxy http://127.0.0.1:3128 holds a password but no user, and a unit keeps"
                                       " the password in --proxy-password-file, which needs one: give --proxy http://"),
    # a file's first line, stripped, is its password: the unit would send another one
    ("http://u:%20prx-Pw4@127.0.0.1:3128", "--proxy http://u@127.0.0.1:3128: its password begins or ends with a space"),
    ("http://u:prx%0APw4@127.0.0.1:3128", "--proxy http://u@127.0.0.1:3128: its password begins or ends with a space"),
])
def test_a_proxy_password_no_file_can_carry_is_refused_in_one_line(kind: str, proxy: str, says: str) -> None:
    """The command sends these; a unit reading the password from a file could not (it exited 2 at every start, or
    sent another password): refused now, the password never shown."""
    result = (unit_inlets if kind == "systemd" else inlets)(
        *HTTP_CLIENT_BASE, "--token", "tok-Zq81", "--proxy", proxy, f"--generate={kind}", env={"INLETS_TOKEN": ""})
    one_line_error(result, says)
    assert result.stdout == "" and "prx" not in result.stderr and "Pw4" not in result.stderr, result.stderr


def test_a_unit_whose_exec_start_systemd_could_not_read_is_refused(tmp_path: Path) -> None:
    """systemd reads no unit-file line of 1 MiB or more (LONG_LINE_MAX): such a unit was written without a word,
    and never loaded ("No buffer space available"), though the command ran with the same flags. Header values of
    '%', written twice there, make a line over it; a few fewer make one under it, which systemd loads."""
    value = "%" * 4096  # the longest value a header takes

    def headers(count: int) -> list[str]:
        return [arg for n in range(count) for flag in ("--request-header-add", "--response-header-add")
                for arg in (flag, f"X-H{n}: {value}")]

    base = [*HTTP_CLIENT_BASE, "--token-file", "/etc/inlets/token", "--generate=systemd"]
    under = unit_inlets(*base, *headers(60), timeout=60)  # each failure message is short: the unit is 1 MB
    assert under.returncode == 0, under.stderr[:300]
    assert len(_verified(tmp_path, under.stdout)) > 980_000
    over = unit_inlets(*base, *headers(64), timeout=60)
    assert (over.returncode, over.stdout, over.stderr.count("\n")) == (2, "", 1), over.stderr[:300]
    assert over.stderr.startswith("inlets: error: cannot write a systemd unit: its ExecStart= line would be ") and (
        "bytes, and systemd loads no unit with a line of 1048576 bytes or more" in over.stderr), over.stderr[:300]
