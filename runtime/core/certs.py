"""Generate the TLS material a tunnel pins: a private CA and server certificates it signs.

Shared by ``inlets ... server --auto-tls`` and by ``inletsctl``, which generates the
same material for an exit server before the server exists.

A server certificate lasts as long as its CA. The 825-day cap (398 days since 2020) is the
public web's (CA/Browser Forum, Apple) and does not apply to a private CA that only our
client pins; under it an inletsctl exit server, whose CA key is thrown away, stopped
accepting clients after 825 days with no way to renew. The CA's own ten years are the limit.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import UNFINISHED, temporary_beside, write_new
from .hosts import is_ip
from .tls import EXIT_SERVER_NAME  # noqa: F401  # re-exported: the name inletsctl's certificates carry

CA_VALIDITY = datetime.timedelta(days=3650)  # a server certificate ends with its CA (issue_server_cert)


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)


def generate_ca(common_name: str = "inlets tunnel CA") -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def issue_server_cert(ca: Pem, names: list[str], not_after: datetime.datetime | None = None) -> Pem:
    """A server certificate for ``names`` (DNS names or IP addresses), signed by ``ca``, valid until the CA
    ends (or ``not_after``, when earlier: tests make short-lived ones). ``ValueError`` if the CA has ended."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    start = _now()
    end = min(ca_cert.not_valid_after_utc, not_after or ca_cert.not_valid_after_utc)
    if end <= start:
        raise ValueError(f"the CA ended on {end:%Y-%m-%d}: it can sign no certificate")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, never briefly world-readable (``_replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, data, 0o600)


@dataclass(frozen=True)
class AutoTlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


class AutoTlsError(Exception):
    """The --auto-tls directory or its files cannot be used; the message says which and what to do."""


def _owner_only(path: Path, fixed: list[str]) -> None:
    """A private key found readable by others is made 0600 (and named in ``fixed``), not reused as it is."""
    if not path.is_file():  # a folder in its place is said by ``_read``, not made 0600
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
        fixed.append(f"{path} (was {mode:04o})")


def _read(path: Path) -> bytes:
    """A kept file's bytes; ``AutoTlsError`` says it was reading that failed (``main``'s words are for writing: "cannot
    write ca.key: permission denied" was said of a key this user may not read)."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise AutoTlsError(f"{path} is a directory, where --auto-tls keeps a file: move it away and put the file "
                           "back") from None
    except OSError as exc:
        raise AutoTlsError(f"cannot read {path}: {(exc.strerror or 'failed').lower()}: let the user that runs the "
                           "server read it (chown or chmod it)") from None


def _ca_pair_missing(cert: Path, key: Path) -> str | None:
    """Why the kept CA cannot be used, when half of it is gone (a link to nothing counts as there: a volume not
    mounted); None when both are there or neither. Half a pair made a new CA over the other half without a word,
    and every client pinning the old ca.crt refused the server."""
    for path in (cert, key):
        if path.is_symlink() and not path.exists():
            return (f"{path} links to {os.readlink(path)}, which does not exist (a volume not mounted?): restore it, "
                    f"or move {cert.name} and {key.name} away to make a new CA (clients then need the new ca.crt)")
    there = [path for path in (cert, key) if os.path.lexists(path)]
    if len(there) != 1:
        return None
    missing = key if there[0] == cert else cert
    return (f"{there[0]} is there but {missing} is missing: restore {missing.name}, or move {there[0].name} away to "
            "make a new CA (clients then need the new ca.crt)")


def _load_ca(cert: Path, key: Path) -> tuple[Pem, datetime.datetime]:
    """The CA and when it ends; ``AutoTlsError`` when damaged or ended (nothing it signs would verify)."""
    ca = Pem(_read(cert), _read(key))
    try:
        end = x509.load_pem_x509_certificate(ca.cert).not_valid_after_utc
        serialization.load_pem_private_key(ca.key, password=None)
    except ValueError:
        raise AutoTlsError(f"{cert} and {key} are not a PEM certificate and key (damaged?): restore them, or move "
                           "them away to make a new CA (clients then need the new ca.crt)") from None
    if end <= datetime.datetime.now(datetime.timezone.utc):
        raise AutoTlsError(f"the CA {cert} ended on {end:%Y-%m-%d}: move {cert.name} and {key.name} away to make "
                           "a new CA (clients then need the new ca.crt)")
    return ca, end


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write beside, then rename over: a server loading the file meanwhile reads the old one or the new one.

    The file beside is new (``files.write_new``, O_EXCL: no link followed, nothing someone else made reused), 0600
    before a byte goes in, and its name random: at the fixed ``<name>.tmp`` a file another user had made kept its
    owner, and the key written into it and renamed over ca.key was theirs to read."""
    temporary = temporary_beside(path)
    try:
        write_new(temporary, data)
        if mode != 0o600:
            os.chmod(temporary, mode)  # a certificate is no secret: 0644, as it was written before
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _sweep_unfinished(directory: Path) -> None:
    """Remove what a write cut short left (``files.UNFINISHED``), under the folder's lock: no write of ours is under way,
    and each such file, a copy of a key, would otherwise stay for good (the fixed name before was written over)."""
    for entry in os.scandir(directory):
        if UNFINISHED.fullmatch(entry.name):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _refuse_others_writing(directory: Path) -> None:
    """``AutoTlsError`` when users other than the owner may write ``directory``: they could rename a CA key of their
    own over ca.key (or, the sticky bit set, leave one there before the first start), and the server signed with it."""
    mode = directory.stat().st_mode & 0o7777
    if mode & 0o022:
        raise AutoTlsError(f"{directory} is writable by other users (mode {mode:04o}), who could put their own CA key "
                           f"there: run chmod go-w {directory}, or give --auto-tls-path a folder only you may write")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Servers sharing the folder, started together (at boot), take turns: else each made a CA of its own,
    or loaded one's certificate with the other's key."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and the lock with it


