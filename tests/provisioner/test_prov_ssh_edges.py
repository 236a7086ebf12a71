"""``--provider ssh`` edges, against a real OpenSSH sshd on loopback: known_hosts lines matched as ssh matches them
(patterns, several keys of a type), key files ssh refuses, files that are no regular files, the key file an exit
server's ssh.json names, and --host forms that meant something else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_support import INLETSCTL, Result, free_port, one_line_error, run_cli, run_inletsctl, user_env
from helpers.process import terminate
from helpers.prov_ssh import SSHD, Sshd, keygen, ssh_args, wait_for_sshd


def _line(hosts: str, pub: Path) -> str:
    return f"{hosts} {' '.join(pub.read_text().split()[:2])}\n"


def _openssh(sshd: Sshd, known_hosts: Path, strict: str) -> str:
    """What ssh(1) itself makes of ``known_hosts`` (on a copy: accept-new writes to it): ok, changed or refused."""
    copy = known_hosts.with_name("known_hosts.openssh")
    shutil.copyfile(known_hosts, copy)
    done = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={copy}", "-o",
         "GlobalKnownHostsFile=/dev/null", "-o", f"StrictHostKeyChecking={strict}", "-o", "IdentitiesOnly=yes",
         "-o", "ConnectTimeout=10", "-i", str(sshd.client_key), "-p", str(sshd.port), "root@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    return "ok" if done.returncode == 0 else "changed" if "HAS CHANGED" in done.stderr else "refused"


#: known_hosts lines ({port}; RIGHT is the sshd's key, WRONG another), accept-new, and what ssh does with them
KNOWN_HOSTS = [
    (["[127.0.0.?]:{port} WRONG"], True, "changed"),  # a pattern naming the host with another key: changed
    (["[127.0.0.?]:{port} RIGHT"], False, "ok"),
    (["[127.0.0.*]:*,example.com RIGHT"], False, "ok"),
    (["example.com,[127.0.0.1]:{port} RIGHT"], False, "ok"),
    (["[127.0.0.*]:{port},![127.0.0.1]:{port} RIGHT"], False, "refused"),  # a negation wins over any match
    (["![127.0.0.1]:{port},[127.0.0.*]:{port} WRONG"], True, "ok"),  # ... so that line says nothing: accept-new
    (["[127.0.0.1]:{port} WRONG", "[127.0.0.1]:{port} RIGHT"], False, "ok"),  # two keys of a type (rotation)
    (["[127.0.0.1]:{port} RIGHT", "[127.0.0.1]:{port} WRONG"], False, "ok"),
    (["[127.0.0.1]:{port} WRONG", "[127.0.0.?]:{port} WRONG"], False, "changed"),
    (["HASHED RIGHT"], False, "ok"),
    (["127.0.0.1 WRONG"], False, "refused"),  # port 22's entry is not this port's
]


@pytest.mark.parametrize("lines, accept_new, expected", KNOWN_HOSTS)
def test_known_hosts_lines_name_the_host_as_openssh_matches_them(
        lines: list[str], accept_new: bool, expected: str, prov_ssh_sshd: Sshd, tmp_path: Path) -> None:
    """paramiko matched no patterns and compared one key of a type: --accept-new-host-key added a key that differed
    from a `[127.0.0.?]:PORT` line (ssh says it changed), a pattern line with the right key was 'not in' known_hosts,
    and a host with two keys of a type (a rotation) was refused as changed."""
    import paramiko

    from inlets_py.provisioner.errors import ProvisionError
    from inlets_py.provisioner.ssh_connect import SshOptions, connect

    other = tmp_path / "other"
    keygen(other)
    pubs = {"RIGHT": prov_ssh_sshd.client_key.parent / "host_key.pub", "WRONG": other.with_suffix(".pub")}
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{prov_ssh_sshd.port}")
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(_line(hosts.format(port=prov_ssh_sshd.port).replace("HASHED", hashed), pubs[which])
                          for hosts, which in (line.rsplit(" ", 1) for line in lines)))
    if shutil.which("ssh"):  # the expectation is ssh's own
        assert _openssh(prov_ssh_sshd, kh, "accept-new" if accept_new else "yes") == expected
    before = kh.read_text()
    opts = SshOptions("root", "127.0.0.1", prov_ssh_sshd.port, str(prov_ssh_sshd.client_key), accept_new=accept_new,
                      known_hosts=str(kh))
    if expected == "ok":
        connect(opts).close()
        added = kh.read_text()[len(before):]
        assert added == (_line(f"[127.0.0.1]:{prov_ssh_sshd.port}", pubs["RIGHT"]) if "WRONG" in lines[0] and accept_new
                         else "")
        return
    with pytest.raises(ProvisionError) as info:
        connect(opts)
    said = str(info.value)
    if expected == "changed":
        assert said.startswith(f"host key of 127.0.0.1:{prov_ssh_sshd.port} changed: it is {prov_ssh_sshd.fingerprint}")
        assert f"({kh}:1)" in said and "refusing to connect" in said and "ssh-keygen -R" in said
    else:
        assert f"is not in {kh}: check it, then pass --host-key-fingerprint {prov_ssh_sshd.fingerprint}" in said
    assert kh.read_text() == before  # nothing added


def test_a_pattern_line_counts_beside_a_line_of_another_key_type(prov_ssh_sshd: Sshd, tmp_path: Path) -> None:
    """An exact ecdsa line for the host and a pattern line with its ed25519 key: paramiko saw the ecdsa line alone
    and called the ed25519 key the host showed 'changed'."""
    from inlets_py.provisioner.ssh_connect import SshOptions, connect

    ecdsa = tmp_path / "ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ecdsa)], check=True, timeout=30)
    kh = tmp_path / "known_hosts"
    kh.write_text(_line(f"[127.0.0.1]:{prov_ssh_sshd.port}", ecdsa.with_suffix(".pub"))
                  + _line(f"[127.0.0.?]:{prov_ssh_sshd.port}", prov_ssh_sshd.client_key.parent / "host_key.pub"))
    connect(SshOptions("root", "127.0.0.1", prov_ssh_sshd.port, str(prov_ssh_sshd.client_key), known_hosts=str(kh))).close()


def test_the_host_is_asked_for_a_key_type_known_hosts_has(prov_ssh_sshd: Sshd, tmp_path: Path) -> None:
    """A host with ed25519 and ecdsa keys, known by its ecdsa key alone (by a pattern): it is asked for ecdsa first,
    as ssh asks, rather than showing ed25519, which would be refused as not in known_hosts."""
    from inlets_py.provisioner.ssh_connect import SshOptions, connect

    for kind in ("ed25519", "ecdsa"):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(tmp_path / kind)], check=True, timeout=30)
    port, log = free_port(), tmp_path / "sshd.log"
    config = tmp_path / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path}/ed25519\nHostKey {tmp_path}/ecdsa\n"
                      f"PidFile {tmp_path}/sshd.pid\nAuthorizedKeysFile {prov_ssh_sshd.client_key.parent}/authorized_keys\n"
                      "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                      "UsePAM no\nStrictModes no\n")
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_for_sshd(proc, port, log)
        kh = tmp_path / "known_hosts"
        kh.write_text(_line(f"[127.0.0.*]:{port}", tmp_path / "ecdsa.pub"))
        connect(SshOptions("root", "127.0.0.1", port, str(prov_ssh_sshd.client_key), known_hosts=str(kh))).close()
    finally:
        terminate(proc)


def test_a_private_key_other_users_can_read_is_refused_as_ssh_does(prov_ssh_sshd: Sshd, prov_ssh_name: str,
                                                                    tmp_path: Path, capsys) -> None:
    """A key file of mode 0644 was used without a word; ssh refuses it ('UNPROTECTED PRIVATE KEY FILE')."""
    key = tmp_path / "key"
    shutil.copyfile(prov_ssh_sshd.client_key, key)
    key.chmod(0o640)
    args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--ports", "9")
    args[args.index("--ssh-key") + 1] = str(key)
    result = run_cli(capsys, "create", prov_ssh_name, *args)
    one_line_error(result, f"--ssh-key {key} can be read by other users (mode 0640), which ssh refuses for a private "
                           f"key: chmod 600 {key}")
    assert result.code == 2 and not (tmp_path / "state" / prov_ssh_name).exists()
    folder = _state(prov_ssh_sshd, tmp_path, key)  # after create: the key file ssh.json names
    one_line_error(run_cli(capsys, "status", "edge", "--state-dir", str(folder.parent)),
                   f'the key file {key} that create used ("key_file" in {folder / "ssh.json"}) can be read by other '
                   f"users (mode 0640)", f"chmod 600 {key}")


@pytest.mark.parametrize("kind", ["fifo", "device", "large"])
def test_a_key_or_known_hosts_that_is_no_regular_file_is_refused_unread(kind: str, prov_ssh_sshd: Sshd,
                                                                        tmp_path: Path) -> None:
    """A FIFO as --ssh-key or --known-hosts hung create for ever, /dev/zero ended in a MemoryError, and a key
    given as <(cat key), a pipe, was read twice (nothing the second time)."""
    odd = {"fifo": tmp_path / "fifo", "device": Path("/dev/zero"), "large": tmp_path / "large"}[kind]
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "large":
        odd.write_bytes(b"#" * (2 << 20))
        odd.chmod(0o600)
    what = {"fifo": "is a FIFO (named pipe), not a regular file", "device": "is a character device, not a regular file",
            "large": "is larger than 1 MiB, which no private key is"}[kind]
    args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--ports", "9")
    args[args.index("--ssh-key") + 1] = str(odd)
    one_line_error(run_inletsctl("create", "edge", *args, timeout=30), f"--ssh-key {odd} {what}")
    if kind != "large":  # known_hosts may be large (64 MiB)
        args = ssh_args(prov_ssh_sshd, tmp_path, "--accept-new-host-key", "--ports", "9")
        args[args.index("--known-hosts") + 1] = str(odd)
        one_line_error(run_inletsctl("create", "edge", *args, timeout=30),
                       f"cannot read known_hosts {odd}: it {what}: give the known_hosts file itself")
    if kind == "fifo":  # a shell's <(cat key): a pipe, read once, that nothing can read again at status or delete
        args = ssh_args(prov_ssh_sshd, tmp_path, "--host-key-fingerprint", prov_ssh_sshd.fingerprint, "--ports", "9")
        del args[args.index("--ssh-key"):args.index("--ssh-key") + 2]
        piped = subprocess.run(["bash", "-c", 'exec "$@" --ssh-key <(cat "$KEY")', "bash", str(INLETSCTL), "create",
                                "edge", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                               env=user_env({"KEY": str(prov_ssh_sshd.client_key)}))
        one_line_error(Result(piped.returncode, piped.stdout, piped.stderr), "--ssh-key /dev/fd/",
                       "is a FIFO (named pipe), not a regular file: give the private key file itself")
    assert not (tmp_path / "state" / "edge").exists()


def test_known_hosts_dev_null_holds_no_host(prov_ssh_sshd: Sshd, tmp_path: Path) -> None:
    """As ssh's UserKnownHostsFile=/dev/null: nothing known, so the pinned fingerprint alone is trusted."""
    from inlets_py.provisioner.ssh_connect import SshOptions, connect

    connect(SshOptions("root", "127.0.0.1", prov_ssh_sshd.port, str(prov_ssh_sshd.client_key),
                       fingerprint=prov_ssh_sshd.fingerprint, known_hosts=os.devnull)).close()


