"""Per-client HTTP options: what a client asks the server to do with its traffic.

The client's flags (header rewrites, Host rewrite, protection with basic auth or a
bearer token) travel in the handshake's ``extra`` object and are applied by the
server, which parses every message anyway: the client stays a plain byte bridge.
The server validates them like any other input from the network. Secrets are sent
as SHA-256 digests, so the server never holds them and compares in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from functools import cached_property

from ..core.auth import has_control

#: Headers that describe one hop, not the message: never forwarded as received (RFC 9110 7.6.1).
#: Here, not with the parser: the HTTP client builds these options and never parses (nor loads httptools).
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection proxy-authenticate proxy-authorization te trailer "
    b"transfer-encoding upgrade".split()
)
#: What neither the Connection header nor a client's options may drop (``parser`` uses it too): dropping these
#: while forwarding the body lets the body be read as a second request (smuggling) or the request reach another host.
NEVER_HOP = frozenset((b"content-length", b"transfer-encoding", b"host"))
#: Names a client may not add or remove: the proxy writes framing, Host (``--rewrite-host``) and hop-by-hop
#: headers itself; a second Content-Length, or none, would smuggle requests or leave responses unframed.
RESERVED = HOP_BY_HOP | NEVER_HOP
def _spellings(name: bytes) -> frozenset[bytes]:
    """``name`` with each "-" as "-" or "_": CGI and WSGI servers (wsgiref, PHP) read "X_Forwarded_Proto" and
    "X-Forwarded-Proto" alike (HTTP_X_FORWARDED_PROTO), and nginx drops names with "_" for this."""
    first, sep, rest = name.partition(b"-")
    if not sep:
        return frozenset((name,))
    return frozenset(first + one + tail for one in (b"-", b"_") for tail in _spellings(rest))


#: A removed name's "-"/"_" spellings are all dropped up to this many of them (2**n: 16 a name, 1,024 for the 64 names a
#: client may remove), its own and the all-"-" and all-"_" ones past it: the set is the client's to size.
MAX_SPELLED = 4


def _removed_spellings(name: bytes) -> frozenset[bytes]:
    """A name a client removes, in the spellings a CGI/WSGI app reads as it (bounded: ``MAX_SPELLED``)."""
    dashed = name.replace(b"_", b"-")
    if dashed.count(b"-") <= MAX_SPELLED:
        return _spellings(dashed)
    return frozenset((name, dashed, dashed.replace(b"-", b"_")))


#: What a user may not tell the upstream about itself, in every spelling: the X-Forwarded-* the proxy sets (a
#: user's would reach the app joined to the proxy's, first: "https,http"), and the headers apps read for the same
#: facts from a proxy they trust, as Traefik drops them from untrusted sources. RFC 7239's Forwarded, and
#: X-Forwarded-Ssl and -Scheme, say the scheme and host, and Rack 3 and Spring read them before X-Forwarded-Proto: a
#: user's "X-Forwarded-Ssl: on" made a Rack app believe plain HTTP was HTTPS. X-Forwarded-Port and -Prefix are the
#: links an app writes (Rack, Spring, Werkzeug's ProxyFix); X-Real-IP is the user's address to nginx's realip, chi,
#: Echo and Gin, and so are the CDNs' True-Client-IP (chi's RealIP reads it first), CF-Connecting-IP, Fastly-Client-IP
#: and X-Client-IP, X-Cluster-Client-IP to others. A client's own (``--request-header-add``) still goes on.
FORWARDED = frozenset().union(*(_spellings(b"x-forwarded-" + name) for name in (
    b"for", b"proto", b"host", b"port", b"prefix", b"ssl", b"scheme", b"server", b"uri", b"method",
    b"tls-client-cert", b"tls-client-cert-info")), *(_spellings(name) for name in (
    b"x-real-ip", b"true-client-ip", b"cf-connecting-ip", b"fastly-client-ip", b"x-client-ip",
    b"x-cluster-client-ip"))) | {b"forwarded"}

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # fullmatch: "$" matches before a final newline too
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # fullmatch
MAX_RULES = 64
MAX_VALUE = 4096


class OptionError(ValueError):
    """An invalid option; the message names it."""


def _digest(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()


def header_name(text: str) -> bytes:
    name = text.strip().encode("latin-1", "replace")
    if not _TOKEN.fullmatch(name):
        raise OptionError(f"invalid header name {text!r}")
    return name


def _allowed(names: list[bytes], flag: str) -> list[bytes]:
    """``names``, unless one is ``RESERVED``: ``OptionError`` names the flag and the header."""
    for name in names:
        if name.lower() in RESERVED:
            raise OptionError(f"{flag} {name.decode()}: framing (Content-Length, Transfer-Encoding), Host and "
                              "hop-by-hop headers (Connection, Keep-Alive, Upgrade, TE, Trailer, Proxy-Connection, "
                              "Proxy-Authenticate, Proxy-Authorization) are the proxy's own and cannot be added or "
                              "removed (--rewrite-host sets Host)")
    return names


def _at_most_rules(texts: list[str], flag: str) -> list[str]:
    """The server takes at most MAX_RULES of each (``from_extra``): more let the client start, then be refused."""
    if len(texts) > MAX_RULES:
        raise OptionError(f"{flag} is given {len(texts)} times: a server takes at most {MAX_RULES}")
    return texts


def _added(texts: list[str], flag: str) -> list[tuple[bytes, bytes]]:
    pairs = [header_pair(h) for h in _at_most_rules(texts, flag)]
    _allowed([n for n, _ in pairs], flag)
    return pairs


def _removed(texts: list[str], flag: str) -> frozenset[bytes]:
    return frozenset(n.lower() for n in _allowed([header_name(h) for h in _at_most_rules(texts, flag)], flag))


def _utf8(text: str, what: str) -> bytes:
    """``text`` as UTF-8. A command-line byte that is not UTF-8 (Python's surrogateescape) raised a traceback; now
    ``OptionError`` names ``what`` (never the value: it may be a secret)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise OptionError(f"{what} is not UTF-8 (a byte such as Latin-1's): give it as UTF-8 text") from None


def header_pair(text: str) -> tuple[bytes, bytes]:
    """``'Name: value'`` -> (b'Name', b'value'); no CR/LF can slip into a value."""
    name, sep, value = text.partition(":")
    if not sep:  # the text is not shown, here nor below: a value may be a credential (Authorization: Bearer ...)
        raise OptionError("expected 'Name: value' (printable value), got a header without ':'")
    key = header_name(name)  # a valid name first: the errors below name the header, never show its value
    what = f"the value of header {key.decode()!r}"
    raw = _utf8(value.strip(), what)
    if not _VALUE.fullmatch(raw):
        raise OptionError(f"expected 'Name: value' (printable value): {what} holds a control character (a line "
                          "break, a NUL...): give printable text")
    if len(raw) > MAX_VALUE:
        raise OptionError(f"expected 'Name: value' (printable value): {what} is longer than {MAX_VALUE} bytes")
    return key, raw


@dataclass
class HttpOptions:
    request_add: list[tuple[bytes, bytes]] = field(default_factory=list)
    request_remove: frozenset[bytes] = frozenset()
    response_add: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_remove: frozenset[bytes] = frozenset()
    rewrite_host: dict[str, bytes] = field(default_factory=dict)  # service -> upstream Host value
    basic_digest: str | None = None  # sha256 of "user:password"
    bearer_digest: str | None = None  # sha256 of the token

    @classmethod
    def build(
        cls,
        *,
        request_add: list[str] = (),  # type: ignore[assignment]
        request_remove: list[str] = (),  # type: ignore[assignment]
        response_add: list[str] = (),  # type: ignore[assignment]
        response_remove: list[str] = (),  # type: ignore[assignment]
        rewrite_host: dict[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
    ) -> HttpOptions:
        """From command-line values; ``OptionError`` names the bad one."""
        if basic_auth and bearer_token:
            raise OptionError("choose one of --basic-auth-username/--basic-auth-password and --bearer-token")
        if basic_auth and ":" in basic_auth[0]:
            raise OptionError("--basic-auth-username must not contain ':'")
        if basic_auth and has_control(basic_auth[0]):  # RFC 7617 2: no browser sends one, the site would stay locked
            raise OptionError("--basic-auth-username holds a control character (a line break, a tab...), which no "
                              "browser can send: give the user name as it is typed")
        return cls(
            _added(request_add, "--request-header-add"),
            _removed(request_remove, "--request-header-remove"),
            _added(response_add, "--response-header-add"),
            _removed(response_remove, "--response-header-remove"),
            {s: h.encode("idna") for s, h in (rewrite_host or {}).items()},
            _digest(_utf8(basic_auth[0], "--basic-auth-username") + b":" + _utf8(basic_auth[1], "--basic-auth-password"))
            if basic_auth else None,
            _digest(_utf8(bearer_token, "--bearer-token")) if bearer_token else None,
        )

    # ------------------------------------------------------------- handshake

    def to_extra(self) -> dict:
        def pairs(items: list[tuple[bytes, bytes]]) -> list[list[str]]:
            return [[n.decode(), v.decode("utf-8")] for n, v in items]

        return {
            "http": {
                "request_add": pairs(self.request_add),
                "request_remove": sorted(n.decode() for n in self.request_remove),
                "response_add": pairs(self.response_add),
                "response_remove": sorted(n.decode() for n in self.response_remove),
                "rewrite_host": {s: h.decode() for s, h in self.rewrite_host.items()},
                "basic_sha256": self.basic_digest,
                "bearer_sha256": self.bearer_digest,
            }
        }

    @classmethod
    def from_extra(cls, extra: dict) -> HttpOptions:
        """Validate what a client sent; ``OptionError`` for anything malformed."""
        data = extra.get("http", {})
        if not isinstance(data, dict):
            raise OptionError("http options must be an object")

        def strings(key: str) -> list[str]:
            value = data.get(key, [])
            if not isinstance(value, list) or len(value) > MAX_RULES or not all(isinstance(v, str) for v in value):
                raise OptionError(f"{key} must be a list of at most {MAX_RULES} strings")
            return value

        def pairs(key: str) -> list[str]:
            value = data.get(key, [])
            if not isinstance(value, list) or len(value) > MAX_RULES:
                raise OptionError(f"{key} must be a list of at most {MAX_RULES} pairs")
            if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value):
                raise OptionError(f"{key} entries must be [name, value]")
            return [f"{n}: {v}" for n, v in value]

        def digest(key: str) -> str | None:
            value = data.get(key)
            if value is not None and not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
                raise OptionError(f"{key} must be a hex SHA-256 digest")
            return value

        hosts = data.get("rewrite_host", {})
        if not isinstance(hosts, dict) or len(hosts) > MAX_RULES or not all(
            # the Host values a client's upstreams give: names with "_" (Docker Compose's), IPv6 zones ("%25lo")
            isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9._%\-:\[\]]{1,300}", v)
            for k, v in hosts.items()
        ):
            raise OptionError("rewrite_host must map services to host[:port]")
        options = cls.build(
            request_add=pairs("request_add"),
            request_remove=strings("request_remove"),
            response_add=pairs("response_add"),
            response_remove=strings("response_remove"),
        )
        options.rewrite_host = {k: v.encode() for k, v in hosts.items()}
        options.basic_digest, options.bearer_digest = digest("basic_sha256"), digest("bearer_sha256")
        if options.basic_digest and options.bearer_digest:
            raise OptionError("choose basic auth or a bearer token, not both")
        return options

    # --------------------------------------------------------------- proxying

    # ``build`` refuses reserved names; the properties below leave them out again, whoever made the options.

    @cached_property
    def request_drop(self) -> frozenset[bytes]:
        """Request headers never forwarded as received (the proxy sets its own X-Forwarded-*). A name removed goes in
        every "-"/"_" spelling, as the proxy's own do: a user's X_Remote_User reached a WSGI app as the
        HTTP_X_REMOTE_USER that --request-header-remove X-Remote-User was given to keep out."""
        removed = frozenset().union(*(_removed_spellings(name) for name in self.request_remove))
        return HOP_BY_HOP | (removed - NEVER_HOP) | FORWARDED

    @cached_property
    def own_forwarded(self) -> frozenset[bytes]:
        """The X-Forwarded-* the proxy writes for this client: not one it removes (it asked for none), nor one it
        adds (its value is the one: a second header beside the proxy's was read first by Django, last by others),
        in either spelling (an added X_Forwarded_Proto is the same header to a WSGI app)."""
        mine = {n.lower().replace(b"_", b"-") for n in self.request_remove | {n for n, _ in self.request_add}}
        return frozenset(n for n in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host") if n not in mine)

    @cached_property
    def guarded_drop(self) -> frozenset[bytes]:
        """``request_drop`` on a protected name: the tunnel's credential stays at the tunnel."""
        return self.request_drop | {b"authorization"}

    @cached_property
    def stamps_date(self) -> bool:
        """Answers without Date get one (RFC 9110 6.6.1), unless this client's options remove or add it."""
        return b"date" not in self.response_remove and all(n.lower() != b"date" for n, _ in self.response_add)

    @cached_property
    def response_drop(self) -> frozenset[bytes]:
        return HOP_BY_HOP | (self.response_remove - NEVER_HOP)

    @cached_property
    def request_add_lines(self) -> list[bytes]:
        return [n + b": " + v + b"\r\n" for n, v in self.request_add if n.lower() not in RESERVED]

    @cached_property
    def response_add_lines(self) -> list[bytes]:
        return [n + b": " + v + b"\r\n" for n, v in self.response_add if n.lower() not in RESERVED]

    # ------------------------------------------------------------ protection

    @property
    def protected(self) -> bool:
        return bool(self.basic_digest or self.bearer_digest)

    def authorized(self, authorization: bytes | None) -> bool:
        """Check an ``Authorization`` value against the client's protection, in constant time."""
        expected = self.basic_digest or self.bearer_digest
        if expected is None:
            return True
        scheme, _, credentials = (authorization or b"").strip().partition(b" ")
        offered = credentials.strip()
        if self.basic_digest:
            if scheme.lower() != b"basic":
                offered = b""
            try:
                offered = base64.b64decode(offered, validate=True)
            except ValueError:
                offered = b""
        elif scheme.lower() != b"bearer":
            offered = b""
        return hmac.compare_digest(_digest(offered), expected)

    def challenge(self) -> tuple[bytes, bytes]:
        if self.basic_digest:
            return b"WWW-Authenticate", b'Basic realm="inlets", charset="UTF-8"'
        return b"WWW-Authenticate", b'Bearer realm="inlets"'
