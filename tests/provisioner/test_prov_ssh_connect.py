"""``--provider ssh`` flags and connections: bad flags, host forms and key files are refused before connecting,
and a port or host with no sshd is said in words; one command runs on a real sshd to check its end is reported."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from helpers.prov_support import free_port, one_line_error, run_cli, run_inletsctl
from helpers.prov_ssh import Sshd


def test_a_command_that_ends_before_reading_its_input_still_reports_its_status(prov_ssh_sshd: Sshd, tmp_path: Path) -> None:
    """A command that exits without reading stdin (as `sudo -n sh -s` does where sudo is missing) closed the
    channel while the script was still being sent: the error was paramiko's 'Socket is closed', seen in CI,
    instead of the command's own words and exit status. 8 MiB is past any SSH window, so the race is certain."""
    from inlets_py.provisioner.errors import ProvisionError
    from inlets_py.provisioner.ssh_connect import SshOptions, connect, run

    opts = SshOptions("root", "127.0.0.1", prov_ssh_sshd.port, str(prov_ssh_sshd.client_key), accept_new=True,
                      known_hosts=str(tmp_path / "known_hosts"))
    client = connect(opts)
    try:
        assert run(client, "echo gone >&2; exit 7", stdin=b"x" * (8 << 20)) == (7, "", "gone\n")
    finally:
        client.close()
    client = connect(opts)  # the connection itself cut under the write (its sshd process killed): still an error
    try:
        with pytest.raises(ProvisionError, match="^ssh: the connection to the host closed while a command ran there"):
            run(client, "kill -9 $PPID", stdin=b"x" * (8 << 20))
    finally:
        client.close()


def test_ssh_flag_errors_are_one_line(tmp_path: Path, capsys) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    one_line_error(run_cli(capsys, "create", "--provider", "ssh", *state), "--host USER@HOST")
    one_line_error(run_cli(capsys, "create", "--provider", "ssh", "--host", "root@h", "--host-key-fingerprint", "md5:xx",
                           *state), "invalid --host-key-fingerprint")
    one_line_error(run_cli(capsys, "create", "--provider", "ssh", "--host", "root@h", "--supervisor", "runit", *state),
                   "unknown --supervisor")
    one_line_error(run_cli(capsys, "create", "--provider", "local", "--host", "root@h", *state), "--host does not apply to --provider local: it is for ssh")
    # --port is ssh's SSH port; on another provider its user most likely meant the data ports
    one_line_error(run_cli(capsys, "create", "--provider", "local", "--port", "8080", *state),
                   "--port does not apply to --provider local: it is for ssh (the SSH port); did you mean --ports (the data ports)?")
    # named as typed: its other spelling, --ssh-port, cannot have meant the data ports
    for spelling in (["--ssh-port", "2222"], ["--ssh-port=2222"], ["--port", "1", "--ssh-port", "2222"]):
        error = one_line_error(run_cli(capsys, "create", "--provider", "local", *spelling, *state),
                               "--ssh-port does not apply to --provider local: it is for ssh")
        assert "--ports" not in error
    one_line_error(run_cli(capsys, "create", "--provider", "local", "--ssh-port", "", *state), "'--port' / '--ssh-port'")


