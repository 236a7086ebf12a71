"""``--auto-tls`` as users point it: bad paths and names in one worded line, the user's own
directories left as they are, keys others could read made private (and said so)."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from helpers.process import INLETS, ROOT, inlets, recorded_environments, recording_environments, spawn, wait_for_text
from helpers.tunnel import free_port

from inlets_py.runtime.cli.server_config import CERTS_MODULE
from inlets_py.runtime.core.certs import server_files_stem


def server(token_file: Path, *extra: str) -> list[str]:
    return ["tcp", "server", "--token-file", str(token_file), "--auto-tls", "--control-addr", "127.0.0.1",
            "--data-addr", "127.0.0.1", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--auto-tls-path", ""], "--auto-tls-path is empty"),
    (["--auto-tls-path", "{tmp}/afile"], "is a file, not a directory"),
    (["--auto-tls-path", "{tmp}/afile/sub"], "is a file, not a directory"),
    (["--auto-tls-path", "{tmp}/damaged"], "are not a PEM certificate and key (damaged?)"),
    (["--auto-tls-path", "{tmp}/new", "--auto-tls-san", ""], "--auto-tls-san is empty"),
    (["--auto-tls-path", "{tmp}/new", "--auto-tls-san", "bad name with spaces"], "is not a valid host name"),
])
def test_bad_auto_tls_paths_and_names_are_one_worded_line(tmp_path: Path, token_file: Path, extra, message) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\njunk\n")
    (tmp_path / "damaged" / "ca.key").write_text("junk\n")
    # run in tmp_path: an empty --auto-tls-path once meant the current directory (files written, chmod 0700)
    result = inlets(*server(token_file, *(arg.format(tmp=tmp_path) for arg in extra)), timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], result.stderr
    assert not any(word in result.stderr for word in ("Traceback", "Error:", "[Errno", "MalformedFraming"))


@pytest.mark.parametrize("flags", [["--tls-cert", "c", "--tls-key", "k", "--auto-tls-san", "x"],
                                   ["--plaintext", "--auto-tls-path", "/tmp/x"]])
def test_auto_tls_flags_without_auto_tls_are_refused(token_file: Path, flags) -> None:
    result = inlets("tcp", "server", "--token-file", str(token_file), *flags)
    assert result.returncode == 2 and "go with --auto-tls" in result.stderr, result


def test_an_existing_directory_keeps_its_mode_keys_become_private_and_an_idn_is_its_a_label(
        tmp_path: Path, token_file: Path) -> None:
    directory = tmp_path / "mine"
    directory.mkdir()
    directory.chmod(0o755)
    args = server(token_file, "--control-port", str(free_port()), "--auto-tls-path", str(directory),
                  "--auto-tls-san", "bücher.example")
    key = directory / f"{server_files_stem(['xn--bcher-kva.example'])}.key"
    for run, log in enumerate(("first.log", "second.log")):
        if run:  # the keys the first run made are private from the start
            assert [stat.S_IMODE((directory / name).stat().st_mode) for name in ("ca.key", key.name)] == [0o600] * 2
            key.chmod(0o644)
        process = spawn(*args, log=tmp_path / log)
        try:
            text = wait_for_text(tmp_path / log, "event=started", timeout=60)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    assert "names=xn--bcher-kva.example" in text
    assert f'event=auto_tls_key_mode_fixed file="{key} (was 0644)"' in text
    assert "event=auto_tls_path_open" in text
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_kept_certificate_that_does_not_name_the_new_san_is_issued_again(tmp_path: Path, token_file: Path) -> None:
    """The directory keeps the certificate between runs; started again with another --auto-tls-san, a certificate
    naming only the old one would make every client that checks the new name refuse the server."""
    import ssl

    from inlets_py.runtime.core.tls import client_context

    directory = tmp_path / "tls"
    for san in ("one.example", "two.example"):
        control = free_port()
        log = tmp_path / f"{san}.log"
        process = spawn(*server(token_file, "--control-port", str(control), "--auto-tls-path", str(directory),
                                "--auto-tls-san", san), log=log)
        try:
            wait_for_text(log, "event=started", timeout=60)
            context = client_context(directory / "ca.crt")
            with socket.create_connection(("127.0.0.1", control), timeout=10) as raw:
                try:
                    with context.wrap_socket(raw, server_hostname=san) as tls_socket:
                        named = tls_socket.getpeercert()["subjectAltName"]
                except ssl.SSLCertVerificationError as exc:
                    pytest.fail(f"started with --auto-tls-san {san}, the server's certificate does not name it: {exc}")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
        assert ("DNS", san) in named, named


def _served(port: int, ca: Path, name: str) -> bytes:
    """The certificate the server on ``port`` shows a client that pins ``ca`` and checks ``name`` (DER)."""
    import ssl

    from inlets_py.runtime.core.tls import client_context

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with client_context(ca).wrap_socket(raw, server_hostname=name) as tls_socket:
                return tls_socket.getpeercert(binary_form=True) or b""
        except ssl.SSLCertVerificationError as exc:
            pytest.fail(f"the server started with --auto-tls-san {name} shows a certificate its clients refuse: {exc}")


def test_servers_sharing_the_folder_each_keep_a_certificate_naming_their_sans(tmp_path: Path) -> None:
    """Two servers with other --auto-tls-san and the default folder: the second's start issued server.crt over
    the first's, so a server loading its files a moment later (both starting at boot) served the other's names,
    or its certificate with the other's key. Each set of names now has its files, under the one CA."""
    import subprocess
    import sys

    from inlets_py.runtime.cli.server_config import CERTS_MODULE
    from inlets_py.runtime.core.tls import server_context

    directory = tmp_path / "auto-tls"
    made = {}
    for name in ("one.example", "two.example"):  # as the servers do it: a child process each, one after the other
        result = subprocess.run([sys.executable, "-m", CERTS_MODULE, str(directory), name],
                                capture_output=True, text=True, timeout=60, check=True)
        made[name] = json.loads(result.stdout)
    for name, files in made.items():
        server_context(Path(files["cert"]), Path(files["key"]))  # the key is the certificate's
        cert = x509.load_pem_x509_certificate(Path(files["cert"]).read_bytes())
        named = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert named.get_values_for_type(x509.DNSName) == [name], (name, files)
        assert files["ca_cert"] == str(directory / "ca.crt")


