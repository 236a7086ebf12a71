"""TLS contexts for the control plane: TLS 1.2 or newer, the client pinned to a CA."""

from __future__ import annotations

import contextvars
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any

from .auth import NotARegularFile, open_regular_file
from .logs import logfmt

log = logging.getLogger("inlets.tls")

#: The name every inletsctl-provisioned server certificate carries. The client is told
#: to expect it (``--tls-server-name``), so a certificate made before the VM's IP is
#: known still verifies, while the per-server CA keeps it pinned.
EXIT_SERVER_NAME = "inlets-exit-server"
X509_V_ERR_CERT_HAS_EXPIRED = 10  # OpenSSL's verify code (x509_vfy.h), for the leaf or any CA above it
X509_V_ERR_CERT_NOT_YET_VALID = 9  # the same, for a notBefore still to come


#: Set around feeding a ClientHello to the loop's TLS layer (``server.admission``): the server TLS objects that
#: refused it append themselves, so the feeder closes the connection once their alert is written.
REFUSED: contextvars.ContextVar[list[ssl.SSLObject] | None] = contextvars.ContextVar("refused", default=None)


class DirectSSLObject(ssl.SSLObject):
    """``ssl.SSLObject`` whose ``read``, ``write`` and ``pending`` are the C object's own methods.

    The event loop's TLS layer (uvloop's and asyncio's) calls these on every record; ``SSLObject``'s are
    Python wrappers that only pass the call on, a Python frame each. Set as a context's
    ``sslobject_class`` (its documented hook), the loop calls the C methods straight, with the same
    arguments and results."""

    _outgoing: ssl.MemoryBIO
    _refused: ssl.SSLError | None

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any,
                **kwargs: Any) -> DirectSSLObject:  # what ``wrap_bio`` calls, passed on as is
        self: DirectSSLObject = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]  # private
        inner = self._sslobj  # type: ignore[attr-defined]
        self.read, self.write, self.pending = inner.read, inner.write, inner.pending  # type: ignore[method-assign]
        self._outgoing, self._refused = outgoing, None
        return self

    def do_handshake(self) -> None:
        """A server's refusal reaches the client as OpenSSL's alert (``protocol_version`` for TLS 1.0,
        ``internal_error`` for a name with no certificate yet), then fails as before.

        The loop's TLS layer (asyncio's and uvloop's) closes the socket on a failed handshake without sending
        what OpenSSL wrote for the peer: curl, ``openssl s_client`` and browsers saw an unexpected EOF, which
        reads like a network fault. So the first failure is told to the loop as "wants more": it sends the
        alert; the feeder told by ``REFUSED`` closes then (else the client's close on reading it, its next
        bytes or the handshake timeout fail the handshake with the error kept here)."""
        if self._refused is not None:
            raise self._refused
        try:
            self._sslobj.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if not self.server_side or not self._outgoing.pending:
                raise
            self._refused = exc
            refused = REFUSED.get()
            if refused is not None:
                refused.append(self)
            raise ssl.SSLWantReadError("handshake refused: the alert goes out first") from exc


class TlsConfigError(Exception):
    """TLS files are missing or unusable; the message names the file."""


class PlaintextAttempts:
    """Plain HTTP on the TLS control port (a client given ``ws://``), logged per source: at once,
    then at most once a minute with the number seen since, so a client retrying forever cannot
    flood the log. At most ``max_sources`` addresses are remembered (the oldest forgotten first),
    so a scan from many addresses cannot grow it either."""

    interval = 60.0
    max_sources = 1024

    def __init__(self) -> None:
        self._sources: dict[str, tuple[float, int]] = {}  # source: (logged at, attempts since)

    def seen(self, source: str) -> None:
        now = time.monotonic()
        logged_at, since = self._sources.pop(source, (None, 0))
        since += 1
        if logged_at is not None and now - logged_at < self.interval:
            self._sources[source] = (logged_at, since)  # re-inserted: the most recent last
            return
        log.warning("event=plaintext_on_tls_port source=%s attempts=%d hint=%s", logfmt(source), since,
                    logfmt("a client sent plain HTTP to this TLS port: its --url must start with wss://, not ws://"))
        self._sources[source] = (now, 0)
        while len(self._sources) > self.max_sources:
            del self._sources[next(iter(self._sources))]


PLAINTEXT_ATTEMPTS = PlaintextAttempts()


