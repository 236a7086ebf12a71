"""Host names and addresses from flags and URLs, checked by one rule when they are read.

A host is an IP address or a DNS name whose labels IDNA can encode (1-63 letters, digits,
``-`` or ``_`` each, 253 characters in all). Checked at startup, a typo is one line then,
instead of a ``UnicodeError`` traceback, a stream that hangs, or a client retrying forever
on "Name or service not known".
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import SplitResult, urlsplit

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_DOTTED_NUMBERS = re.compile(r"[0-9]+(?:\.[0-9]+)*\.?")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HINT = "give an IP address or a DNS name such as example.com"


class HostError(ValueError):
    """A host, address or URL that cannot be used; the message names the flag and says what to give."""


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def canonical_ipv6(host: str) -> str:
    """An IPv6 address in its one compressed form (``0:0::1`` -> ``::1``), as browsers write it in Host, so that
    every spelling of it names one HTTP host; anything else as given (a name costs one ``in``)."""
    if ":" not in host:
        return host
    try:
        return ipaddress.IPv6Address(host).compressed
    except ValueError:
        return host


def tls_name(host: str) -> str:
    """The name a server's certificate is checked for (and sent as SNI): ``host`` without a link-local zone
    (``fe80::1%eth0``) or a final dot (``example.com.``, a fully qualified name), which no certificate names; curl
    and browsers drop both too (RFC 6066 3: SNI carries no final dot)."""
    return host.partition("%")[0].rstrip(".") or host


def unmapped_address(address: IPAddress) -> IPAddress:
    """An IPv4-mapped address (``::ffff:127.0.0.1``, what a dual-stack socket sees of an IPv4 peer) as the IPv4
    address it is; any other as it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def unmapped(host: str) -> str:
    """An IPv4 user's address as IPv4: a listener on ``::`` (dual-stack) sees ``::ffff:127.0.0.1``, which logs,
    /status, X-Forwarded-For and per-source limits would otherwise show and count apart from ``127.0.0.1``."""
    if host[:7].lower() == "::ffff:":  # only these are parsed: this runs per connection
        try:
            return str(unmapped_address(ipaddress.IPv6Address(host)))
        except ValueError:
            return host
    return host


#: Per-source limits count an IPv6 source by its /64: a host is given a whole /64 (RFC 6177: every VPS, every SLAAC
#: LAN), so counted per address one host was 2**64 sources, each with its own failed logins and pending handshakes.
SOURCE_PREFIX_V6 = 64


def source_key(host: str) -> str:
    """What per-source limits count ``host`` (an address as ``unmapped`` gives it) as: an IPv6 address as its /64
    (``2001:db8::/64``), anything else as it is."""
    if ":" not in host:  # IPv4, or no address at all ("?"): one ``in`` per connection
        return host
    try:  # an IPv4-mapped one (a dual-stack socket's IPv4 user, a proxy's header) counts as its IPv4 address
        address = unmapped_address(ipaddress.IPv6Address(host.partition("%")[0]))
    except ValueError:
        return host
    if address.version == 4:
        return str(address)
    return str(ipaddress.IPv6Network((address, SOURCE_PREFIX_V6), strict=False))


def is_loopback(address: str | None) -> bool:
    """Whether a bind address (brackets allowed) stays on this machine: a loopback IP (``::ffff:127.0.0.1`` too,
    which Python's is_loopback calls no loopback) or localhost. Empty, every interface, so no."""
    host = (address or "").strip("[]").lower()
    if host in ("localhost", "localhost.") or host.endswith(".localhost"):
        return True
    try:
        return unmapped_address(ipaddress.ip_address(host)).is_loopback
    except ValueError:
        return False


def is_utf8(text: str) -> bool:
    """Whether ``text`` came from UTF-8: a command-line byte that is not (Python's surrogateescape) cannot be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_host(host: str, what: str) -> str:
    """``host`` unchanged when it is an IP address or a valid DNS name (IDN allowed); HostError otherwise."""
    if is_ip(host):
        return host
    if host.startswith("[") and host.endswith("]") and is_ip(host[1:-1]):  # as in a URL, but no port follows
        raise HostError(f"{what}: give {host[1:-1]} without brackets (they go around an IPv6 address "
                        "only when a :PORT follows)")
    if not is_utf8(host):  # idna's error for it blamed "an empty or over-long label"
        raise HostError(f"{what}: {host!r} holds a byte that is not UTF-8 (Latin-1's, say): type it again as "
                        "UTF-8, or give the name's ASCII (xn--) form")
    if _DOTTED_NUMBERS.fullmatch(host):
        raise HostError(f"{what}: {host!r} is not an IP address: {HINT}")
    try:
        name = host.encode("idna").decode("ascii").rstrip(".")
    except UnicodeError:
        raise HostError(f"{what}: {host!r} is not a valid host name (an empty or over-long label): {HINT}") from None
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise HostError(f"{what}: {host!r} is not a valid host name: {HINT}")
    return host


#: A URL's authority (after "//", up to the path, query or fragment; all of that part when the scheme was left out),
#: read without urlsplit, which may raise: a user name and password in it would be quoted by the error.
_AUTHORITY = re.compile(r"(?:[^/?#]*//)?([^/?#]*)")


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries a user name or password: checked before any message quotes the URL."""
    match = _AUTHORITY.match(url)
    return match is not None and "@" in match.group(1)


def split_url(url: str, what: str = "--url") -> SplitResult:
    """``urlsplit`` with its ValueErrors (a bad bracket, a bad IPv6 address) worded, the host checked,
    and credentials refused: a user name or password in a URL would show in every log line."""
    if has_userinfo(url):  # before the malformed-address error, which quotes the URL
        raise HostError(f"{what} must not carry a user name or password (the token is the credential): "
                        "leave out the part up to '@'")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise HostError(f"{what} {url!r} has a malformed [IPv6] address: write it as [2001:db8::1]:PORT") from None
    if host:
        check_host(host, what)
    return parts


def check_bind_address(address: str, what: str) -> str:
    """A bind address for a server flag: valid (``check_host``) and resolvable now, else one line."""
    check_host(address, what)
    if is_ip(address):
        return address
    try:
        socket.getaddrinfo(address, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HostError(f"{what}: cannot resolve {address!r} ({exc.strerror}): give an IP address of this "
                        "host or a name that resolves to one") from None
    return address


def authority(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:8123``, not ``::1:8123``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sockname_authority(sockname: object) -> bytes:
    """``host:port`` (``[v6]:port``) of a socket's address (``getsockname()``); empty when unknown."""
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return b""
    return authority(str(sockname[0]), sockname[1]).encode()