def test_two_servers_on_one_folder_start_together_and_restart_without_new_certificates(
        tmp_path: Path, token_file: Path) -> None:
    """Started at once, each serves its own names under the one CA (one made a CA of its own, or served the
    other's certificate: 3 of 16 before); restarted, each serves the certificate it had (it issued a new one)."""
    directory = tmp_path / "auto-tls"
    ports = {"one.example": free_port(), "two.example": free_port()}
    seen: dict[str, list[bytes]] = {name: [] for name in ports}
    for run in range(2):
        processes = []
        try:
            for name, port in ports.items():
                log = tmp_path / f"{name}-{run}.log"
                processes.append((spawn(*server(token_file, "--control-port", str(port), "--auto-tls-path",
                                                str(directory), "--auto-tls-san", name), log=log), log))
            for _, log in processes:
                wait_for_text(log, "event=started", timeout=60)
            for name, port in ports.items():
                seen[name].append(_served(port, directory / "ca.crt", name))
        finally:
            for process, _ in processes:
                process.send_signal(signal.SIGTERM)
                process.wait(15)
    for name, (first, second) in seen.items():
        assert first == second, f"{name}: restarted, the server issued itself a new certificate"


@pytest.mark.parametrize("value", ["rel/dir", "  ", ""])
def test_a_blank_or_relative_xdg_data_home_is_ignored_as_the_xdg_spec_says(value: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a probe: XDG_DATA_HOME=rel/dir put --auto-tls's CA and keys under the folder the server started in,
    and a blank one in a folder named by its spaces; the spec says a relative path there is to be ignored."""
    from inlets_py.runtime.cli.config import default_data_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", value)
    assert default_data_dir() == tmp_path / ".local" / "share" / "inlets"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data" / "inlets"



def test_the_certificate_child_gets_none_of_the_servers_secrets(tmp_path: Path, token: str) -> None:
    """--auto-tls makes its files in a child process, which inherited the server's whole environment: $INLETS_TOKEN
    and any cloud token its shell held, though it only makes certificates. A sitecustomize on $PYTHONPATH (which the
    child keeps: Python finds this installation's modules with it) writes down each Python process's environment."""
    site = tmp_path / "site"
    env = {**{k: v for k, v in recording_environments(site).items() if k != "XDG_DATA_HOME"}, "INLETS_TOKEN": token,
           "DIGITALOCEAN_ACCESS_TOKEN": "do-secret", "HOME": str(tmp_path)}
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([*INLETS, "tcp", "server", "--auto-tls", "--control-addr", "127.0.0.1",
                                    "--control-port", str(free_port()), "--data-addr", "127.0.0.1"],
                                   stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_for_text(log, "event=started", timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    children = recorded_environments(site, CERTS_MODULE)
    assert len(children) == 1, children
    assert "INLETS_TOKEN" not in children[0] and "DIGITALOCEAN_ACCESS_TOKEN" not in children[0], sorted(children[0])
    assert children[0]["HOME"] == str(tmp_path)  # kept: where the default folder and the user's site-packages are
    assert (tmp_path / ".local/share/inlets/auto-tls/ca.crt").exists()
