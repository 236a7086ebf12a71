"""`inlets http server --letsencrypt-path` on a disk that will not take a write: real processes, real mounts.

A full disk while noting the wait after a failure (``retry.json``) left an empty ``retry.json.tmp`` and said
nothing, so a restart asked the CA at once with no word of why. A read-only folder (a read-only mount, as a
hardened unit or a container may give) holding valid certificates made the server refuse to start, where
Caddy and certbot serve what they hold. Root ignores mode bits, so the folder is a tmpfs of its own, filled
or remounted read-only (else made immutable with chattr); the issuer is a port nothing listens on, so no
ACME server is needed.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from helpers.letsencrypt import fill_disk, served_certificate
from helpers.process import inlets, one_line_error, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import free_port, make_tls
from inlets_py.runtime.acme.store import CertStore

DOMAIN = "site.example.test"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of its own when it can be mounted (root only), else a plain folder."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = not subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                 capture_output=True).returncode
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextmanager
def _read_only(disk: Path, store: CertStore) -> Iterator[None]:
    """``disk`` remounted read-only, else the store's folder made immutable: what prepare() chmods cannot change."""
    if os.path.ismount(disk) and not subprocess.run(["mount", "-o", "remount,ro", str(disk)],
                                                    capture_output=True).returncode:
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], capture_output=True)
        return
    done = subprocess.run(["chattr", "+i", str(store.dir)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot make a folder read-only here (no read-only remount, and chattr +i: {done.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(store.dir)], capture_output=True)


def _server_args(token_file: Path, path: Path, issuer: str, https_port: int) -> list[str]:
    return ["http", "server", "--token-file", str(token_file), "--plaintext", "--control-addr", "127.0.0.1",
            "--control-port", str(free_port()), "--data-addr", "127.0.0.1", "--port", str(free_port()),
            "--https-port", str(https_port), "--letsencrypt-domain", DOMAIN, "--letsencrypt-issuer", issuer,
            "--letsencrypt-path", str(path)]


def _unsaved_wait(tmp_path: Path, token_file: Path, path: Path, issuer: str, until: str) -> str:
    """The line a server with its store at ``path`` logs for a wait it could not store, once ``until`` is logged; it
    then stops cleanly."""
    server = spawn(*_server_args(token_file, path, issuer, free_port()), log=tmp_path / "server.log")
    try:
        log = wait_for_text(tmp_path / "server.log", f"event={until}", timeout=60)
    finally:
        codes = stop_all(server)
    assert codes == [0], log
    assert "Traceback" not in log, log
    return _line(log, "certificate_retry_unsaved")


def _line(log: str, event: str) -> str:
    lines = [line for line in log.splitlines() if f"event={event} " in line]
    assert len(lines) == 1, log
    return lines[0]


def test_a_wait_a_full_disk_cannot_store_is_said_and_leaves_no_temporary_file(tmp_path: Path, token_file: Path,
                                                                              disk: Path) -> None:
    if not os.path.ismount(disk):
        pytest.skip("cannot mount a tmpfs here (not root?): no disk to fill")
    issuer = f"https://127.0.0.1:{free_port()}/dir"  # never reached: the room check fails first
    CertStore(disk / "le", issuer).prepare()
    fill_disk(disk)
    line = _unsaved_wait(tmp_path, token_file, disk / "le", issuer, "certificate_failed")
    assert f"domain={DOMAIN}" in line and 'error="No space left on device"' in line, line
    assert "a restart will not keep it" in line and "retry.json" in line, line
    left = [str(path.relative_to(disk)) for path in disk.rglob("retry.json*")]
    assert left == [], left  # the empty retry.json.tmp was left behind


def test_a_wait_that_cannot_replace_its_note_is_said_and_leaves_no_temporary_file(tmp_path: Path,
                                                                                 token_file: Path) -> None:
    """Any write failure, with no mount needed: ``retry.json`` a folder, so the rename over it fails."""
    issuer = f"https://127.0.0.1:{free_port()}/dir"
    store = CertStore(tmp_path / "le", issuer)
    (store.domain_dir(DOMAIN) / "retry.json").mkdir(parents=True)
    line = _unsaved_wait(tmp_path, token_file, tmp_path / "le", issuer, "certificate_retry_unsaved")
    assert 'error="Is a directory"' in line and "a restart will not keep it" in line, line
    assert not (store.domain_dir(DOMAIN) / "retry.json.tmp").exists()  # it was left, whole, beside the folder


def test_a_read_only_store_with_a_certificate_serves_it_and_says_renewals_fail(tmp_path: Path, token_file: Path,
                                                                              disk: Path) -> None:
    """It refused to start ("cannot keep certificates in ...: Read-only file system"): the site went down at a
    restart although its certificate had months to run."""
    issuer = f"https://127.0.0.1:{free_port()}/dir"
    site = make_tls(tmp_path / "site", [DOMAIN])
    store = CertStore(disk / "le", issuer)
    stored = store.save(DOMAIN, site.cert.read_bytes(), site.key.read_bytes())
    https_port = free_port()
    with _read_only(disk, store):
        server = spawn(*_server_args(token_file, disk / "le", issuer, https_port), log=tmp_path / "server.log")
        try:
            wait_for_text(tmp_path / "server.log", "event=started", timeout=30)
            wait_port(https_port)
            served = served_certificate(https_port, DOMAIN, ssl.create_default_context(cafile=str(site.ca)))
            log = (tmp_path / "server.log").read_text()
        finally:
            codes = stop_all(server)
    assert codes == [0], log
    assert served["der"] == ssl.PEM_cert_to_DER_cert(stored.chain.read_text())
    line = _line(log, "certificate_store_unwritable")
    assert str(store.dir) in line and ("Read-only file system" in line or "Operation not permitted" in line), line
    assert "none is obtained or renewed until this folder can be written" in line and "make it writable" in line, line
    assert f"event=certificate_loaded domain={DOMAIN}" in log and "event=certificate_requesting" not in log, log


@pytest.mark.parametrize("held", ["nothing", "an ended certificate"])
def test_a_read_only_store_with_nothing_to_serve_is_a_one_line_error(tmp_path: Path, token_file: Path,
                                                                    disk: Path, held: str) -> None:
    """An ended certificate is nothing to serve either: the server started, serving it, with no way to renew it
    (found by a review helper)."""
    issuer = f"https://127.0.0.1:{free_port()}/dir"
    store = CertStore(disk / "le", issuer)
    store.prepare()
    if held != "nothing":
        store.save(DOMAIN, *_ended_certificate())
    with _read_only(disk, store):
        result = inlets(*_server_args(token_file, disk / "le", issuer, free_port()))
    line = one_line_error(result, f"cannot keep certificates in {store.dir}: ")
    assert "make it writable for the user the server runs as" in line, line


def _ended_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for DOMAIN that ended yesterday, and its key (PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=90))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