def _canonical(name: str) -> str:
    bare = name.strip("[]")
    return str(ipaddress.ip_address(bare)) if is_ip(bare) else name.lower().rstrip(".")


def server_files_stem(names: list[str]) -> str:
    """``server-<digest of the names>``: a certificate per set of names, so that servers sharing a folder (and
    its CA, the one ca.crt their clients pin) with different --auto-tls-san no longer issue one server.crt over
    each other at every start."""
    canonical = ",".join(sorted({_canonical(name) for name in names}))
    return "server-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def ensure_auto_tls(directory: Path, names: list[str], fixed: list[str] | None = None) -> AutoTlsFiles:
    """Create (or reuse, on restart) a CA and a server certificate for ``names`` in ``directory``.

    Reusing keeps clients that pinned ``ca.crt`` working across restarts. Each set of names has its own
    certificate and key (``server_files_stem``), all signed by the folder's one CA. A certificate that is
    damaged, or ends before the CA (one made when they lasted 825 days), is issued again from the same CA.
    A directory made here is 0700; one that exists keeps its mode (it is the user's: the current directory,
    their home), but one that others may write is refused. Keys found readable by others are made 0600 and listed
    in ``fixed``.
    """
    fixed = [] if fixed is None else fixed
    if directory.exists() and not directory.is_dir():
        raise AutoTlsError(f"{directory} is a file, not a directory: give --auto-tls-path a directory")
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)  # exist_ok: another server may make it first
    _refuse_others_writing(directory)
    stem = server_files_stem(names)
    files = AutoTlsFiles(directory / "ca.crt", directory / f"{stem}.crt", directory / f"{stem}.key")
    ca_key_path = directory / "ca.key"
    with _locked(directory):
        _sweep_unfinished(directory)
        missing = _ca_pair_missing(files.ca_cert, ca_key_path)
        if missing is not None:
            raise AutoTlsError(missing)
        if os.path.lexists(ca_key_path):  # and ca.crt: a new CA only when neither is there
            _owner_only(ca_key_path, fixed)
            ca, ca_end = _load_ca(files.ca_cert, ca_key_path)
        else:
            ca = generate_ca()
            ca_end = x509.load_pem_x509_certificate(ca.cert).not_valid_after_utc
            _replace(ca_key_path, ca.key, 0o600)
            _replace(files.ca_cert, ca.cert, 0o644)
        if files.key.exists():
            _owner_only(files.key, fixed)
        if not (files.cert.exists() and files.key.exists() and _covers(files.cert, names, ca_end)):
            server = issue_server_cert(ca, names)
            _replace(files.key, server.key, 0o600)
            _replace(files.cert, server.cert, 0o644)
    return files


def _covers(cert_path: Path, names: list[str], ca_end: datetime.datetime) -> bool:
    """Whether the server certificate names every one of ``names`` and lasts as long as its CA."""
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path))
    except ValueError:  # damaged: issued again from the CA
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(n.strip("[]"))) if is_ip(n.strip("[]")) else n for n in names}
    return wanted <= present and cert.not_valid_after_utc >= ca_end


def main(argv: list[str] | None = None) -> None:
    """``python -m inlets_py.runtime.core.certs DIR NAME...``: ensure_auto_tls in a short-lived process.

    The server runs it this way so the long-running process never loads the crypto
    library (about 8 MiB of resident memory it would keep for nothing).
    """
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    fixed: list[str] = []
    try:
        files = ensure_auto_tls(Path(args[0]), args[1:], fixed)
    except AutoTlsError as exc:
        sys.exit(str(exc))
    except OSError as exc:  # the one line the server shows: the file and the OS's reason, in words
        where = exc.filename or args[0]
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            sys.exit(f"{where} (or a folder above it) is a file, not a directory: give --auto-tls-path a directory")
        if isinstance(exc, IsADirectoryError):  # written over: a folder where a certificate or key goes
            sys.exit(f"{where} is a directory, where --auto-tls keeps a file: move it away")
        sys.exit(f"cannot write {where}: {(exc.strerror or 'failed').lower()}: give a directory this user may write")
    print(json.dumps({"ca_cert": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key), "fixed": fixed}))


if __name__ == "__main__":
    main()
