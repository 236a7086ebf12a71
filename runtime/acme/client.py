"""Obtain one certificate over ACME (RFC 8555) with HTTP-01, using certbot's ``acme`` library.

Run as ``python -m inlets_py.runtime.acme.client`` by the server (``letsencrypt``), one process per
issuance: ``acme`` blocks (requests) and, with the crypto libraries, weighs about 20 MiB
that the long-running server should not keep. The child talks JSON lines on stdout:
``{"publish": TOKEN, "validation": V}`` (the server answers a line on stdin once its
port-80 responder serves it), ``{"withdraw": TOKEN}``, ``{"log": TEXT}``, and finally
``{"issued": DOMAIN}`` (files saved in the store) or ``{"error": ONE_LINE}``, with
``"retry_after": SECONDS`` when the CA said how long to wait (``retry_after.py``). Keys never
reach a message or a log.
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from ..core.logs import logfmt
from ..core import retry_after
from .store import Account, CertStore

log = logging.getLogger("inlets.letsencrypt")

USER_AGENT = "inlets-py (acme-python)"


class AcmeError(Exception):
    """Issuance failed; the message is one line naming the step and the server's answer. ``retry_after``:
    seconds the CA asked to wait before the next try (its Retry-After on a 429 or 503), if it did."""

    retry_after: float | None = None
    rate_limited = False  # the CA's problem type said so (its Retry-After counts whatever the HTTP status)


def _new_key_pem(kind: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


#: Directory fields (RFC 8555 7.1.1) this client uses: each must be a URL.
_ENDPOINTS = ("newNonce", "newAccount", "newOrder")

#: Characters of an ACME error kept in a log line: its start (what failed) and its end (why), the middle cut.
ERROR_KEPT = 300


def _one_line(exc: BaseException) -> str:
    """The CA's words on one line, at most ``ERROR_KEPT`` characters: cut at the end, a validation error lost its
    reason ("... Fetching http://DOMAIN/.well-known/acme-challenge/TOKEN: ... no such host") to the token."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) <= ERROR_KEPT:
        return text
    half = (ERROR_KEPT - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _what_to_check(domain: str, failed: list) -> str:
    """What to check after a failed HTTP-01 validation, by the CA's problem type: its words alone ("dial tcp
    ...: connection refused", "NXDOMAIN") named no DNS record and no port 80, the two things a user sets."""
    kinds = {(getattr(error, "typ", "") or "").rpartition(":")[2] for error in failed}
    if kinds & {"unauthorized", "incorrectResponse"}:  # an answer came, not ours
        return (f"the CA reached {domain} on port 80 but not this server's answer: check that its DNS A/AAAA records "
                "point only at this server and that nothing else (a proxy, a CDN, another web server) answers port 80")
    return (f"check that the DNS A/AAAA records of {domain} point at this server and that port 80 is open to the "
            "internet (firewall, security group, a port forward to --port)")


def _unreachable(exc: BaseException, ca_bundle: str | None = None) -> str:
    """Why the ACME server could not be reached, in words: requests' own text is a Python repr
    ("HTTPSConnectionPool(host=...): Max retries exceeded ... NewConnectionError(...[Errno 111]...)")."""
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return _tls_failure(str(exc), ca_bundle)
    if isinstance(exc, requests.exceptions.Timeout):
        return "it did not answer in time: check the network and --letsencrypt-issuer"
    text = str(exc)
    for marker, words in (("NameResolution", "name resolution failed"), ("Name or service not known", "name resolution failed"),
                          ("Temporary failure in name resolution", "name resolution failed"),
                          ("Connection refused", "connection refused"), ("No route to host", "no route to the host"),
                          ("Network is unreachable", "the network is unreachable")):
        if marker in text:
            return f"{words}: check the network and --letsencrypt-issuer"
    return "the connection failed: check the network and --letsencrypt-issuer"


def _tls_failure(text: str, ca_bundle: str | None) -> str:
    """Which TLS failure it was: every one was "could not be verified: give --letsencrypt-ca", also for a
    plain-HTTP port, a certificate for another name, or a --letsencrypt-ca already given."""
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text or "HTTP_REQUEST" in text:
        return "it does not speak HTTPS on that port (plain HTTP?): check the port in --letsencrypt-issuer"
    # urllib3 2 leaves the check to ssl ("IP address mismatch, ..."); 1.26, which requests before 2.30 installs, says its own
    if "mismatch, certificate is not valid for" in text or "doesn't match" in text:
        return "its HTTPS certificate is for another name: give the name it was issued for in --letsencrypt-issuer"
    if "certificate has expired" in text:
        return "its HTTPS certificate has expired (or this machine's clock is wrong)"
    if "CERTIFICATE_VERIFY_FAILED" not in text:
        return "the TLS handshake with it failed: check --letsencrypt-issuer"
    if ca_bundle:
        return f"its HTTPS certificate is not signed by a CA in --letsencrypt-ca {ca_bundle}"
    return "its HTTPS certificate could not be verified (a private ACME CA: give --letsencrypt-ca)"


def _not_a_directory(exc: BaseException) -> str:
    """What came instead of a directory: acme's ClientError carries the bare response ('<Response [404]>')."""
    import requests

    response = exc.args[0] if exc.args else None
    if isinstance(response, requests.Response):
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    return _one_line(exc)


class AcmeIssuer:
    """One ACME account (its key kept in ``store``), registered on first use, reused after."""

    def __init__(
        self, store: CertStore, account: Account, publish: Callable[[str, str], None], withdraw: Callable[[str], None]
    ) -> None:
        self.store = store
        self.url = account.url
        self.publish = publish
        self.withdraw = withdraw
        self.email = account.email
        self.ca_bundle = account.ca_bundle  # trust for the ACME server's own HTTPS (private CAs); else the system's
        self.timeout = account.timeout
        self._client = None
        self._answer = None  # the last HTTP answer's (status, Retry-After, Date): what a failure was told

    def issue(self, domain: str) -> tuple[bytes, bytes]:
        """(full chain PEM, private key PEM) for ``domain``; ``AcmeError`` on any failure, carrying the wait
        the CA asked for (Retry-After) when it refused for a rate limit (429) or as unavailable (503)."""
        self._answer = None
        try:
            return self._issue_or_say(domain)
        except AcmeError as exc:
            exc.retry_after = self._asked_wait(exc.rate_limited)
            raise

    def _asked_wait(self, rate_limited: bool) -> float | None:
        """Seconds the last answer's Retry-After asks for, if it was a refusal that schedules the next try. An
        HTTP-date counts from the answer's own Date (a wrong clock here shifts both), else from this clock."""
        if self._answer is None:
            return None
        status, value, date = self._answer
        if status not in retry_after.STATUSES and not rate_limited:
            return None
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            now = email.utils.parsedate_to_datetime(date).astimezone(datetime.timezone.utc) if date else now
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
        return retry_after.parse(value, now)

    def _note_answer(self, response, *_args, **_kwargs) -> None:  # a requests response hook
        self._answer = (response.status_code, response.headers.get("Retry-After"), response.headers.get("Date"))

    def _busy(self) -> str | None:
        """What a 429 or 503 without an ACME problem document meant, in words (acme says '<Response [503]>')."""
        status = self._answer[0] if self._answer else None
        if status == 429:
            return f"the ACME server {self.url} answered HTTP 429 Too Many Requests (rate-limited)"
        if status == 503:
            return f"the ACME server {self.url} answered HTTP 503 Service Unavailable (busy or down for maintenance)"
        return None

    def _issue_or_say(self, domain: str) -> tuple[bytes, bytes]:
        """``_issue``, its failures said in one line each (``AcmeError``)."""
        import requests
        from acme import errors, messages

        try:
            return self._issue(domain)
        except AcmeError:
            raise
        except messages.Error as exc:
            if exc.code == "badNonce":  # acme retried once: the CA's trouble, not the domain's (it read "refused DOMAIN")
                raise AcmeError(f"{domain}: the ACME server refused this server's anti-replay nonce twice in a row "
                                "(badNonce: the CA is busy or misbehaving): nothing to change on this server, it is "
                                "asked again") from None
            refused = AcmeError(f"the ACME server refused {domain}: {_one_line(exc)}")
            refused.rate_limited = exc.typ == retry_after.RATE_LIMITED
            raise refused from None
        except errors.TimeoutError:
            raise AcmeError(f"{domain}: the ACME server did not validate within {self.timeout:.0f}s") from None
        except errors.ValidationError as exc:
            failed = [ch.error for authz in exc.failed_authzrs for ch in authz.body.challenges if ch.error]
            details = "; ".join(_one_line(error) for error in failed) or "invalid authorization"
            raise AcmeError(f"{domain}: challenge failed: {details}: {_what_to_check(domain, failed)}") from None
        except (requests.exceptions.JSONDecodeError, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:  # RequestExceptions too:
            self._client = None  # they read "cannot reach the ACME server", of one that had answered
            raise self._not_acme(domain, "JSON that cannot be read" if isinstance(exc, ValueError)
                                 else "a URL that cannot be used") from None
        except requests.RequestException as exc:
            self._client = None
            raise AcmeError(f"cannot reach the ACME server {self.url}: {_unreachable(exc, self.ca_bundle)}") from None
        except errors.ClientError as exc:
            raise AcmeError(f"{domain}: {self._busy() or _one_line(exc)}") from None
        except (errors.Error, ValueError, OSError) as exc:
            raise AcmeError(f"{domain}: {_one_line(exc)}") from None
        except (KeyError, TypeError, AttributeError, IndexError):  # an answer of the wrong shape broke the acme library:
            self._client = None  # the log showed "KeyError: 'Directory field "newAccount" not found'"
            raise self._not_acme(domain, "a field missing or of the wrong type") from None

    def _not_acme(self, domain: str, what: str) -> AcmeError:
        return AcmeError(f"{domain}: the ACME server {self.url} answered something that is not valid ACME ({what}): "
                         "check --letsencrypt-issuer, e.g. https://acme-v02.api.letsencrypt.org/directory")

    def _account(self, domain: str):  # -> acme.client.ClientV2
        """The ACME client with the account registered (an existing account is found by its key)."""
        if self._client is not None:
            return self._client
        import josepy as jose
        from acme import client, errors, messages

        self.store.prepare()
        pem = self.store.account_key()
        if pem is None:
            pem = _new_key_pem("rsa")
            self.store.save_account_key(pem)
            log.info("event=acme_account_key path=%s", logfmt(self.store.account_key_path))
        key = jose.JWKRSA(key=self._account_private_key(pem))
        net = client.ClientNetwork(key, alg=jose.RS256, verify_ssl=self.ca_bundle or True, user_agent=USER_AGENT,
                                   timeout=int(min(self.timeout, 45)))
        net.session.hooks["response"].append(self._note_answer)
        try:
            directory = client.ClientV2.get_directory(self.url, net)
        # an answer, but no directory (requests' JSONDecodeError is a ValueError too; unreachable goes on to issue())
        except (errors.Error, ValueError, jose.errors.Error) as exc:
            if busy := self._busy():
                raise AcmeError(busy) from None
            raise AcmeError(f"{self.url} is not an ACME directory ({_not_a_directory(exc)}): check "
                            "--letsencrypt-issuer, e.g. https://acme-v02.api.letsencrypt.org/directory") from None
        # acme reads a null newNonce as ACME v1's "HEAD each POST's URL", and failed later as "the connection failed"
        unset = [name for name in _ENDPOINTS if not isinstance(directory.to_partial_json().get(name), str)]
        if unset:
            raise self._not_acme(domain, f"its directory gives no URL for {', '.join(unset)}")
        acme = client.ClientV2(directory, net)
        registration = (messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)
                        if self.email else messages.NewRegistration(terms_of_service_agreed=True))
        try:
            acme.new_account(registration)
            log.info("event=acme_account_registered directory=%s", logfmt(self.url))
        except errors.ConflictError as exc:  # this key already has an account: use it
            net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        self._client = acme
        return acme

    def _account_private_key(self, pem: bytes):  # -> RSAPrivateKey
        """The stored account key; a damaged one is named with what to do (cryptography's own text names
        neither the file nor a way out, and every retry would fail the same way)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        path = self.store.account_key_path
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise AcmeError(f"the ACME account key {path} is not a readable RSA private key: move it away, and "
                            "the next try registers a new account with a new key")
        return key

    def _issue(self, domain: str) -> tuple[bytes, bytes]:
        from acme import challenges, crypto_util, errors

        try:
            self.store.check_room()
        except OSError as exc:
            raise AcmeError(f"{domain}: cannot store certificates in {self.store.dir}: "
                            f"{(exc.strerror or str(exc)).lower()} (nothing was asked of the CA)") from None
        acme = self._account(domain)
        key_pem = _new_key_pem("ec")
        order = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
        published: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status.name == "valid":
                    continue  # validated recently: the server reuses it
                challenge = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
                if challenge is None:
                    raise AcmeError(f"{domain}: the ACME server offers no http-01 challenge")
                response, validation = challenge.response_and_validation(acme.net.key)
                token = challenge.chall.encode("token")
                self.publish(token, validation)
                published.append(token)
                acme.answer_challenge(challenge, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout)
            order = acme.poll_authorizations(order, deadline)  # its timeout: not validated (_issue_or_say)
            try:
                order = acme.finalize_order(order, deadline)
            except errors.TimeoutError:  # was "did not validate", sending the user to check DNS and port 80
                raise AcmeError(f"{domain}: validated, but the ACME server did not issue the certificate within "
                                f"{self.timeout:.0f}s (its order stayed 'processing'): nothing to change on this "
                                "server, it is asked again; if this goes on, check the CA's status page") from None
        finally:
            for token in published:
                self.withdraw(token)
        if not order.fullchain_pem:
            raise AcmeError(f"{domain}: the ACME server returned no certificate")
        return order.fullchain_pem.encode(), key_pem


# ------------------------------------------------------------------ child process


class _JsonLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit({"log": record.getMessage()})


def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _publish(token: str, validation: str) -> None:
    _emit({"publish": token, "validation": validation})
    if not sys.stdin.readline():  # the server answers once it serves the token
        raise AcmeError("the server went away during the challenge")


def main(argv: list[str] | None = None) -> int:
    """One issuance: ``--root R --url U --domain D [--email E] [--ca-bundle C] [--timeout S]``."""
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else __name__}")
    parser.add_argument("--root", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--email")
    parser.add_argument("--ca-bundle")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    log.addHandler(_JsonLines())
    log.setLevel(logging.INFO)
    log.propagate = False
    store = CertStore(Path(args.root), args.url)
    account = Account(args.url, args.email, args.ca_bundle, args.timeout)
    try:
        chain, key = AcmeIssuer(store, account, _publish, lambda token: _emit({"withdraw": token})).issue(args.domain)
        store.save(args.domain, chain, key)
    except AcmeError as exc:
        _emit({"error": str(exc), **({"retry_after": exc.retry_after} if exc.retry_after is not None else {})})
        return 1
    except (OSError, ValueError) as exc:
        _emit({"error": f"{args.domain}: cannot store the certificate: {_one_line(exc)}"})
        return 1
    _emit({"issued": args.domain})
    return 0


if __name__ == "__main__":
    sys.exit(main())
