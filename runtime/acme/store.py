"""Let's Encrypt state on disk, and the decisions about it that need no network.

One folder per ACME directory (so staging and production accounts never mix), 0700,
holding the account key and, per domain, a certificate chain, its key and a note of its
validity (so the long-running server reads it without loading the crypto library: only
the issuing child process does), every file 0600. The three are one set, replaced as
one: they are written and flushed to disk in a new numbered folder, then the domain's
``current`` symlink is switched to it by one rename. A crash at any step leaves the old
set or the new one, never a new key beside the old chain (saved as three renames, a kill
between them had the next start find a key that fit no certificate, and ask the CA again).
The renewal rule is Let's Encrypt's advice: renew once two thirds of the lifetime
have passed, which works for 90-day certificates and for short-lived ones alike.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..core.files import write_new
from ..core.hosts import has_userinfo
from ..core.ports import url_port

ISSUERS = {
    "prod": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
# Whole-string patterns, used with fullmatch (a pattern ending in $ lets a trailing newline through).
_DOMAIN = re.compile(r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_EMAIL = re.compile(r"[^@\s:/\x00-\x1f\x7f]+@[^@\s:/\x00-\x1f\x7f]+\.[^@\s:/\x00-\x1f\x7f]+")


class AcmeConfigError(ValueError):
    """A Let's Encrypt option is unusable; the message says which and why (one line)."""


def directory_url(issuer: str) -> str:
    """``prod``, ``staging`` or an ``https://`` ACME directory URL (a private CA such as pebble)."""
    if issuer in ISSUERS:
        return ISSUERS[issuer]
    if has_userinfo(issuer):  # before any message that quotes the URL
        raise AcmeConfigError("--letsencrypt-issuer must not carry a user name or password (the ACME account key is "
                              "the credential): leave out the part up to '@'")
    usage = f"--letsencrypt-issuer must be prod, staging or an https:// directory URL, got {issuer!r}"
    try:  # urlsplit raises on "https://[::1" and drops tabs and line breaks: both refused here instead
        parts = urlsplit(issuer)
    except ValueError:
        raise AcmeConfigError(usage) from None
    if parts.scheme != "https" or not parts.hostname or any(c.isspace() or not c.isprintable() for c in issuer):
        raise AcmeConfigError(usage)
    try:  # the port urllib would raise on later (or, for :0, try to connect to)
        url_port(parts, 443)
    except ValueError as exc:
        raise AcmeConfigError(f"--letsencrypt-issuer {issuer!r}: {exc} (leave it out for 443)") from None
    return issuer


def check_domain(domain: str) -> str:
    """A lower-case DNS name with at least one dot; wildcards need DNS-01, so they are refused."""
    name = domain.strip().lower().removesuffix(".")  # the root's dot alone (example.com.)
    if _DOMAIN.fullmatch(name) and name.rpartition(".")[2].isdigit():  # no top-level label is all digits: an address
        raise AcmeConfigError(f"--letsencrypt-domain {domain!r} is an IP address, not a DNS name: give a name whose DNS "
                              "points at this server (e.g. example.com); the CA would refuse it at every try")
    if not _DOMAIN.fullmatch(name):
        raise AcmeConfigError(f"--letsencrypt-domain {domain!r} is not a DNS name (HTTP-01 needs e.g. example.com)"
                              + _a_label_hint(name))
    return name


def _a_label_hint(name: str) -> str:
    """For an IDN, its xn-- form to give instead (as inletsctl's --domain says): "not a DNS name" sent the user
    looking for a typo in a valid name, and SNI, Host and the certificate all carry the A-label."""
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return ""
    return f": give it in its ASCII (xn--) form, --letsencrypt-domain {ascii_name}" if (
        ascii_name != name and _DOMAIN.fullmatch(ascii_name)) else ""


def check_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if not _EMAIL.fullmatch(email):
        raise AcmeConfigError(f"--letsencrypt-email {email!r} is not an email address")
    return email


@dataclass(frozen=True)
class Validity:
    not_before: datetime.datetime
    not_after: datetime.datetime

    def renew_at(self) -> datetime.datetime:
        """When a third of the lifetime remains (Let's Encrypt's advice: 30 days of 90)."""
        return self.not_after - (self.not_after - self.not_before) / 3

    def due(self, now: datetime.datetime) -> bool:
        return now >= self.renew_at()


