"""The ``--provider ssh`` tests' real sshd, started once per test process (not per module: the tests of
three modules share it), and a unique exit-server name per test that is cleaned up after it; DigitalOcean's
token file and fake API, and a recorded cloud API, which several modules use (a module may have
its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from helpers.process import terminate
from helpers.prov_cloud_recorded import RecordedAPI
from helpers.prov_fake_do import DO_TOKEN, FakeDigitalOcean
from helpers.prov_support import free_port
from helpers.prov_ssh import SSHD, Sshd, keygen, wait_for_sshd


@pytest.fixture(scope="session")
def prov_ssh_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd on 127.0.0.1:<free port> with its own config, host key and authorized key.

    Session scope, as the module scope it had when one module held all its tests: nothing a test does outlives
    it (exit servers, users and keys have per-test names and are removed), so the test_prov_ssh_* modules share
    one sshd per process instead of starting one each."""
    for tool in (SSHD, shutil.which("ssh-keygen")):
        if not tool or not os.access(tool, os.X_OK):
            pytest.skip(f"OpenSSH ({SSHD} and ssh-keygen, Debian's openssh-server) is not installed")
    if os.geteuid() != 0:
        pytest.skip("the ssh provider tests log in as root to this machine's sshd and need to run as root")
    tmp = tmp_path_factory.mktemp("prov_ssh")
    keygen(tmp / "host_key")
    keygen(tmp / "client_key")
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    user_keys = Path(tempfile.mkdtemp(prefix="inlets-test-keys."))  # outside pytest's 0700 folders: sshd reads
    user_keys.chmod(0o755)  # a user's keys as that user
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp}/host_key\nPidFile {tmp}/sshd.pid\n"
        f"AuthorizedKeysFile {tmp}/authorized_keys {user_keys}/%u\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # sshd's privilege-separation folder
    log = tmp / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_for_sshd(proc, port, log)
        printed = subprocess.run(["ssh-keygen", "-lf", str(tmp / "host_key.pub")], capture_output=True, text=True,
                                 check=True, timeout=30).stdout
        yield Sshd(port, tmp / "client_key", printed.split()[1], log, user_keys)
    finally:
        terminate(proc)
        shutil.rmtree(user_keys, ignore_errors=True)
        for parent in ("/opt/inlets", "/etc/inlets"):  # the tests' exit servers lived here; leave no empty folders
            try:
                os.rmdir(parent)
            except OSError:
                pass


@pytest.fixture
def prov_ssh_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique exit-server name; whatever a failed test left on this machine is removed after it."""
    name = f"t-ssh-{os.getpid()}-{request.node.name[-12:].strip('_').replace('_', '-')}".lower()
    yield name
    pid_file = Path(f"/opt/inlets/{name}/supervisor.pid")
    try:
        pid = int(pid_file.read_text())
        os.killpg(pid, 9)
    except (OSError, ValueError):
        pass
    shutil.rmtree(f"/opt/inlets/{name}", ignore_errors=True)
    shutil.rmtree(f"/etc/inlets/{name}", ignore_errors=True)
    Path(f"/opt/inlets/.{name}.installing").unlink(missing_ok=True)
    for stage in Path("/tmp").glob(f"inletsctl.{name}.*"):  # a failed test's uploads: a token and a key
        shutil.rmtree(stage, ignore_errors=True)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A DigitalOcean access token file (``DO_TOKEN``), 0600 as inletsctl wants it."""
    path = tmp_path / "do-token"
    path.write_text(DO_TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDigitalOcean]:
    """The fake DigitalOcean API, whose droplets boot."""
    with FakeDigitalOcean(DO_TOKEN, tmp_path / "cloud", boot=True) as api:
        yield api


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    """A recorded cloud API on loopback, answering what a test queues."""
    server = RecordedAPI()
    yield server
    server.close()
