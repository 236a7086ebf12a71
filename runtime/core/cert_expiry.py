"""When a certificate stops being valid, read with the standard library alone, and the warning before that.

The long-running server and client never load the crypto library (it would stay in their memory, and
the TCP exit server's wheel does not install it), so the server reads its own certificate's notAfter
from the DER here, and the client reads the server's from the handshake (``getpeercert()``). Both
say so from ``WARN_WITHIN`` before the end: past it, every client refuses the certificate.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import re
import ssl

from .logs import logfmt

#: How long before a certificate's end the server (at start) and the client (per connection) warn.
WARN_WITHIN = datetime.timedelta(days=30)

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)
_SEQUENCE, _INTEGER, _VERSION, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0x02, 0xA0, 0x17, 0x18


def iso(when: datetime.datetime) -> str:
    """UTC to the second, as every ``not_after=`` in the logs is written."""
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _element(data: bytes, at: int, tag: int) -> tuple[int, int]:
    """(start, end) of the value of the DER element at ``at``, which must carry ``tag``; ``ValueError`` otherwise."""
    if at + 2 > len(data) or data[at] != tag:
        raise ValueError("not an X.509 certificate")
    length, at = data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or at + count > len(data):
            raise ValueError("not an X.509 certificate")
        length, at = int.from_bytes(data[at:at + count], "big"), at + count
    if at + length > len(data):
        raise ValueError("not an X.509 certificate")
    return at, at + length


def _time(tag: int, raw: bytes) -> datetime.datetime:
    """RFC 5280 4.1.2.5: UTCTime YYMMDDHHMMSSZ (YY below 50 is 20YY) or GeneralizedTime YYYYMMDDHHMMSSZ."""
    text = raw.decode("ascii")
    if tag == _UTC_TIME:
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


def not_after_der(der: bytes) -> datetime.datetime:
    """notAfter of a DER certificate; ``ValueError`` when it is not one."""
    try:
        return _not_after(der)
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError("not an X.509 certificate") from exc


def _not_after(der: bytes) -> datetime.datetime:
    return _validity(der)[1]


def not_before_pem(pem: bytes) -> datetime.datetime:
    """notBefore of the first certificate of a PEM file; ``ValueError`` if none."""
    try:
        return _validity(_first_der(pem))[0]
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError("not an X.509 certificate") from exc


def _validity(der: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """Certificate > TBSCertificate > [0] version, serialNumber, signature, issuer, validity > notBefore, notAfter."""
    start, _ = _element(der, 0, _SEQUENCE)
    at, _ = _element(der, start, _SEQUENCE)
    if at < len(der) and der[at] == _VERSION:
        at = _element(der, at, _VERSION)[1]
    for tag in (_INTEGER, _SEQUENCE, _SEQUENCE):  # serialNumber, signature, issuer
        at = _element(der, at, tag)[1]
    validity, _ = _element(der, at, _SEQUENCE)
    times = []
    at = validity
    for _ in range(2):  # notBefore, notAfter: each either of the two time types
        tag = der[at]
        if tag not in (_UTC_TIME, _GENERALIZED_TIME):
            raise ValueError("not an X.509 certificate")
        start, at = _element(der, at, tag)
        times.append(_time(tag, der[start:at]))
    return times[0], times[1]


def not_after_pem(pem: bytes) -> datetime.datetime:
    """notAfter of the first certificate of a PEM file (a chain starts with the leaf); ``ValueError`` if none."""
    return not_after_der(_first_der(pem))


def _first_der(pem: bytes) -> bytes:
    found = _PEM.search(pem)
    if found is None:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except binascii.Error as exc:
        raise ValueError("not an X.509 certificate") from exc
    return der


def peer_not_after(peercert: dict | None) -> datetime.datetime | None:
    """notAfter of a verified peer (``getpeercert()``; empty when the peer was not verified)."""
    text = (peercert or {}).get("notAfter")
    if not text:
        return None
    return datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(text), datetime.timezone.utc)


def warn_if_ending(log: logging.Logger, subject: str, not_after: datetime.datetime, hint: str,
                   now: datetime.datetime | None = None) -> bool:
    """One warning when ``not_after`` is past or within ``WARN_WITHIN``; ``subject`` is ``key=value`` naming
    the certificate (``cert=PATH``, ``url=URL``). Whether it warned."""
    left = not_after - (now or datetime.datetime.now(datetime.timezone.utc))
    if left > WARN_WITHIN:
        return False
    if left <= datetime.timedelta(0):
        log.warning("event=certificate_expired %s not_after=%s hint=%s", subject, iso(not_after), logfmt(hint))
    else:
        log.warning("event=certificate_expires_soon %s not_after=%s days_left=%d hint=%s", subject, iso(not_after),
                    left.days, logfmt(hint))
    return True
