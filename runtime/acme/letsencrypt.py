"""Keep a valid Let's Encrypt certificate for every domain, swapped in without a restart.

The manager owns the certificates the HTTPS listener presents: one TLS context per
domain, chosen by SNI. On start it loads what the store holds, then one task issues
what is missing and renews what is due (``acme_store.Validity.due``), each ACME run in
a short-lived child process (``acme/client.py``: it blocks, and its libraries would stay
in this process's memory), whose challenges this process serves on port 80 while it
runs. A renewed certificate replaces the domain's context:
handshakes from then on use it, connections already open keep theirs. A failure is
logged once per attempt, with the time of the next in UTC, and retried with a doubling
delay, or after the CA's Retry-After when it refused for a rate limit or as unavailable,
while the old certificate (if any) keeps being served; once it has expired, the log says so
(at start and per failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import json
import logging
import os
import ssl
import sys
from pathlib import Path

from ..core.child_env import child_environment
from ..core.cert_expiry import iso as _iso
from ..core.logs import logfmt
from ..core.tls import SERVER_CIPHERS, DirectSSLObject, TlsConfigError, readable_file
from ..core import retry_after as retry_after_header
from .store import (CHAIN, CURRENT, KEY, NOTE, RETRY_NOTE, Account, AcmeConfigError, CertStore, StoredCert, check_domain, check_email,
                    directory_url)

log = logging.getLogger("inlets.letsencrypt")
#: The ACME client runs as a child process: ``python -m`` this module (acme/client.py).
ACME_CLIENT = f"{__package__}.client"

MAX_SLEEP = 6 * 3600.0  # look again at least this often (clock jumps, a store changed by hand)
RETRY_MAX = 3600.0
CHILD_GRACE = 60.0  # seconds an ACME run may take beyond its validation timeout before it is killed


class AcmeError(Exception):
    """An issuance failed; one line from the ACME run (``acme/client.py``), and the wait the CA asked for."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def tls_context() -> ssl.SSLContext:
    """Server context for the HTTPS data plane: TLS 1.2 or newer, HTTP/1.1 by ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(SERVER_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    context.sslobject_class = DirectSSLObject  # a refused handshake ends with its alert, not an EOF
    return context


class LetsEncrypt:
    def __init__(self, domains: list[str], store: CertStore, account: Account, *, retry: float = 60.0) -> None:
        self.domains = list(dict.fromkeys(domains))
        self.domain_set = frozenset(self.domains)  # what port 80 redirects to https: one lookup per request
        self.store = store
        self.account = account
        self.retry = retry
        self.challenges: dict[str, str] = {}  # token -> key authorization, served on port 80
        self.certs: dict[str, StoredCert] = {}
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.issued = 0  # certificates obtained since start (first ones and renewals)
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}  # domain -> loop time before which no retry
        self._task: asyncio.Task | None = None
        self.context = tls_context()
        self.context.sni_callback = self._select

    # ------------------------------------------------------------ challenges (served by https_front.PlainFront)

    def publish(self, token: str, key_authorization: str) -> None:
        self.challenges[token] = key_authorization

    def withdraw(self, token: str) -> None:
        self.challenges.pop(token, None)

    # ------------------------------------------------------------ TLS

    def _select(self, sock: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> int | None:
        """SNI: the domain's context; a client without SNI or an unknown name gets the first domain's. A domain
        of ours with no certificate yet (none issued, or its own not yet) gets the alert ``internal_error``, as
        Caddy sends for a name it has no certificate for (curl: "tlsv1 alert internal error"): another domain's
        certificate had curl say "no alternative certificate subject name matches" and browsers offer to click
        through a name mismatch, as if the site were misconfigured rather than early."""
        name = (server_name or "").lower().rstrip(".")
        context = self.contexts.get(name)
        if context is None and name in self.domains:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR  # not issued yet (the log says why)
        if context is None:
            context = next((self.contexts[d] for d in self.domains if d in self.contexts), None)
        if context is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR  # nothing issued yet
        sock.context = context
        return None

    def _install(self, cert: StoredCert) -> None:
        context = tls_context()
        context.load_cert_chain(cert.chain, cert.key)
        self.certs[cert.domain] = cert
        self.contexts[cert.domain] = context

    # ------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Serve what the store holds (even if due: better than nothing). A folder that cannot be written (a read-only
        mount) is said once: ``configure`` lets it through only with a certificate to serve, as Caddy and certbot
        serve theirs; refused, a restart with valid certificates took the site down."""
        try:
            self.store.prepare()
        except OSError as exc:
            log.warning("event=certificate_store_unwritable path=%s error=%s note=%s", logfmt(self.store.dir),
                        logfmt(exc.strerror or exc), logfmt("the certificates stored are served, but none is obtained "
                                                            "or renewed until this folder can be written: make it "
                                                            "writable for the user the server runs as"))
        for domain in self.domains:
            cert = self.store.load(domain)
            current = self.store.domain_dir(domain) / CURRENT
            if cert is None and os.path.lexists(current):  # a damaged note re-issued with not a word of why
                log.warning("event=certificate_unusable domain=%s error=%s next=reissue", logfmt(domain), logfmt(
                    f"{current} does not lead to a whole set ({CHAIN}, {KEY}, {NOTE}): damaged?"))
            if cert is not None:
                try:
                    self._install(cert)
                except (ssl.SSLError, OSError) as exc:
                    log.warning("event=certificate_unusable domain=%s error=%s next=reissue", logfmt(domain),
                                logfmt(_unusable(cert, exc)))
                    continue
                if cert.validity.not_after <= datetime.datetime.now(datetime.timezone.utc):
                    log.warning("event=certificate_expired domain=%s not_after=%s serving=expired_until_renewed "
                                "note=\"browsers refuse it\"", logfmt(domain), _iso(cert.validity.not_after))
                else:
                    log.info("event=certificate_loaded domain=%s not_after=%s", logfmt(domain),
                             _iso(cert.validity.not_after))

    async def start(self) -> None:
        """Issue what is missing and renew what is due, from now on (the listeners are up)."""
        _quiet_undecodable_sni()
        self._restore_waits(asyncio.get_running_loop())
        self._task = asyncio.ensure_future(self._keep_current())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def due(self, now: datetime.datetime) -> list[str]:
        """Domains with no certificate, or one past two thirds of its life."""
        return [d for d in self.domains if d not in self.certs or self.certs[d].validity.due(now)]

    def next_check(self, now: datetime.datetime, clock: float) -> float:
        """Seconds until something is to do (a renewal due, a retry's delay over), within [1, MAX_SLEEP].

        ``clock`` is the loop's monotonic time, which retry deadlines are kept in.
        """
        waits = []
        for domain in self.domains:
            if domain in self._not_before:
                waits.append(self._not_before[domain] - clock)
            elif domain in self.certs:
                waits.append((self.certs[domain].validity.renew_at() - now).total_seconds())
            else:
                waits.append(0.0)
        return max(1.0, min([MAX_SLEEP, *waits]))

    def retry_delay(self, failures: int, retry_after: float | None = None) -> float:
        """``retry`` doubling per failure up to ``RETRY_MAX``, or the CA's Retry-After if longer (it was not
        read: a rate-limited server was asked again within the hour, and each refusal can count against the
        limit again). The exponent is capped: uncapped, the ~1,019th failure in a row (six weeks of a DNS not
        yet pointed here) overflowed a float and ended the renewal task for good, with nothing logged."""
        backoff = min(RETRY_MAX, self.retry * 2.0 ** min(failures - 1, 64))
        return max(backoff, retry_after_header.clamp(retry_after) or 0.0)

    async def _keep_current(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = datetime.datetime.now(datetime.timezone.utc)
            for domain in self.due(now):
                if loop.time() >= self._not_before.get(domain, 0.0):
                    await self._obtain(domain, loop)
            await asyncio.sleep(self.next_check(datetime.datetime.now(datetime.timezone.utc), loop.time()))

    async def _obtain(self, domain: str, loop: asyncio.AbstractEventLoop) -> None:
        renewing = domain in self.certs
        log.info("event=%s domain=%s", "certificate_renewing" if renewing else "certificate_requesting", logfmt(domain))
        try:
            cert = await self._issue(domain)
            self._install(cert)
        except (AcmeError, ssl.SSLError, OSError, ValueError) as exc:
            failures = self._failures[domain] = self._failures.get(domain, 0) + 1
            asked = exc.retry_after if isinstance(exc, AcmeError) else None
            delay = self.retry_delay(failures, asked)
            until = self._wait(domain, failures, delay, loop)
            log.error("event=certificate_failed domain=%s error=%s retry_in=%.0fs retry_at=%s%s%s", logfmt(domain),
                      logfmt(exc), delay, _iso(until), "" if asked is None else f" retry_after={asked:.0f}s",
                      self._expired_note(domain))
            return
        self.issued += 1
        log.info("event=certificate_%s domain=%s not_after=%s", "renewed" if renewing else "issued", logfmt(domain),
                 _iso(cert.validity.not_after))
        if cert.validity.due(datetime.datetime.now(datetime.timezone.utc)):
            self._due_on_arrival(cert, loop)
            return
        self._failures.pop(domain, None)
        self._not_before.pop(domain, None)
        with contextlib.suppress(OSError):
            self.store.clear_retry(domain)

    def _wait(self, domain: str, failures: int, delay: float,
              loop: asyncio.AbstractEventLoop) -> datetime.datetime:
        """No try for ``domain`` within ``delay`` seconds, noted in the store too, so that a restart honours it:
        5 restarts within an hour were 5 failed validations, Let's Encrypt's limit per hostname and hour.
        Returns when, for the log line (the time a restart will say). A note that cannot be written (a full disk, a
        read-only folder) is said: the wait holds until the next start only, and that went unsaid."""
        self._not_before[domain] = loop.time() + delay
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=delay)
        try:
            self.store.save_retry(domain, failures, until)
        except OSError as exc:
            note = self.store.domain_dir(domain) / RETRY_NOTE
            log.warning("event=certificate_retry_unsaved domain=%s path=%s retry_at=%s error=%s note=%s", logfmt(domain),
                        logfmt(note), _iso(until), logfmt(exc.strerror or exc), logfmt(
                            "the wait cannot be stored: a restart will not keep it and may ask the CA at once (make "
                            "room on that disk, or make the folder writable)"))
        return until

    def _restore_waits(self, loop: asyncio.AbstractEventLoop) -> None:
        """At start: the waits a run before noted (``_wait``) and not yet over, each said in one line. A wait
        is at most ``RETRY_AFTER_MAX`` from now, whatever the note says (a clock set back, a note edited)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        latest = now + datetime.timedelta(seconds=retry_after_header.RETRY_AFTER_MAX)
        for domain in self.domains:
            kept = self.store.load_retry(domain)
            if kept is None and (note := self.store.domain_dir(domain) / RETRY_NOTE).exists():  # damaged: else unsaid
                log.warning("event=certificate_retry_unreadable domain=%s path=%s note=%s", logfmt(domain),
                            logfmt(note), logfmt("the wait noted after the last failure cannot be read: the CA is "
                                                 "asked now, and the note written anew if that fails"))
            if kept is None or kept[1] <= now:
                continue
            failures, when = kept[0], min(kept[1], latest)
            wait = (when - now).total_seconds()
            self._failures[domain] = failures
            self._not_before[domain] = loop.time() + wait
            log.warning("event=certificate_retry_kept domain=%s failures=%d retry_in=%.0fs retry_at=%s note=%s",
                        logfmt(domain), failures, wait, _iso(when), logfmt(
                            "the last attempt before this start failed: the CA is asked again no sooner (remove "
                            f"{self.store.domain_dir(domain) / RETRY_NOTE} to ask at start)"))

    def _due_on_arrival(self, cert: StoredCert, loop: asyncio.AbstractEventLoop) -> None:
        """A certificate due for renewal as it arrives (this clock months ahead, or a CA issuing for seconds)
        waits like a failure: asked for again at once, it was re-issued back to back, spending the CA's
        rate limit (5 duplicate certificates a week at Let's Encrypt) within seconds."""
        failures = self._failures[cert.domain] = self._failures.get(cert.domain, 0) + 1
        delay = self.retry_delay(failures)
        until = self._wait(cert.domain, failures, delay, loop)
        log.warning("event=certificate_due_on_arrival domain=%s not_after=%s error=%s retry_in=%.0fs retry_at=%s",
                    logfmt(cert.domain), _iso(cert.validity.not_after), logfmt("the certificate just issued is already "
                    "due for renewal: is this machine's clock right?"), delay, _iso(until))

    def _expired_note(self, domain: str) -> str:
        """`` serving=expired not_after=...`` when the certificate still served for ``domain`` has expired: a
        failure line alone read like any retry while every browser was refusing the site."""
        cert = self.certs.get(domain)
        if cert is None or cert.validity.not_after > datetime.datetime.now(datetime.timezone.utc):
            return ""
        return f" serving=expired not_after={_iso(cert.validity.not_after)}"

    async def _issue(self, domain: str) -> StoredCert:
        """One ACME run in a child process (see ``acme/client.py``); ``AcmeError`` when it fails."""
        account = self.account
        argv = [sys.executable, "-m", ACME_CLIENT, "--root", str(self.store.root), "--url", account.url,
                "--domain", domain, "--timeout", str(account.timeout)]
        argv += ["--email", account.email] if account.email else []
        argv += ["--ca-bundle", account.ca_bundle] if account.ca_bundle else []
        child = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,  # none of our secrets
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                     env=child_environment(network=True))
        published: set[str] = set()
        try:
            return await asyncio.wait_for(self._converse(child, domain, published), account.timeout + CHILD_GRACE)
        except asyncio.TimeoutError:
            raise AcmeError(f"{domain}: the ACME run took over {account.timeout + CHILD_GRACE:.0f}s") from None
        finally:
            for token in published:
                self.withdraw(token)
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()

    async def _converse(self, child: asyncio.subprocess.Process, domain: str, published: set[str]) -> StoredCert:
        assert child.stdout is not None and child.stdin is not None and child.stderr is not None
        while line := await child.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "publish" in message:
                self.publish(message["publish"], message["validation"])
                published.add(message["publish"])
                child.stdin.write(b"\n")  # served now: the child may tell the CA to validate
                await child.stdin.drain()
            elif "withdraw" in message:
                self.withdraw(message["withdraw"])
                published.discard(message["withdraw"])
            elif "log" in message:
                log.info("%s", message["log"])
            elif "error" in message:
                raise AcmeError(message["error"], retry_after_header.clamp(message.get("retry_after")))
            elif message.get("issued") == domain:
                cert = self.store.load(domain)
                if cert is None:
                    raise AcmeError(f"{domain}: the ACME run stored no readable certificate")
                return cert
        await child.wait()
        last = (await child.stderr.read()).decode(errors="replace").strip().splitlines() or ["no output"]
        raise AcmeError(f"{domain}: the ACME run exited ({child.returncode}) saying: {last[-1][:300]}")