def test_a_host_written_with_its_port_or_as_an_url_says_how_to_give_it(tmp_path: Path, capsys) -> None:
    """`--host root@H:2222` said only that 'H:2222' is no host name, `root@[::1]:2222` named '::1]:2222', and
    `ssh://root@H` connected as a user called 'ssh://root': each now names the flags that say it."""
    state = ["--state-dir", str(tmp_path / "state")]
    for typed, meant in (("root@127.0.0.1:2222", "--host root@127.0.0.1 --port 2222"),
                         ("root@[::1]:2222", "--host root@::1 --port 2222"), ("127.0.0.1:2222", "--host 127.0.0.1 --port 2222"),
                         ("ssh://root@127.0.0.1", "--host root@127.0.0.1"),
                         ("ssh://admin@example.com:2200/", "--host admin@example.com --port 2200")):
        result = run_cli(capsys, "create", "--provider", "ssh", "--host", typed, "--ports", "9", *state)
        one_line_error(result, f"invalid --host {typed!r}: it takes USER@HOST, and the SSH port is --port's: give {meant}")
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def _private_key(path: Path, password: bytes | None = None, fmt: str = "OpenSSH") -> Path:
    """An ed25519 (OpenSSH format) or RSA (PEM) private key file, encrypted with ``password`` if given."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = ed25519.Ed25519PrivateKey.generate() if fmt == "OpenSSH" else rsa.generate_private_key(65537, 2048)
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, getattr(serialization.PrivateFormat, fmt), encryption))
    path.chmod(0o600)
    return path


def _public_keys(tmp_path: Path) -> list[Path]:
    from cryptography.hazmat.primitives import serialization

    public = serialization.load_ssh_private_key(_private_key(tmp_path / "k").read_bytes(), None).public_key()
    one_line = tmp_path / "id_ed25519.pub"
    one_line.write_bytes(public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" me@host\n")
    pem = tmp_path / "public.pem"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return [one_line, pem]


def test_every_kind_of_unusable_key_file_says_what_it_is(tmp_path: Path, capsys) -> None:
    """Checked before anything connects: no sshd needed."""
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk").write_text("this is not a private key\n")
    expected = {
        _private_key(tmp_path / "encrypted", b"passphrase"): "is encrypted: load it into ssh-agent and leave out --ssh-key",
        _private_key(tmp_path / "encrypted.pem", b"passphrase", "TraditionalOpenSSL"): "is encrypted: load it into ssh-agent",
        tmp_path: "is a directory: give the private key file in it",
        tmp_path / "empty": "is empty: give the private key file",
        tmp_path / "missing": "does not exist: give the private key file",
        tmp_path / "junk": "is not a private key inletsctl can read (OpenSSH or PEM format)",
        **{public: "is a public key: give the private key (the same file without .pub)" for public in _public_keys(tmp_path)},
    }
    for key, says in expected.items():
        result = run_cli(capsys, "create", "--provider", "ssh", "--host", "root@127.0.0.1", "--port", "1", "--ssh-key",
                         str(key), "--state-dir", str(tmp_path / "state"))
        line = one_line_error(result, f"--ssh-key {key} {says}")
        assert result.code == 2, (key, result.code)  # a usage error, found before anything is made
        assert "Errno" not in line and "cryptography.io" not in line and "Error" not in line.split("error:", 1)[1], line
    assert not (tmp_path / "state").exists()


def test_a_port_that_does_not_speak_ssh_is_one_line_and_nothing_else(tmp_path: Path) -> None:
    """paramiko's transport thread logs the banner failure with its traceback; only inletsctl's line may show."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        result = run_inletsctl("create", "--provider", "ssh", "--host", "root@127.0.0.1", "--port",
                               str(server.server_address[1]), "--ssh-key", str(_private_key(tmp_path / "key")),
                               "--accept-new-host-key", "--known-hosts", str(tmp_path / "known_hosts"),
                               "--state-dir", str(tmp_path / "state"))
    finally:
        server.shutdown()
        server.server_close()
    line = one_line_error(result, f"ssh: cannot connect to root@127.0.0.1:{server.server_address[1]}: what answers "
                          "there sent no SSH greeting (it is not an SSH server, or one refusing this client): give --port "
                          "the port the host's sshd listens on")
    assert [ln for ln in result.err.splitlines() if not ln.startswith("inletsctl: ")] == [], result.err
    assert result.err.strip().splitlines()[-1] == line and not (tmp_path / "state" / "known_hosts").exists()


def test_a_port_that_takes_the_connection_and_says_nothing_is_said_in_words(tmp_path: Path) -> None:
    """A listener that never answers (a tarpit, a stuck daemon) read 'No existing session', paramiko's words for the
    host key it never got, after the 10 s wait; and a web server's port 'Error reading SSH protocol banner'."""
    with socket.socket() as silent:  # the kernel completes the handshake; nothing ever reads or writes
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        result = run_inletsctl("create", "--provider", "ssh", "--host", "root@127.0.0.1", "--port", str(port),
                               "--ssh-key", str(_private_key(tmp_path / "key")), "--accept-new-host-key",
                               "--known-hosts", str(tmp_path / "known_hosts"), "--state-dir", str(tmp_path / "state"))
    line = one_line_error(result, f"ssh: cannot connect to root@127.0.0.1:{port}: the connection was taken but no SSH "
                          "greeting came within 10 s: is the host too busy, or is that port (--port) not sshd's?")
    assert "session" not in line and not list((tmp_path / "state").iterdir())


