"""`inletsctl create --mode http --domain D` on a cloud gives the exit server Let's Encrypt.

The rendered user-data runs `inlets http server --letsencrypt-domain D ...` with a
writable 0700 state folder (a systemd drop-in), and bad combinations are one-line
errors. End to end: the DigitalOcean fake "boots" the droplet by running the unit's
own command on its loopback IP, ports 80 and 443, from the embedded wheel (which then
carries the Let's Encrypt modules); pebble (through dnsmasq and a relay to the droplet's
port 80) issues the certificate, and curl reaches the app over HTTPS through the printed
client command.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from helpers.http import need  # noqa: E402
from helpers.letsencrypt import dnsmasq, pebble, wait_until  # noqa: E402
from helpers.prov_fake_do import DO_TOKEN, FakeDigitalOcean  # noqa: E402
from helpers.tunnel import make_tls  # noqa: E402
from helpers.prov_support import free_port, http_upstream, one_line_error, run_cli, run_client  # noqa: E402
from inlets_py.provisioner.material import generate  # noqa: E402
from inlets_py.provisioner.render import UserDataOptions, user_data  # noqa: E402
from inlets_py.provisioner.spec import LetsEncrypt, build_spec  # noqa: E402
from inlets_py.provisioner.wheel import LETSENCRYPT_FOLDER, server_modules  # noqa: E402
from inlets_py import runtime  # noqa: E402

TOKEN = DO_TOKEN  # conftest's token_file and fake take it
DOMAIN = "site.example.test"


def _units(text: str) -> dict[str, str]:
    doc = yaml.safe_load(text)
    return {f["path"]: f["content"] for f in doc["write_files"] if f["path"].startswith("/etc/systemd/system/")}


def _exec_start(unit: str) -> list[str]:
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_user_data_runs_the_server_with_letsencrypt_and_a_private_state_folder(tmp_path: Path) -> None:
    spec = build_spec("http", None, ["example.com", "api.example.com"],
                      letsencrypt=LetsEncrypt("ops@example.com", "staging"))
    text = user_data(spec, generate("le"), UserDataOptions(name="le", package="inlets-py==0.1.0"))
    units = _units(text)
    argv = _exec_start(units["/etc/systemd/system/inlets.service"])
    flags = list(zip(argv, argv[1:]))
    assert ("--letsencrypt-domain", "example.com") in flags and ("--letsencrypt-domain", "api.example.com") in flags
    assert ("--letsencrypt-email", "ops@example.com") in flags and ("--letsencrypt-issuer", "staging") in flags
    assert ("--port", "80") in flags and "--https-port" not in argv  # 443, the default
    drop_in = units["/etc/systemd/system/inlets.service.d/letsencrypt.conf"].splitlines()
    assert {"[Service]", "StateDirectory=inlets", "StateDirectoryMode=0700", "Environment=XDG_DATA_HOME=%S"} <= set(drop_in)
    plain = user_data(build_spec("http", None, ["example.com"]), generate("p"), UserDataOptions("p", "inlets-py"))
    assert "letsencrypt" not in plain  # only when asked
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip("cloud-init is not installed: the schema check did not run")
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr


def test_bad_combinations_are_one_line_errors(tmp_path: Path, token_file: Path, capsys) -> None:
    state = str(tmp_path / "state")
    do = ["--provider", "digitalocean", "--api-url", "http://127.0.0.1:9", "--access-token-file", str(token_file)]
    cases = [
        (["--mode", "http", "--domain", "a.example.com", "--letsencrypt", "--http-port", "8080", *do], "port 80"),
        (["--mode", "http", "--letsencrypt", *do], "needs --domain"),
        (["--mode", "http", "--domain", "a.example.com", "--letsencrypt"], "needs a cloud provider"),
        (["--mode", "tcp", "--letsencrypt-email", "ops@example.com", *do], "need Let's Encrypt"),
        (["--mode", "http", "--domain", "a.example.com", "--letsencrypt-issuer", "http://ca/dir", *do], "https://"),
        (["--mode", "http", "--domain", "a.example.com", "--letsencrypt-email", "ops", *do], "not an email address"),
    ]
    for args, needle in cases:
        one_line_error(run_cli(capsys, "create", "--state-dir", state, *args), needle)


def test_an_issuer_url_with_a_password_is_refused_before_anything_is_made(tmp_path: Path, token_file: Path,
                                                                          capsys) -> None:
    """create passed a user name and password in --letsencrypt-issuer on to the VM, whose server logged them at
    every retry: refused here, as the server refuses them, before the cloud is asked for anything."""
    state = tmp_path / "s"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", boot=False, active=False) as fake:
        result = run_cli(capsys, "create", "--provider", "digitalocean", "--api-url", fake.url, "--access-token-file",
                         str(token_file), "--mode", "http", "--domain", DOMAIN, "--letsencrypt-issuer",
                         "https://acme:S3CRETPW@ca.internal:9000/acme/directory", "--state-dir", str(state),
                         "--timeout", "1")
        one_line_error(result, "--letsencrypt-issuer must not carry a user name or password (the ACME account key is "
                               "the credential): leave out the part up to '@'")
        assert result.code == 2 and not fake.requests and not fake.user_data and not state.exists()
    assert "S3CRETPW" not in result.err + result.out


def test_local_letsencrypt_options_hint_names_only_what_local_takes(tmp_path: Path, capsys) -> None:
    """The hint said "(or --letsencrypt)", which --provider local then refuses: it names what to do there instead."""
    line = one_line_error(run_cli(capsys, "create", "--provider", "local", "--mode", "http", "--letsencrypt-email",
                                  "x", "--state-dir", str(tmp_path / "s")), "need Let's Encrypt")
    assert "--letsencrypt)" not in line and "--provider local does not offer it" in line, line


def test_digitalocean_create_defaults_to_letsencrypt_for_domains(tmp_path: Path, token_file: Path, capsys) -> None:
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", boot=False, active=False) as fake:
        run_cli(capsys, "create", "le-default", "--provider", "digitalocean", "--mode", "http", "--domain", DOMAIN,
                "--api-url", fake.url, "--access-token-file", str(token_file), "--state-dir", str(tmp_path / "s"),
                "--timeout", "1")
        (text,) = fake.user_data.values()
    argv = _exec_start(_units(text)["/etc/systemd/system/inlets.service"])
    assert argv[argv.index("--letsencrypt-domain") + 1] == DOMAIN
    assert argv[argv.index("--letsencrypt-issuer") + 1] == "prod" and "--letsencrypt-email" not in argv


def test_a_private_issuers_ca_reaches_the_server_that_verifies_it(tmp_path: Path, token_file: Path, capsys) -> None:
    """--letsencrypt-issuer takes a private CA's URL, whose HTTPS the server verifies only with --letsencrypt-ca:
    without a way to send that bundle, a booted VM logged "could not be verified (a private ACME CA: give
    --letsencrypt-ca)" every retry, an option create did not have."""
    ca = make_tls(tmp_path / "private-ca", ["127.0.0.1"]).ca
    # as openssl pkcs12 writes it: text around the certificate, here with a character YAML cannot carry
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("Bag Attributes\n    friendlyName: root\x1c\nsubject=/CN=root\n" + ca.read_text())
    state, issuer = str(tmp_path / "s"), "https://ca.internal:9000/acme/acme/directory"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", boot=False, active=False) as fake:
        do = ["--provider", "digitalocean", "--api-url", fake.url, "--access-token-file", str(token_file)]
        run_cli(capsys, "create", "le-ca", *do, "--mode", "http", "--domain", DOMAIN, "--letsencrypt-issuer", issuer,
                "--letsencrypt-ca", str(bundle), "--state-dir", state, "--timeout", "1")
        (text,) = fake.user_data.values()
        (tmp_path / "not-pem").write_text("hello\n")
        for args, needle in [(["--letsencrypt-ca", str(ca)], "is for a private CA"),
                             (["--letsencrypt-issuer", issuer, "--letsencrypt-ca", str(tmp_path / "not-pem")], "no PEM"),
                             (["--letsencrypt-issuer", issuer, "--letsencrypt-ca", str(tmp_path / "gone")], "cannot read")]:
            one_line_error(run_cli(capsys, "create", *do, "--mode", "http", "--domain", DOMAIN, *args, "--state-dir",
                                   state), needle)
    one_line_error(run_cli(capsys, "create", "--mode", "tcp", "--letsencrypt-ca", str(ca), "--provider",
                           "digitalocean", "--access-token-file", str(token_file), "--state-dir", state), "need Let's Encrypt")
    argv = _exec_start(_units(text)["/etc/systemd/system/inlets.service"])
    assert argv[argv.index("--letsencrypt-issuer") + 1] == issuer
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    written = files[argv[argv.index("--letsencrypt-ca") + 1]]
    assert written["content"] == ca.read_text() and written["permissions"] == "0644"