def readable_file(path: Path, what: str) -> None:
    """One worded line for a TLS file that is missing, a directory or unreadable (not OpenSSL's); also
    ``--letsencrypt-ca``'s, so every file flag says the same."""
    if not path.exists():
        raise TlsConfigError(f"{what} not found: {path}")
    try:
        open_regular_file(path).close()  # a FIFO hung here, and again in OpenSSL's open
    except IsADirectoryError:
        raise TlsConfigError(f"{what} {path} is a directory: give the file itself") from None
    except NotARegularFile as exc:
        raise TlsConfigError(f"{what} {path} is {exc.kind}, not a regular file: give the PEM file itself") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {(exc.strerror or 'unreadable').lower()}") from None


class _PassPhraseAsked(Exception):
    pass


def _no_pass_phrase() -> bytes:
    """OpenSSL's callback for an encrypted key: without one it prompts on the terminal, and a server waited there."""
    raise _PassPhraseAsked


def _certificates_in(path: Path) -> int:
    try:
        return Path(path).read_bytes().count(b"-----BEGIN CERTIFICATE-----")
    except OSError:
        return 0


#: The TLS 1.2 suites a server offers: forward secrecy and AEAD only (Mozilla's "intermediate"; TLS 1.3's are all AEAD).
#: Python's default took CBC-mode ones too (ECDHE-ECDSA-AES256-SHA384, ...), which SSL Labs and testssl grade weak.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(SERVER_CIPHERS)
    context.sslobject_class = DirectSSLObject
    readable_file(Path(cert), "TLS file")
    readable_file(Path(key), "TLS file")
    try:
        context.load_cert_chain(cert, key, password=_no_pass_phrase)
    except _PassPhraseAsked:
        raise TlsConfigError(f"the key {key} is encrypted (it asks for a pass phrase), which a server cannot type: "
                             f"give it unencrypted (openssl pkey -in {key} -out KEY.pem), kept 0600") from None
    except ssl.SSLError as exc:
        # A key of another type than the certificate's (an EC key for an RSA certificate) goes to OpenSSL's slot for
        # that type, which holds no certificate: NO_CERTIFICATE_ASSIGNED, the same mistake in other words
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            if _certificates_in(cert) > 1:  # a chain: OpenSSL pairs the key with the first certificate only
                raise TlsConfigError(f"the key {key} does not belong to the first certificate in {cert}: in a chain "
                                     "file the server's own certificate comes first, then the CA(s) that signed it; "
                                     "else give the key the certificate was made with") from None
            raise TlsConfigError(f"the key {key} does not belong to the certificate {cert}: give the key "
                                 "the certificate was made with") from None
        if exc.reason == "EE_KEY_TOO_SMALL":  # PEM files, well formed: they were said "must be PEM"
            raise TlsConfigError(f"the key of the certificate {cert} is too small for OpenSSL here (RSA under 2048 "
                                 "bits): make an RSA key of 2048 bits or more, or an EC P-256 key, and a certificate "
                                 "for it") from None
        if exc.reason in ("EE_MD_TOO_WEAK", "CA_MD_TOO_WEAK"):  # CA_: the signature a CA made, on it or on its chain
            raise TlsConfigError(f"the certificate {cert}, or a CA certificate in it, is signed with a digest OpenSSL "
                                 "here refuses as too weak (SHA-1 or MD5): issue it again signed with SHA-256") from None
        if exc.reason == "CA_KEY_TOO_SMALL":  # the server's own key is fine: a CA's in its chain is not
            raise TlsConfigError(f"a CA certificate in the chain file {cert} has a key too small for OpenSSL here (RSA "
                                 "under 2048 bits): get the chain from a CA with a stronger key") from None
        raise TlsConfigError(f"cannot load TLS certificate {cert} / key {key}: they must be PEM files "
                             "(-----BEGIN CERTIFICATE----- and -----BEGIN PRIVATE KEY-----), the key unencrypted") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot load TLS certificate {cert} / key {key}: "
                             f"{(exc.strerror or 'unreadable').lower()}") from None
    return context


def load_ca(context: ssl.SSLContext, ca: Path, what: str = "CA file") -> None:
    """Trust the certificates in ``ca``; a TlsConfigError in words when it holds none or cannot be read."""
    readable_file(Path(ca), what)
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError:
        raise TlsConfigError(f"{what} {ca} holds no PEM certificate: give the CA certificate "
                             "(a file starting -----BEGIN CERTIFICATE-----)") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {ca}: {(exc.strerror or 'unreadable').lower()}") from None