def _state(sshd: Sshd, tmp_path: Path, key: Path) -> Path:
    """The state folder of an exit server 'edge' that create made on the test sshd with ``key``."""
    folder = tmp_path / "state" / "edge"
    folder.mkdir(parents=True)
    (folder / "server.json").write_text(json.dumps({"name": "edge", "provider": "ssh", "ip": "127.0.0.1",
                                                    "id": f"root@127.0.0.1:{sshd.port}/edge", "control_port": 8123}))
    (folder / "ssh.json").write_text(json.dumps({"user": "root", "host": "127.0.0.1", "port": sshd.port,
                                                 "key_file": str(key)}))
    (folder / "known_hosts").write_text(_line(f"[127.0.0.1]:{sshd.port}", sshd.client_key.parent / "host_key.pub"))
    return folder


@pytest.fixture
def agent(prov_ssh_sshd: Sshd) -> Iterator[str]:
    """A running ssh-agent of this test's own; its socket."""
    if not shutil.which("ssh-agent") or not shutil.which("ssh-add"):
        pytest.skip("ssh-agent and ssh-add (Debian's openssh-client) are not installed")
    folder = Path(tempfile.mkdtemp(prefix="inl-agent."))  # short: a socket path takes 108 bytes at most
    sock = folder / "agent"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_saved_key_file_encrypted_or_gone_since_create_says_what_to_do_and_the_agent_is_tried(
        prov_ssh_sshd: Sshd, tmp_path: Path, agent: str, monkeypatch, capsys) -> None:
    """status and delete said '--ssh-key K is encrypted: ... leave out --ssh-key', a flag they do not have and the
    user never typed; the key file came from ssh.json, and ssh-agent was not tried while ssh.json named one."""
    key = tmp_path / "key"
    shutil.copyfile(prov_ssh_sshd.client_key, key)
    key.chmod(0o600)
    folder = _state(prov_ssh_sshd, tmp_path, key)
    record, state = folder / "ssh.json", ["--state-dir", str(folder.parent)]
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "a passphrase", "-f", str(key)], check=True, timeout=30)
    monkeypatch.setenv("SSH_AUTH_SOCK", "")
    for verb in ("status", "delete"):
        line = one_line_error(run_cli(capsys, verb, "edge", *state),
                              f'ssh: the key file {key} that create used ("key_file" in {record}) is encrypted and no '
                              f"ssh-agent runs", f"load it with `ssh-add {key}`")
        assert "--ssh-key" not in line
    listed = run_cli(capsys, "list", "--provider", "ssh", *state)  # it said "unreachable", and not why
    assert listed.code == 0 and "unreachable" in listed.out, listed
    assert f'edge: unreachable: ssh: the key file {key} that create used ("key_file" in {record}) is encrypted' \
        in listed.err, listed.err
    assert run_cli(capsys, "list", "--provider", "ssh", *state, "--json").json()["servers"][0]["detail"].startswith(
        f"ssh: the key file {key} that create used")
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)
    one_line_error(run_cli(capsys, "status", "edge", *state), "is encrypted and ssh-agent does not hold it either")
    subprocess.run(["ssh-add", "-q", str(prov_ssh_sshd.client_key)], env={**os.environ, "SSH_AUTH_SOCK": agent},
                   check=True, timeout=30, capture_output=True)
    for gone in (False, True):  # the agent's key logs in: the host then says the exit server is not installed there
        if gone:
            key.unlink()
        one_line_error(run_cli(capsys, "status", "edge", *state), "exit server edge is gone from ssh")
    monkeypatch.setenv("SSH_AUTH_SOCK", "")
    one_line_error(run_cli(capsys, "delete", "edge", *state),
                   f'ssh: the key file {key} that create used ("key_file" in {record}) does not exist',
                   f'put the key back there, or set "key_file" in {record} to where it is now')


@pytest.mark.parametrize("typed, says", [
    ("@127.0.0.1", "the user before @ is empty: give USER@127.0.0.1, e.g. root@127.0.0.1 (or leave out the @"),
    ("root@[::1", "a bracket is not closed: give root@[IPV6] or root@IPV6"),
    ("root@::1]", "a bracket is not closed"),
    ("root@127.0.0.1:0", "it takes USER@HOST, and 0 is no port (ports are 1-65535): give --host root@127.0.0.1 and "
                         "--port the port the host's sshd listens on"),
    ("root@[::1]:65536", "it takes USER@HOST, and 65536 is no port (ports are 1-65535): give --host root@::1 and --port"),
])
def test_a_host_that_meant_something_else_is_refused(typed: str, says: str, tmp_path: Path, capsys) -> None:
    """`@H` logged in as the local user, an unclosed bracket was dropped, and `H:0` advised `--port 0`."""
    result = run_cli(capsys, "create", "--provider", "ssh", "--host", typed, "--port", "1", "--ports", "9",
                     "--state-dir", str(tmp_path / "state"))
    one_line_error(result, f"invalid --host {typed!r}: {says}")
    assert result.code == 2
