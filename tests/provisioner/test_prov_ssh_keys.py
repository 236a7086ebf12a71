"""``--provider ssh`` and keys, against a real OpenSSH sshd on loopback: host keys are pinned and checked as
OpenSSH does (known_hosts, markers, changes), and login keys and users the host refuses say what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_support import free_port, one_line_error, run_cli, run_inletsctl
from helpers.prov_ssh import DATA_ADDR, Sshd, keygen, ssh_args


def test_unknown_host_key_is_refused(prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    result = run_cli(capsys, "create", prov_ssh_name, *ssh_args(prov_ssh_sshd, tmp_path, "--ports", "9"))
    one_line_error(result, "not in", str(tmp_path / "known_hosts"), prov_ssh_sshd.fingerprint, "--accept-new-host-key")
    assert not (tmp_path / "state" / prov_ssh_name).exists() and not Path(f"/opt/inlets/{prov_ssh_name}").exists()


def test_wrong_fingerprint_is_refused(prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    wrong = "SHA256:" + "A" * 43
    result = run_cli(capsys, "create", prov_ssh_name, *ssh_args(
        prov_ssh_sshd, tmp_path, "--host-key-fingerprint", wrong, "--accept-new-host-key", "--ports", "9"))
    one_line_error(result, prov_ssh_sshd.fingerprint, f"not the pinned {wrong}", "refusing")
    assert not (tmp_path / "known_hosts").exists()


def test_changed_host_key_is_refused_even_with_accept_new(prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    keygen(other)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{prov_ssh_sshd.port} {' '.join((other.with_suffix('.pub')).read_text().split()[:2])}\n")
    result = run_cli(capsys, "create", prov_ssh_name, *ssh_args(prov_ssh_sshd, tmp_path, "--accept-new-host-key", "--ports", "9"))
    one_line_error(result, "changed", prov_ssh_sshd.fingerprint, "refusing",
                   f"then forget the old one: ssh-keygen -R '[127.0.0.1]:{prov_ssh_sshd.port}' -f {kh}")


def test_a_host_key_changed_after_create_says_how_to_pin_the_new_one_and_that_works(
        prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    """status and delete refused a changed key (rightly) without a word on what to do: the user was stuck with
    an exit server neither command could reach nor remove."""
    created = run_cli(capsys, "create", prov_ssh_name, *ssh_args(prov_ssh_sshd, tmp_path, "--accept-new-host-key",
                      "--ports", str(free_port()), "--control-port", str(free_port()), "--data-addr", DATA_ADDR))
    assert created.code == 0, created.err
    pinned = tmp_path / "state" / prov_ssh_name / "known_hosts"
    other = tmp_path / "other"
    keygen(other)  # the key create saw is replaced, as when the host is reinstalled
    pinned.write_text(f"[127.0.0.1]:{prov_ssh_sshd.port} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    state = ["--state-dir", str(tmp_path / "state")]
    line = one_line_error(run_cli(capsys, "status", prov_ssh_name, *state), "changed", prov_ssh_sshd.fingerprint,
                          f"ssh-keyscan -p {prov_ssh_sshd.port} 127.0.0.1 > {pinned}", f"rm -r {pinned.parent}")
    keyscan = line.split("pin it instead of the old one: ", 1)[1].split(";", 1)[0]
    subprocess.run(["/bin/sh", "-c", keyscan], check=True, timeout=30, capture_output=True)  # as printed
    assert run_cli(capsys, "status", prov_ssh_name, *state).code == 0
    deleted = run_cli(capsys, "delete", prov_ssh_name, *state)
    assert deleted.code == 0 and not Path(f"/opt/inlets/{prov_ssh_name}").exists(), deleted.err


@pytest.mark.parametrize("pinned", [None, "", "garbage\n", "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhK74sW+rQYXkARbC4wVLR5sDrwgxWVpCEM1VtYVuSB\n"])
def test_a_pinned_host_key_file_removed_or_edited_says_how_to_pin_again(
        pinned: str | None, prov_ssh_sshd: Sshd, tmp_path: Path, capsys) -> None:
    """The state's known_hosts is the only trust after create: without a key for the host in it, status said
    'not the pinned SHA256:(the key seen at create)' (a placeholder, no way out), or only 'No such file'."""
    folder = tmp_path / "state" / "edge"
    folder.mkdir(parents=True)
    (folder / "server.json").write_text(json.dumps({"name": "edge", "provider": "ssh", "ip": "127.0.0.1",
                                                    "id": f"root@127.0.0.1:{prov_ssh_sshd.port}/edge", "control_port": 8123}))
    (folder / "ssh.json").write_text(json.dumps({"user": "root", "host": "127.0.0.1", "port": prov_ssh_sshd.port,
                                                 "key_file": str(prov_ssh_sshd.client_key)}))
    if pinned is not None:
        (folder / "known_hosts").write_text(pinned)
    for command in ("status", "delete"):
        one_line_error(run_cli(capsys, command, "edge", "--state-dir", str(tmp_path / "state")),
                       f"{folder / 'known_hosts'}, which pins the host key", prov_ssh_sshd.fingerprint, "refusing to connect",
                       f"then pin it again: ssh-keyscan -p {prov_ssh_sshd.port} 127.0.0.1 > {folder / 'known_hosts'}")
    assert (folder / "ssh.json").is_file()


def test_accept_new_host_key_records_it_like_openssh(prov_ssh_sshd: Sshd, tmp_path: Path) -> None:
    """accept-new adds the key to known_hosts; the next connection trusts known_hosts alone."""
    from inlets_py.provisioner.ssh_connect import SshOptions, connect, run

    kh = tmp_path / "known_hosts"
    opts = SshOptions("root", "127.0.0.1", prov_ssh_sshd.port, str(prov_ssh_sshd.client_key), accept_new=True,
                      known_hosts=str(kh))
    client = connect(opts)
    try:
        assert run(client, "echo hi")[:2] == (0, "hi\n")
    finally:
        client.close()
    assert kh.read_text().startswith(f"[127.0.0.1]:{prov_ssh_sshd.port} ssh-ed25519 ")
    client = connect(SshOptions("root", "127.0.0.1", prov_ssh_sshd.port, str(prov_ssh_sshd.client_key), known_hosts=str(kh)))
    client.close()


def _known_line(hosts: str, pub: Path) -> str:
    return f"{hosts} {' '.join(pub.read_text().split()[:2])}\n"


def test_known_hosts_with_openssh_markers_and_a_line_it_cannot_read_still_trusts_its_entries(
        prov_ssh_sshd: Sshd, tmp_path: Path) -> None:
    """A @cert-authority or @revoked line, or one line whose key is not base64, made paramiko's loader raise and
    inletsctl end in a traceback; OpenSSH skips what it cannot read and honours the markers."""
    from inlets_py.provisioner.ssh_connect import SshOptions, connect, run

    other = tmp_path / "other"
    keygen(other)
    kh = tmp_path / "known_hosts"
    kh.write_text(_known_line("@cert-authority *.example.com", other.with_suffix(".pub"))
                  + _known_line("@revoked *", other.with_suffix(".pub")) + "typo.example.com ssh-rsa AAAAB3NzaC1yc2E\n"
                  + _known_line(f"[127.0.0.1]:{prov_ssh_sshd.port}", prov_ssh_sshd.client_key.parent / "host_key.pub"))
    client = connect(SshOptions("root", "127.0.0.1", prov_ssh_sshd.port, str(prov_ssh_sshd.client_key), known_hosts=str(kh)))
    try:
        assert run(client, "echo hi")[:2] == (0, "hi\n")
    finally:
        client.close()


def test_a_host_key_known_hosts_marks_revoked_is_refused_even_when_listed(
        prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    """OpenSSH never accepts a key marked @revoked, whatever else known_hosts says; neither does accept-new, nor
    (a review helper's finding: known_hosts was not read then) a --host-key-fingerprint that matches the key."""
    host_pub, kh = prov_ssh_sshd.client_key.parent / "host_key.pub", tmp_path / "known_hosts"
    trust = (["--accept-new-host-key"], ["--host-key-fingerprint", prov_ssh_sshd.fingerprint])
    for listed, flags in [(listed, flags) for listed in ("", _known_line(f"[127.0.0.1]:{prov_ssh_sshd.port}", host_pub))
                          for flags in trust]:
        kh.write_text(_known_line("@revoked *", host_pub) + listed)
        result = run_cli(capsys, "create", prov_ssh_name, *ssh_args(prov_ssh_sshd, tmp_path, *flags, "--ports", "9"))
        one_line_error(result, f"host key of 127.0.0.1:{prov_ssh_sshd.port}", prov_ssh_sshd.fingerprint,
                       f"@revoked in {kh}", "refusing to connect")
        assert kh.read_text() == _known_line("@revoked *", host_pub) + listed  # accept-new added nothing
        assert not (tmp_path / "state" / prov_ssh_name).exists()


def test_a_host_key_revoked_after_create_is_refused_by_status_and_delete(prov_ssh_sshd: Sshd, tmp_path: Path,
                                                                         capsys) -> None:
    """The key create pinned, marked @revoked in known_hosts since (the host's key leaked): still accepted."""
    host_pub, kh = prov_ssh_sshd.client_key.parent / "host_key.pub", tmp_path / "known_hosts"
    kh.write_text(_known_line("@revoked *", host_pub))
    folder = tmp_path / "state" / "edge"
    folder.mkdir(parents=True)
    (folder / "server.json").write_text(json.dumps({"name": "edge", "provider": "ssh", "ip": "127.0.0.1",
                                                    "id": f"root@127.0.0.1:{prov_ssh_sshd.port}/edge", "control_port": 8123}))
    (folder / "ssh.json").write_text(json.dumps({"user": "root", "host": "127.0.0.1", "port": prov_ssh_sshd.port,
                                                 "key_file": str(prov_ssh_sshd.client_key), "known_hosts": str(kh)}))
    (folder / "known_hosts").write_text(_known_line(f"[127.0.0.1]:{prov_ssh_sshd.port}", host_pub))
    for command in ("status", "delete"):
        one_line_error(run_cli(capsys, command, "edge", "--state-dir", str(tmp_path / "state")),
                       prov_ssh_sshd.fingerprint, f"@revoked in {kh}", "refusing to connect")
    assert (folder / "ssh.json").is_file()


def test_bad_key_file_is_one_line(prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    junk = tmp_path / "not-a-key"
    junk.write_text("this is not a private key\n")
    args = ssh_args(prov_ssh_sshd, tmp_path, "--accept-new-host-key", "--ports", "9")
    args[args.index("--ssh-key") + 1] = str(junk)
    one_line_error(run_cli(capsys, "create", prov_ssh_name, *args), f"--ssh-key {junk} is not a private key")
    args[args.index("--ssh-key") + 1] = str(tmp_path / "missing")
    one_line_error(run_cli(capsys, "create", prov_ssh_name, *args), "does not exist")
    assert not (tmp_path / "state" / prov_ssh_name).exists()


def test_key_the_host_does_not_accept_is_one_line(prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    stranger = tmp_path / "stranger"
    keygen(stranger)
    args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--ports", "9")
    args[args.index("--ssh-key") + 1] = str(stranger)
    one_line_error(run_cli(capsys, "create", prov_ssh_name, *args), f"refused the key {stranger}; add its public key "
                   f"to root's ~/.ssh/authorized_keys there (ssh-copy-id -i {stranger} -p {prov_ssh_sshd.port} "
                   "root@127.0.0.1), or give --ssh-key the key it accepts")


def test_a_key_the_host_stopped_accepting_says_how_to_let_it_in_or_drop_the_state(
        prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path, capsys) -> None:
    """status and delete of an exit server whose host no longer took create's key said only 'refused the key K':
    nothing to do next, and delete could never finish."""
    key, root_keys, state = tmp_path / "key", prov_ssh_sshd.user_keys / "root", tmp_path / "state"
    keygen(key)
    root_keys.write_text((tmp_path / "key.pub").read_text())  # sshd reads root's keys here too
    try:
        args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--data-addr",
                         DATA_ADDR, "--ports", str(free_port()), "--control-port", str(free_port()))
        args[args.index("--ssh-key") + 1] = str(key)
        created = run_inletsctl("create", prov_ssh_name, *args, "--timeout", "60", timeout=120)
        assert created.code == 0, created.err
        root_keys.unlink()  # the host's admin took the key away
        for verb in ("status", "delete"):
            one_line_error(run_cli(capsys, verb, prov_ssh_name, "--state-dir", str(state)),
                           f"refused the key {key}; it took this key at create: put its public key back in root's "
                           f"~/.ssh/authorized_keys there (ssh-copy-id -i {key} -p {prov_ssh_sshd.port} root@127.0.0.1); "
                           f"if that host is gone for good, remove this exit server's local state: rm -r {state / prov_ssh_name}")
        root_keys.write_text((tmp_path / "key.pub").read_text())  # done as said: delete now finishes
        assert run_cli(capsys, "delete", prov_ssh_name, "--state-dir", str(state)).code == 0
        assert not Path(f"/opt/inlets/{prov_ssh_name}").exists() and not (state / prov_ssh_name).exists()
    finally:
        root_keys.unlink(missing_ok=True)


def test_without_ssh_key_an_encrypted_or_missing_home_key_is_named_with_what_to_do(
        prov_ssh_sshd: Sshd, prov_ssh_name: str, tmp_path: Path) -> None:
    """Without --ssh-key, an encrypted ~/.ssh/id_ed25519 that no agent held was reported as 'refused ssh-agent and
    ~/.ssh keys', and no key at all as paramiko's 'No authentication methods available'."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--ports", "9")
    del args[args.index("--ssh-key"):args.index("--ssh-key") + 2]
    env = {"HOME": str(home), "SSH_AUTH_SOCK": ""}  # no agent
    one_line_error(run_inletsctl("create", prov_ssh_name, *args, env=env),
                   "no key to log in to root@127.0.0.1", "give one with --ssh-key")
    key = home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(key)], check=True, timeout=30)
    one_line_error(run_inletsctl("create", prov_ssh_name, *args, env=env),
                   f"ssh: {key} is encrypted and ssh-agent does not hold it: load it with `ssh-add {key}`")
    assert not (tmp_path / "state" / prov_ssh_name).exists()


@pytest.fixture
def prov_ssh_plain_user(prov_ssh_sshd: Sshd) -> Iterator[str]:
    """A user of this machine that is not root, for one test (removed after it). Its password is '*', which
    OpenSSH does not take for a locked account, so the sshd's shared authorized key logs it in."""
    yield from _user(prov_ssh_sshd, "/bin/sh")


@pytest.fixture
def prov_ssh_nologin_user(prov_ssh_sshd: Sshd) -> Iterator[str]:
    """As ``prov_ssh_plain_user``, with no login shell (a service account's /usr/sbin/nologin)."""
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    if not Path(nologin).exists():
        pytest.skip("nologin (Debian's login package) is not installed")
    yield from _user(prov_ssh_sshd, nologin)


def _user(prov_ssh_sshd: Sshd, shell: str) -> Iterator[str]:
    useradd, userdel = shutil.which("useradd"), shutil.which("userdel")
    if not useradd or not userdel:
        pytest.skip("useradd/userdel (Debian's passwd package) are not installed")
    name = f"inl{os.getpid() % 100000}"
    subprocess.run([useradd, "-M", "-d", "/nonexistent", "-s", shell, "-p", "*", name], check=True, timeout=30)
    keys = prov_ssh_sshd.user_keys / name
    keys.write_text(prov_ssh_sshd.client_key.with_suffix(".pub").read_text())
    keys.chmod(0o644)
    try:
        yield name
    finally:
        keys.unlink(missing_ok=True)
        # -f: its ssh session (inletsctl keeps the connection) may still run as the user, which plain userdel refuses
        gone = subprocess.run([userdel, "-f", name], capture_output=True, text=True, timeout=30)
        assert gone.returncode == 0, f"the test user {name} was left on this machine: {gone.stderr}"


def test_a_user_who_cannot_become_root_is_told_what_to_do(
    prov_ssh_sshd: Sshd, prov_ssh_name: str, prov_ssh_plain_user: str, tmp_path: Path, capsys
) -> None:
    """Logged in as a user that is not root: the install runs through `sudo -n`. Without sudo on the host
    the error was the shell's 'sh: 1: sudo: not found'; with sudo that asks a password, it says so."""
    args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--ports", "9")
    args[args.index("--host") + 1] = f"{prov_ssh_plain_user}@127.0.0.1"
    result = run_cli(capsys, "create", prov_ssh_name, *args)
    if shutil.which("sudo"):
        one_line_error(result, f"ssh: {prov_ssh_plain_user} on 127.0.0.1 needs passwordless sudo (or log in as root)")
    else:
        one_line_error(result, f"ssh: {prov_ssh_plain_user} on 127.0.0.1 is not root and the host has no sudo: "
                               "log in as root (--host root@127.0.0.1) or install sudo there")
    assert not Path(f"/opt/inlets/{prov_ssh_name}").exists() and not (tmp_path / "state" / prov_ssh_name).exists()
    assert not list(Path("/tmp").glob(f"inletsctl.{prov_ssh_name}.*"))  # the uploaded token and key are not left there


def test_a_user_without_a_login_shell_is_told_so(
    prov_ssh_sshd: Sshd, prov_ssh_name: str, prov_ssh_nologin_user: str, tmp_path: Path, capsys
) -> None:
    """A service account (shell nologin) said 'cannot make a temporary folder on 127.0.0.1: Could not chdir to
    home directory /nonexistent: No such file or directory', a line of sshd's, not why (a review helper's finding)."""
    args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--ports", "9")
    args[args.index("--host") + 1] = f"{prov_ssh_nologin_user}@127.0.0.1"
    result = run_cli(capsys, "create", prov_ssh_name, *args)
    one_line_error(result, f"ssh: {prov_ssh_nologin_user} on 127.0.0.1 cannot run commands",
                   "This account is currently not available", "log in as root")
    assert not (tmp_path / "state" / prov_ssh_name).exists()