def test_a_port_that_greets_then_stalls_is_said_for_what_it_is(tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An sshd that sent its greeting and then never answered the key exchange (a stuck daemon, a host out of
    memory) was reported as 'no SSH greeting came within 10 s': the greeting had come."""
    import threading

    from inlets_py.provisioner import ssh_connect

    monkeypatch.setattr(ssh_connect, "CONNECT_TIMEOUT", 2.0)
    held: list[socket.socket] = []
    with socket.socket() as stalls:
        stalls.bind(("127.0.0.1", 0))
        stalls.listen(4)
        port = stalls.getsockname()[1]

        def greet() -> None:
            conn, _ = stalls.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            held.append(conn)  # open, and never another byte

        threading.Thread(target=greet, daemon=True).start()
        try:
            result = run_cli(capsys, "create", "--provider", "ssh", "--host", "root@127.0.0.1", "--port", str(port),
                             "--ssh-key", str(_private_key(tmp_path / "key")), "--accept-new-host-key",
                             "--known-hosts", str(tmp_path / "known_hosts"), "--state-dir", str(tmp_path / "state"))
        finally:
            for conn in held:
                conn.close()
    line = one_line_error(result, f"ssh: cannot connect to root@127.0.0.1:{port}: it sent its SSH greeting "
                          "(SSH-2.0-OpenSSH_9.2), then no answer to the key exchange within 2 s")
    assert "no SSH greeting" not in line and "session" not in line, line


@pytest.mark.parametrize("host, written", [("127.0.0.1", "127.0.0.1:{port}"), ("::1", "[::1]:{port}")])
def test_a_port_nothing_listens_on_is_said_in_words_with_what_to_check(host: str, written: str, tmp_path: Path) -> None:
    """paramiko words a refused connect as '[Errno None] Unable to connect to port 1 on 127.0.0.1'; an IPv6 host
    was written ``root@::1:PORT``, which reads as a host ::1:PORT on port 22."""
    port = free_port(host)  # a port just freed: nothing listens there
    result = run_inletsctl("create", "--provider", "ssh", "--host", f"root@{host}", "--port", str(port),
                           "--ssh-key", str(_private_key(tmp_path / "key")), "--accept-new-host-key",
                           "--known-hosts", str(tmp_path / "known_hosts"), "--state-dir", str(tmp_path / "state"))
    where = written.format(port=port)
    line = one_line_error(result, f"ssh: cannot connect to root@{where}: Connection refused: is sshd running")
    assert "Errno" not in line


@pytest.mark.skipif(not shutil.which("unshare"), reason="unshare (util-linux) makes the network namespace")
def test_a_host_name_that_does_not_resolve_is_said_in_words(tmp_path: Path) -> None:
    """getaddrinfo's error codes are not errno values: os.strerror(-2) read 'Unknown error -2'.

    inletsctl runs in a network namespace of its own: the look-up of the name went to this machine's DNS server
    (off loopback), and it cannot leave an empty namespace (glibc's 'Temporary failure', a gaierror too)."""
    result = run_inletsctl("create", "--provider", "ssh", "--host", "root@no-such-host.invalid",
                           "--ssh-key", str(_private_key(tmp_path / "key")), "--accept-new-host-key",
                           "--known-hosts", str(tmp_path / "known_hosts"), "--state-dir", str(tmp_path / "state"),
                           wrap=("unshare", "--net", "--map-current-user"))  # the same uid, root or not
    if result.code != 0 and result.err.startswith("unshare:"):
        pytest.skip(f"cannot make a network namespace here: {result.err.strip()}")
    line = one_line_error(result, "ssh: cannot connect to root@no-such-host.invalid:22: the host name does not resolve")
    assert "Unknown error" not in line and not list((tmp_path / "state").iterdir())


def test_delete_when_the_host_is_gone_names_no_flag_it_lacks_and_says_how_to_drop_the_state(tmp_path: Path, capsys) -> None:
    """delete said 'is sshd running there, on that port (--port)?': delete has no --port (create recorded it),
    and nothing said how to be rid of an exit server whose host is gone for good."""
    import json

    port = free_port()  # a port just freed: the host's sshd is gone
    state = tmp_path / "state"
    folder = state / "gone-host"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "server.json").write_text(json.dumps({"name": "gone-host", "provider": "ssh", "mode": "tcp", "ip": "127.0.0.1",
                                                    "id": f"root@127.0.0.1:{port}/gone-host", "control_port": 8123}))
    (folder / "ssh.json").write_text(json.dumps({"user": "root", "host": "127.0.0.1", "port": port}))
    (folder / "known_hosts").write_text("")
    result = run_cli(capsys, "delete", "gone-host", "--state-dir", str(state))
    line = one_line_error(result, f"ssh: cannot connect to root@127.0.0.1:{port}: Connection refused",
                          f"remove this exit server's local state: rm -r {folder}")
    assert "--port" not in line and folder.exists()