def validity(chain_pem: bytes) -> Validity:
    """Validity of the first (leaf) certificate of a PEM chain; ``ValueError`` when unreadable."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(chain_pem)
    return Validity(cert.not_valid_before_utc, cert.not_valid_after_utc)


def covers(chain_pem: bytes, domain: str) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(chain_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return domain in {name.lower() for name in san.get_values_for_type(x509.DNSName)}


def _folder_name(url: str) -> str:
    """``acme-v02.api.letsencrypt.org-directory``: readable, one per directory URL."""
    parts = urlsplit(url)
    port = url_port(parts, 0)  # directory_url checked it; parts.port would raise on a bad one
    text = f"{parts.hostname}{'-' + str(port) if port else ''}{parts.path}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "acme"


@dataclass(frozen=True)
class Account:
    """How to reach the ACME server: directory URL, contact, trust for its own HTTPS, patience."""

    url: str
    email: str | None = None
    ca_bundle: str | None = None  # a private ACME CA's bundle; else the system store
    timeout: float = 90.0  # seconds for validation and finalisation


@dataclass(frozen=True)
class StoredCert:
    domain: str
    chain: Path
    key: Path
    validity: Validity


#: Bytes a certificate chain, its key and its note take at most, with room to spare (a chain is ~4 KB).
ROOM = 16 * 1024
#: Names in a domain's folder: ``current`` (the symlink), numbered sets, and the symlink being made.
CURRENT, _NEXT_LINK = "current", ".current.tmp"
_VERSION = re.compile(r"[0-9]{1,18}")
CHAIN, KEY, NOTE = "chain.pem", "key.pem", "validity.json"
#: In a domain's folder: when it may be asked for again after a failure, so that a restart waits too.
RETRY_NOTE = "retry.json"


class CertStore:
    """Files of one ACME directory under ``root``: ``account.key``, and per domain
    ``certs/DOMAIN/current -> N`` with ``N/chain.pem``, ``N/key.pem``, ``N/validity.json``. Servers from before
    kept ``DOMAIN.crt``, ``DOMAIN.key`` and ``DOMAIN.json`` beside the account key: still read, until replaced."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.dir = root / _folder_name(url)

    def prepare(self) -> None:
        """Create the folders 0700; ``OSError`` when impossible. The CA's folder, which holds the keys, is
        tightened if it exists; an existing ``root`` keeps its mode: it is the user's (``/tmp`` or a web
        root given as --letsencrypt-path was made 0700, locking every other user and service out)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def check_room(self) -> None:
        """Write and remove ``ROOM`` bytes beside the certificates; ``OSError`` (a full disk, a quota) when a new
        certificate would not fit. Checked before asking the CA: one issued but not stored is lost, and each retry
        spent another of Let's Encrypt's 5 duplicate certificates a week."""
        self.prepare()
        probe = self.dir / ".room-check"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                left = memoryview(bytes(ROOM))
                while left:  # a write the disk can take only part of returns short; the next one raises
                    left = left[os.write(fd, left):]
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()

    @property
    def account_key_path(self) -> Path:
        return self.dir / "account.key"

    def account_key(self) -> bytes | None:
        path = self.account_key_path
        return path.read_bytes() if path.exists() else None

    def save_account_key(self, pem: bytes) -> None:
        self._replace(self.account_key_path, pem)

    def domain_dir(self, domain: str) -> Path:
        return self.dir / "certs" / domain

    def load(self, domain: str) -> StoredCert | None:
        """The stored certificate for ``domain`` per its validity note; None (re-issue) when incomplete.
        The paths name the set ``current`` pointed to when read, so chain and key come from one set."""
        try:
            version = os.readlink(self.domain_dir(domain) / CURRENT)
        except FileNotFoundError:
            return self._load_legacy(domain)
        except OSError:  # not a symlink: damaged by hand
            return None
        if not _VERSION.fullmatch(version):
            return None
        folder = self.domain_dir(domain) / version
        return _read_set(domain, folder / CHAIN, folder / KEY, folder / NOTE)

    def _load_legacy(self, domain: str) -> StoredCert | None:
        """A certificate stored before sets were switched as one (``DOMAIN.crt`` etc. beside the account key)."""
        return _read_set(domain, *(self.dir / f"{domain}{suffix}" for suffix in (".crt", ".key", ".json")))

    def save(self, domain: str, chain_pem: bytes, key_pem: bytes) -> StoredCert:
        """Store a new certificate (parsed here: the issuing process has the crypto library loaded) as one set:
        written and flushed in a new numbered folder, then ``current`` switched to it by one rename. The set
        replaced is kept (a reader may have just resolved ``current``); any older one, and what a crash left
        half-written, is removed, so a domain takes at most three sets' room, and two once saved."""
        if not covers(chain_pem, domain):
            raise ValueError(f"the certificate issued for {domain} does not name it")
        when = validity(chain_pem)
        note = {"domain": domain, "not_before": _iso(when.not_before), "not_after": _iso(when.not_after)}
        home = self.domain_dir(domain)
        self.prepare()
        _make_dirs(home, stop=self.dir)
        try:
            previous = os.readlink(home / CURRENT)
        except OSError:
            previous = None
        numbers = [int(entry.name) for entry in os.scandir(home) if _VERSION.fullmatch(entry.name)]
        version = str(max(numbers, default=0) + 1)
        folder = home / version
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # whatever the umask
        for name, data in ((KEY, key_pem), (CHAIN, chain_pem), (NOTE, json.dumps(note).encode())):
            write_new(folder / name, data)
        _fsync_dir(folder)
        _fsync_dir(home)  # the folder's own entry, on disk before ``current`` may name it
        link = home / _NEXT_LINK
        with contextlib.suppress(FileNotFoundError):
            link.unlink()  # left by a crash
        os.symlink(version, link)
        current = home / CURRENT
        if current.is_dir() and not current.is_symlink():  # a folder made by hand: no link can be renamed over it,
            os.replace(current, home / f"{CURRENT}.damaged-{version}")  # and each retry lost another issued certificate
        os.replace(link, current)  # the switch: one rename
        _fsync_dir(home)
        self._remove_except(home, {version, previous})
        self._remove_legacy(domain)
        return StoredCert(domain, folder / CHAIN, folder / KEY, when)

    def save_retry(self, domain: str, failures: int, not_before: datetime.datetime) -> None:
        """Note that ``domain`` is not to be asked for before ``not_before`` (0600, replaced whole): kept in
        memory only, each restart asked at once, and 5 failed validations an hour is Let's Encrypt's limit."""
        self.prepare()
        _make_dirs(self.domain_dir(domain), stop=self.dir)
        note = {"domain": domain, "failures": failures, "not_before": _iso(not_before)}
        self._replace(self.domain_dir(domain) / RETRY_NOTE, json.dumps(note).encode())

    def load_retry(self, domain: str) -> tuple[int, datetime.datetime] | None:
        """(failures in a row, not before when) as ``save_retry`` noted them; None when absent or damaged."""
        try:
            data = json.loads((self.domain_dir(domain) / RETRY_NOTE).read_text())
            failures = data["failures"]
            if data["domain"] != domain or type(failures) is not int or failures < 1:
                return None
            return failures, _parse(data["not_before"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def clear_retry(self, domain: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.domain_dir(domain) / RETRY_NOTE).unlink()

    @staticmethod
    def _remove_except(home: Path, keep: set[str | None]) -> None:
        """Numbered sets other than ``keep``: older ones, and what a crash left half-written."""
        for entry in os.scandir(home):
            if _VERSION.fullmatch(entry.name) and entry.name not in keep:
                shutil.rmtree(entry.path, ignore_errors=True)

    def _remove_legacy(self, domain: str) -> None:
        """The files of the layout from before, once a set has replaced them (never read again)."""
        names = [f"{domain}{suffix}{tmp}" for suffix in (".crt", ".key", ".json") for tmp in ("", ".tmp")]
        removed = False
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
                removed = True
        if removed:
            _fsync_dir(self.dir)

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        """Write beside, flush, then rename over: readers (and a restart after a power cut) see the old file or
        the new one, 0600 either way. A failed write (a full disk) removes the file it began, which was left behind empty."""
        temporary = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()  # left by a crash
        try:
            write_new(temporary, data)
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _fsync_dir(path.parent)


def _read_set(domain: str, chain: Path, key: Path, note: Path) -> StoredCert | None:
    if not (chain.exists() and key.exists() and note.exists()):
        return None
    try:
        data = json.loads(note.read_text())
        if data["domain"] != domain:
            return None
        when = Validity(_parse(data["not_before"]), _parse(data["not_after"]))
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return StoredCert(domain, chain, key, when)


def _make_dirs(path: Path, stop: Path) -> None:
    """``path`` and its parents up to ``stop``, 0700, each new one flushed into its parent."""
    if path == stop or path.is_dir():
        return
    _make_dirs(path.parent, stop)
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename, a new file): without it a power cut may undo them."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
