"""--auto-tls writes its keys where no other user can have a hand on them: the file beside each key (written, then
renamed over it) is one the writer made itself, never one found there, and a folder others may write is refused.

Each key went through the fixed ``<name>.tmp``, opened without O_EXCL: a file another user had left at that name kept
its owner, and the CA key written into it and renamed over ca.key was theirs to read (a link there, the key went
wherever it pointed)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.process import inlets
from helpers.tunnel import free_port

from inlets_py.runtime.core.certs import server_files_stem

NAMES = ["127.0.0.1", "localhost"]
BAIT = b"left here by another user\n"
NOBODY = 65534


def prepare(directory: Path, *names: str) -> subprocess.CompletedProcess:
    """``ensure_auto_tls`` as the server runs it: ``python -m ...certs`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "inlets_py.runtime.core.certs", str(directory), *names],
                          capture_output=True, text=True, timeout=60)


def keys(directory: Path, names: list[str]) -> list[Path]:
    return [directory / "ca.key", directory / f"{server_files_stem(names)}.key"]


def leave(path: Path, how: str, outside: Path) -> None:
    """What another user leaves at ``path``: their own file others may read, or a link to one."""
    if how == "link":
        path.symlink_to(outside)
        return
    path.write_bytes(BAIT)
    path.chmod(0o644)
    if os.geteuid() == 0:  # a real other user's; else this user's own file, whose bytes must stay the bait's
        os.chown(path, NOBODY, NOBODY)


@pytest.mark.parametrize("how", ["file", "link"])
def test_a_file_left_beside_a_key_is_not_where_the_key_goes(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "tls"
    directory.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.write_bytes(BAIT)
    outside.chmod(0o644)
    left = [key.with_name(key.name + ".tmp") for key in keys(directory, NAMES)]
    for path in left:
        leave(path, how, outside)
    before = {path: os.lstat(path) for path in left}
    result = prepare(directory, *NAMES)
    assert result.returncode == 0, result.stderr
    for key in keys(directory, NAMES):
        info = os.lstat(key)
        assert stat.S_ISREG(info.st_mode), f"{key} is a link to {os.readlink(key)}"
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o600), key
        assert all(info.st_ino != found.st_ino for found in before.values()), f"{key} is the file left beside it"
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----"), key
    for path, found in before.items():  # left as it was: neither written nor moved
        assert os.lstat(path).st_ino == found.st_ino and path.read_bytes() == BAIT, path
    assert outside.read_bytes() == BAIT
    ours = [entry for entry in os.listdir(directory) if entry.endswith(".tmp") and entry not in {p.name for p in left}]
    assert not ours, ours  # nothing of the writer's own left behind


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A folder outside pytest's (0700, root's when root runs the suite) that another user may enter."""
    base = Path(tempfile.mkdtemp(prefix="inlets-secret-files-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770], ids=["0777", "1777", "0770"])
def test_a_folder_others_may_write_is_refused(reachable_dir: Path, token_file: Path, mode: int) -> None:
    """Others who may write the folder could rename a CA key of their own over ca.key (sticky bit or not, leave one
    there before the first start): "the keys stay 0600" was no protection. Refused in one line, nothing written."""
    directory = reachable_dir / "shared"
    directory.mkdir()
    directory.chmod(mode)
    if os.geteuid() == 0:
        os.chown(directory, -1, NOBODY)  # 0770: the other user writes as one of the folder's group
    planted = directory / "ca.key.tmp"
    if os.geteuid() == 0 and shutil.which("setpriv"):  # the other user makes it: the reviewer's reproduction
        plant = f"open({str(planted)!r}, 'wb').write({BAIT!r})"
        made = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--",
                               sys.executable, "-c", plant], capture_output=True, text=True, timeout=30)
        assert made.returncode == 0 and planted.stat().st_uid == NOBODY, made.stderr
    else:
        leave(planted, "file", planted)
    result = inlets("tcp", "server", "--token-file", str(token_file), "--auto-tls", "--auto-tls-path", str(directory),
                    "--auto-tls-san", "127.0.0.1", "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
                    "--data-addr", "127.0.0.1", timeout=60)
    assert result.returncode == 2, result
    last = result.stderr.strip().splitlines()[-1]
    assert f"{directory} is writable by other users (mode {mode:04o})" in last and f"chmod go-w {directory}" in last, last
    assert not any(word in result.stderr for word in ("Traceback", "Error:", "[Errno")), result.stderr
    assert sorted(os.listdir(directory)) == ["ca.key.tmp"] and planted.read_bytes() == BAIT
    directory.chmod(0o755)  # made private to others' writing, the same folder is taken
    assert prepare(directory, "127.0.0.1").returncode == 0
    assert os.stat(directory / "ca.key").st_uid == os.geteuid() and planted.read_bytes() == BAIT


def test_an_hcloud_whose_requests_cannot_be_checked_for_redirects_is_refused(tmp_path: Path) -> None:
    """The redirect refusal (the Hetzner token never follows an answer's redirect) went onto hcloud's ClientBase
    session only if there was one: hcloud 2.0 to 2.5, which pyproject.toml allows, have none, and it was skipped
    without a word. Such an hcloud (2.5's layout: the session on the Client itself) is refused in one line."""
    package = tmp_path / "site" / "hcloud"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import requests\n\n\nclass Client:\n    _retry_max_retries = 5\n\n"
        "    def __init__(self, token, api_endpoint='', application_name=None, timeout=None, **kwargs):\n"
        "        self._requests_session = requests.Session()\n")
    info = tmp_path / "site" / "hcloud-2.5.4.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hcloud\nVersion: 2.5.4\n")
    code = ("from inlets_py.provisioner.errors import ProvisionError\n"
            "from inlets_py.provisioner.providers.hetzner import HetznerProvider\n"
            "try:\n    HetznerProvider('H' * 64, 'http://127.0.0.1:9/v1')\n"
            "except ProvisionError as exc:\n    print(exc)\nelse:\n    print('taken')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("hetzner: the installed hcloud 2.5.4 is not a version inletsctl works with (its requests "
                             "cannot be checked for redirects); install one that is: pip install 'hcloud>=2.6'\n"), \
        result.stdout


def test_what_a_write_cut_short_left_beside_a_key_is_swept_at_the_next_start(tmp_path: Path) -> None:
    """The random name beside a key is never written again: a copy of a key left by a crash stayed for good."""
    directory = tmp_path / "tls"
    directory.mkdir(mode=0o700)
    left = directory / ".ca.key.0123456789abcdef.tmp"
    left.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    left.chmod(0o600)
    mine = directory / ".notes.tmp"  # not a name the writer makes: left alone
    mine.write_bytes(b"mine")
    result = prepare(directory, *NAMES)
    assert result.returncode == 0, result.stderr
    assert not left.exists() and mine.read_bytes() == b"mine"