def client_context(ca: Path | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """Verify the server against ``ca`` when given (pinned), else the system trust store."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslobject_class = DirectSSLObject
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca is None:
        context.load_default_certs()
        return context
    load_ca(context, ca)
    return context


class PinnedCa:
    """A client's --tls-ca, loaded again when the file changes (inode, size or modification time), as its token
    file is re-read: moving a server to a new CA then needs no client restart (put both CAs in the file, send the
    client SIGHUP, move the server). Read once, a client kept the old CA alone and exited at the next reconnect."""

    def __init__(self, path: Path, context: ssl.SSLContext) -> None:
        self.path, self.context = path, context
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_ino, status.st_size, status.st_mtime_ns

    def current(self) -> tuple[ssl.SSLContext, bool]:
        """The context for the next connection and whether it was just loaded; ``TlsConfigError`` when the file
        changed and cannot be used now (caught mid-write, removed): ``self.context`` is then the one read last."""
        seen = self._signature()
        if seen == self._seen:
            return self.context, False
        context = client_context(self.path)
        self.context, self._seen = context, seen
        return context, True


def too_old(exc: ssl.SSLError) -> bool:
    """Whether a handshake failed on the peer's TLS version: its alert refusing ours, or our refusal of its own (TLS
    1.1 or older, under every inlets context's minimum). OpenSSL's words for it name its source file (_ssl.c:1006)."""
    code = exc.reason or ""
    return "PROTOCOL_VERSION" in code or code == "UNSUPPORTED_PROTOCOL"


def too_old_words(where: str) -> str:
    """``where`` (a peer: "HOST:PORT", "proxy URL") speaks only a TLS older than 1.2, in the user's words."""
    return f"{where} offers no TLS 1.2 or newer (its newest is older)"


def verify_failure(exc: ssl.SSLCertVerificationError, server_name: str | None = None, *, ca_given: bool = True) -> str:
    """Why the server's certificate was refused, and which option fixes it; ``server_name``: --tls-server-name, when
    given (the hint said to give it to a user who had, naming neither it nor what else to do); ``ca_given``: whether
    --tls-ca was (without it the system's CAs were used, and "check --tls-ca" named a flag the user had not given)."""
    if "mismatch" in (exc.verify_message or "") and server_name:
        hint = (f"the certificate is not for {server_name}, the --tls-server-name given: give one of the names it "
                f"carries (servers inletsctl made: --tls-server-name {EXIT_SERVER_NAME})")
    elif "mismatch" in (exc.verify_message or ""):  # a good certificate for another name
        hint = (f"the certificate is for another name: give it with --tls-server-name "
                f"(servers inletsctl made: --tls-server-name {EXIT_SERVER_NAME})")
    elif exc.verify_code == X509_V_ERR_CERT_HAS_EXPIRED:  # "check --tls-ca" sent users to a CA that was right
        hint = ("the server's certificate or its CA has ended, or this machine's clock is wrong: the server needs a "
                "new certificate (an exit server inletsctl made: create a new one)")
    elif exc.verify_code == X509_V_ERR_CERT_NOT_YET_VALID:  # the CA is right: a clock is wrong, or it starts later
        hint = ("the server's certificate or its CA starts later, or this machine's clock is behind: check the clocks "
                "here and where the certificate was made, or give the server one valid now")
    elif ca_given:
        hint = "check --tls-ca: it must be the CA that signed the server's certificate"
    else:
        hint = ("the server's certificate is not signed by a CA this machine trusts: give the CA that signed it with "
                "--tls-ca FILE (an exit server inletsctl made: its ca.crt)")
    return f"TLS certificate verification failed: {exc.verify_message} ({hint})"


def upstream_verify_failure(exc: ssl.SSLCertVerificationError) -> str:
    """Why an https:// upstream's certificate was refused, and what fixes it: OpenSSL's words alone ("self-signed
    certificate") named neither --upstream-ca nor --upstream-insecure."""
    if "mismatch" in (exc.verify_message or ""):
        hint = "the certificate is for another name: give the upstream by a name its certificate carries"
    elif exc.verify_code == X509_V_ERR_CERT_HAS_EXPIRED:
        hint = "the certificate or its CA has ended, or this machine's clock is wrong: renew the upstream's certificate"
    elif exc.verify_code == X509_V_ERR_CERT_NOT_YET_VALID:
        hint = "the certificate starts later, or this machine's clock is behind: check the clocks"
    else:
        hint = "give the CA that signed the upstream's certificate (or a self-signed one itself) with --upstream-ca FILE"
    words = (exc.verify_message or "").rstrip(".")
    return f"TLS verification failed: {words} ({hint}; or --upstream-insecure not to verify it)"
