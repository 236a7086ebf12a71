"""The Let's Encrypt store on a real file system: a certificate, its key and its validity note are one set.

Saved as three renames, a kill between them (an OOM kill, a power cut, a restart while renewing) left a new
key beside the old chain: the next start found a key that fit no certificate and asked the CA again. Here
the saving process is killed with SIGKILL before each of its file-system steps in turn
(``helpers/crash_save.py``), and every state it leaves must load as the old set or the new one, whole,
and be tidied by the next save. Stores written by servers from before (``DOMAIN.crt`` beside the account
key) are still served.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from helpers.tunnel import TlsFiles, make_tls
from inlets_py.runtime.acme.letsencrypt import configure
from inlets_py.runtime.acme.store import CertStore, StoredCert, validity

DOMAIN = "a.example.test"
URL = "https://127.0.0.1:14000/dir"  # names the store's folder; nothing connects to it
CRASH_SAVE = Path(__file__).resolve().parents[1] / "helpers" / "crash_save.py"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> list[TlsFiles]:
    """Three certificates for DOMAIN, each with its own key."""
    base = tmp_path_factory.mktemp("certs")
    return [make_tls(base / name, [DOMAIN]) for name in ("old", "new", "third")]


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs when there is one: a kill leaves the same files there, and its fsync costs nothing (the
    crash test saves some fifty times; on a busy disk each fsync took ~10 ms)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="inlets-acme-store-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _expected(files: TlsFiles) -> tuple:
    chain = files.cert.read_bytes()
    return chain, files.key.read_bytes(), validity(chain)


def _loaded(stored: StoredCert) -> tuple:
    return stored.chain.read_bytes(), stored.key.read_bytes(), stored.validity


def _save(store: CertStore, files: TlsFiles) -> StoredCert:
    return store.save(DOMAIN, files.cert.read_bytes(), files.key.read_bytes())


def _write_legacy(store: CertStore, files: TlsFiles) -> None:
    """What a server from before kept: ``DOMAIN.crt``, ``DOMAIN.key`` and ``DOMAIN.json`` beside the account key."""
    when = validity(files.cert.read_bytes())
    note = {"domain": DOMAIN, "not_before": when.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "not_after": when.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}
    for suffix, data in ((".key", files.key.read_bytes()), (".crt", files.cert.read_bytes()),
                         (".json", json.dumps(note).encode())):
        path = store.dir / f"{DOMAIN}{suffix}"
        path.write_bytes(data)
        path.chmod(0o600)


def _assert_tidy(store: CertStore) -> None:
    """One domain's folder holds ``current`` and at most two sets; nothing of the old layout, nothing half-made;
    folders 0700, files 0600."""
    assert sorted(os.listdir(store.dir)) == ["certs"], os.listdir(store.dir)
    home = store.domain_dir(DOMAIN)
    entries = sorted(os.listdir(home))
    assert "current" in entries and len(entries) <= 3 and all(e == "current" or e.isdigit() for e in entries), entries
    for folder, dirs, files in os.walk(store.dir):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("layout", ["sets", "before"])
def test_a_save_killed_at_any_step_leaves_the_old_set_or_the_new_one(fast_dir: Path, certs, layout: str) -> None:
    old, new, third = certs
    store = CertStore(fast_dir / "le", URL)
    store.prepare()
    if layout == "sets":
        _save(store, old)
    else:  # a server from before wrote it: the first save in sets replaces it
        _write_legacy(store, old)
    done = subprocess.run([sys.executable, str(CRASH_SAVE), str(fast_dir / "le"), URL, DOMAIN, str(new.cert),
                           str(new.key), str(fast_dir / "crashed")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout)
    assert steps > 5, steps  # a save is several steps: each was crashed at
    stores = [CertStore(fast_dir / "crashed" / str(step), URL) for step in range(1, steps + 1)]
    seen = []
    for step, crashed in enumerate(stores, 1):
        stored = crashed.load(DOMAIN)
        assert stored is not None, f"killed before step {step}: no certificate loads (the server asks the CA again)"
        state = _loaded(stored)
        sets = {"old": _expected(old), "new": _expected(new)}
        whole = next((name for name, expected in sets.items() if state == expected), None)
        parts = [next((name for name, expected in sets.items() if expected[i] == part), "?") for i, part in
                 enumerate(state)]
        assert whole, f"killed before step {step} of {steps}: chain, key, note are {'/'.join(parts)}, not one set"
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(stored.chain, stored.key)  # served as it is
        seen.append(whole)
    # the old set until one step (the switch), the new one from there on
    assert seen[-1] == "new" and seen[0] == "old" and seen == sorted(seen, key=["old", "new"].index), seen
    for crashed in stores:  # the next save, after the crash, completes and tidies what the crash left
        _save(crashed, third)
        assert _loaded(crashed.load(DOMAIN)) == _expected(third)
        _assert_tidy(crashed)


def test_saves_keep_at_most_two_sets_private(tmp_path: Path, certs) -> None:
    store = CertStore(tmp_path / "le", URL)
    store.prepare()
    for files in (*certs, certs[0]):
        stored = _save(store, files)
    assert sorted(os.listdir(store.domain_dir(DOMAIN))) == ["3", "4", "current"]
    assert os.readlink(store.domain_dir(DOMAIN) / "current") == "4"
    assert stored.chain == store.domain_dir(DOMAIN) / "4" / "chain.pem"  # the set's own path: chain and key match
    assert _loaded(store.load(DOMAIN)) == _expected(certs[0])
    _assert_tidy(store)


def test_a_certificate_stored_by_a_server_from_before_is_served(tmp_path: Path, certs) -> None:
    """An upgraded server finds ``DOMAIN.crt`` where it left it, serves it and does not ask the CA again."""
    manager = configure([DOMAIN], tmp_path / "le", issuer=URL)
    _write_legacy(manager.store, certs[0])
    manager.load()
    assert DOMAIN in manager.contexts and manager.due(datetime.datetime.now(datetime.timezone.utc)) == []
    assert manager.certs[DOMAIN].chain == manager.store.dir / f"{DOMAIN}.crt"


def test_a_current_that_is_a_folder_is_moved_aside_by_the_save(tmp_path: Path, certs) -> None:
    """``current`` made a folder (by hand, a restore): the load re-issues, and the save put the link in place. It
    failed with "Is a directory" after the CA had issued, so every retry ordered, and lost, another certificate."""
    store = CertStore(tmp_path / "le", URL)
    store.prepare()
    (store.domain_dir(DOMAIN) / "current").mkdir(parents=True)
    assert store.load(DOMAIN) is None
    _save(store, certs[0])
    assert os.readlink(store.domain_dir(DOMAIN) / "current") == "1"
    assert _loaded(store.load(DOMAIN)) == _expected(certs[0])
    assert (store.domain_dir(DOMAIN) / "current.damaged-1").is_dir()


def test_a_damaged_validity_note_is_said_before_the_certificate_is_asked_for_again(tmp_path: Path, certs, caplog) -> None:
    """A damaged chain was logged (``certificate_unusable``); a damaged note re-issued silently, and the operator
    saw an order at start, spending the CA's limit, with no word of why."""
    manager = configure([DOMAIN], tmp_path / "le", issuer=URL)
    stored = _save(manager.store, certs[0])
    stored.chain.with_name("validity.json").write_text("{")
    with caplog.at_level("WARNING", logger="inlets.letsencrypt"):
        manager.load()
    assert DOMAIN not in manager.contexts
    assert any("event=certificate_unusable" in r.getMessage() and "validity.json" in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_certificate_that_does_not_name_its_domain_is_not_stored(tmp_path: Path, certs) -> None:
    """A CA answer for another name (a misconfigured --letsencrypt-issuer, a proxy's) would be served for DOMAIN
    until it expired, every browser refusing it. It is refused, and the set stored before stays current."""
    store = CertStore(tmp_path / "le", URL)
    store.prepare()
    _save(store, certs[0])
    other = make_tls(tmp_path / "other", ["b.example.test"])
    with pytest.raises(ValueError, match="does not name it"):
        store.save(DOMAIN, other.cert.read_bytes(), other.key.read_bytes())
    assert _loaded(store.load(DOMAIN)) == _expected(certs[0])