def _quiet_undecodable_sni() -> None:
    """Drop CPython's report of a server name it cannot give the SNI callback (not ASCII, which RFC 6066 requires):
    it wrote "Exception ignored in: b'\\xc3...'" and a traceback to the log at every such handshake, so anyone could
    fill the log. The handshake still fails with the alert ``internal_error``; other reports go on as before."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_sni", False):
        return

    def hook(args: sys.UnraisableHookArgs) -> None:
        error = args.exc_value
        if not (isinstance(error, UnicodeDecodeError) and isinstance(args.object, bytes) and error.object == args.object):
            previous(args)

    hook.quiets_sni = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _unusable(cert: StoredCert, exc: Exception) -> str:
    """Why a stored certificate cannot be served, naming its files (OpenSSL says '[SSL] PEM lib (_ssl.c:3905)')."""
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return f"the key {cert.key} does not belong to the certificate {cert.chain}"
    if isinstance(exc, ssl.SSLError):
        return f"{cert.chain} and {cert.key} are not a readable PEM certificate chain and key (damaged?)"
    return f"cannot read {cert.chain} and {cert.key}: {(getattr(exc, 'strerror', None) or 'unreadable').lower()}"


def configure(
    domains: list[str],
    root: Path,
    *,
    issuer: str = "prod",
    email: str | None = None,
    ca_bundle: Path | None = None,
    retry: float = 60.0,
) -> LetsEncrypt:
    """Validate the ``--letsencrypt-*`` options into a manager; ``AcmeConfigError`` (one line) otherwise."""
    names = [check_domain(d) for d in domains]
    if importlib.util.find_spec("acme") is None:
        raise AcmeConfigError("Let's Encrypt needs the acme package: pip install acme")
    url = directory_url(issuer)
    email = check_email(email)
    if ca_bundle is not None:
        try:  # a directory was "no such file", sending the user looking for a path that is there
            readable_file(ca_bundle, "--letsencrypt-ca")
        except TlsConfigError as exc:
            raise AcmeConfigError(str(exc)) from None
    account = Account(url, email, str(ca_bundle.resolve()) if ca_bundle else None)
    store = CertStore(root, url)
    try:
        store.prepare()
    except (FileExistsError, NotADirectoryError):  # "File exists": a part of the path is a file, not a folder
        blocking = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), root)
        raise AcmeConfigError(f"--letsencrypt-path {root}: {blocking} is not a folder: give a folder (it is "
                              "made if missing)") from None
    except OSError as exc:  # a read-only folder: fatal only with nothing stored to serve (load says it otherwise);
        now = datetime.datetime.now(datetime.timezone.utc)  # one ended is nothing to serve: it can never be renewed
        if not any((stored := store.load(name)) is not None and stored.validity.not_after > now for name in names):
            raise AcmeConfigError(f"cannot keep certificates in {store.dir}: {exc.strerror or exc} (and it holds no "
                                  "certificate still valid): make it writable for the user the server runs as, or "
                                  "give another --letsencrypt-path") from None
    return LetsEncrypt(names, store, account, retry=retry)