class _Relay(socketserver.ThreadingTCPServer):
    """127.0.0.1:PORT -> the droplet's port 80: where pebble's validation connects (it resolves to 127.0.0.1)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, target) -> None:
        self.target = target
        super().__init__(("127.0.0.1", port), _Pipe)


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        upstream = socket.create_connection((self.server.target(), 80), timeout=10)  # type: ignore[attr-defined]
        self.request.settimeout(10)

        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        other = threading.Thread(target=copy, args=(upstream, self.request), daemon=True)
        other.start()
        copy(self.request, upstream)
        other.join(10)
        upstream.close()


def _low_ports_free() -> str | None:
    for port in (80, 443):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                return f"cannot bind 127.0.0.1:{port} ({exc.strerror}): the droplet's HTTP(S) ports"
    return None


def test_a_droplet_gets_its_certificate_from_pebble_and_serves_https(tmp_path: Path, token_file: Path, capsys,
                                                                       monkeypatch) -> None:
    curl = need("curl")
    reason = _low_ports_free()
    if reason:
        pytest.skip(reason)
    relay_port, upstream_port, control = free_port(), free_port(), free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", relay_port, dns) as ca, \
            FakeDigitalOcean(TOKEN, tmp_path / "cloud", boot=True) as fake:
        # the droplet process inherits these: pebble's API is trusted, its keys stay in tmp_path
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.api_ca))
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "droplet-data"))
        relay = _Relay(relay_port, lambda: fake.ip_of(next(iter(fake.droplets))))
        threading.Thread(target=relay.serve_forever, args=(0.05,), daemon=True).start()
        state = tmp_path / "state"
        try:
            created = run_cli(capsys, "create", "do-le", "--provider", "digitalocean", "--mode", "http",
                              "--domain", DOMAIN, "--letsencrypt-email", "ops@example.test",
                              "--letsencrypt-issuer", ca.directory, "--upstream", f"http://127.0.0.1:{upstream_port}",
                              "--control-port", str(control), "--api-url", fake.url,
                              "--access-token-file", str(token_file), "--state-dir", str(state), "--json",
                              "--timeout", "30")
            assert created.code == 0, created.err
            summary = created.json()
            (argv,) = fake.booted.values()
            assert argv[:2] == [sys.executable, "-c"]  # the runtime from the wheel create sent (64 KiB less 4 spare)
            # (read the wheel itself: in an editable install the droplet could import missing modules from here)
            (wheel,) = (fake.workdir / f"droplet-{summary['id']}" / "opt" / "inlets").glob("*.whl")
            names = zipfile.ZipFile(wheel).namelist()
            lets_encrypt = {m for m in server_modules("http", letsencrypt=True)[0] if m.startswith(LETSENCRYPT_FOLDER + "/")}
            assert lets_encrypt and {f"{runtime.__name__.replace('.', '/')}/{m}.py" for m in lets_encrypt} <= set(names)
            assert summary["endpoints"] == [f"https://{DOMAIN}"]
            server_log = fake.workdir / f"droplet-{summary['id']}" / "server.log"
            wait_until(lambda: b"event=certificate_issued" in server_log.read_bytes(), 30,
                       f"the droplet's certificate: {server_log}")
            root = tmp_path / "root.pem"
            root.write_bytes(ca.root_pem())
            with http_upstream(upstream_port), run_client(summary["client_command"], tmp_path / "client.log"):
                def answered() -> bool:
                    result = subprocess.run(
                        [curl, "-sS", "--max-time", "5", "--cacert", str(root),
                         "--resolve", f"{DOMAIN}:443:{summary['ip']}", f"https://{DOMAIN}/over-https"],
                        capture_output=True, text=True, timeout=15)
                    return result.stdout == "hello from the upstream, path=/over-https"
                wait_until(answered, 20, "the app over HTTPS through the printed client", interval=0.3)
            droplet_data = tmp_path / "droplet-data"
            keys = sorted([*droplet_data.rglob("account.key"), *droplet_data.rglob("key.pem")])
            assert [k.name for k in keys] == ["account.key", "key.pem"] and keys[1].parent.parent.name == DOMAIN
            assert all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
        finally:
            relay.shutdown()
            relay.server_close()
            run_cli(capsys, "delete", "do-le", "--api-url", fake.url, "--access-token-file", str(token_file),
                    "--state-dir", str(state))
