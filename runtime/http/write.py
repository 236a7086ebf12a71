"""HTTP/1.1 bytes the proxy writes, without I/O: forwarded heads, chunks, its own answers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import formatdate

from .options import HttpOptions
from .messages import Headers, RequestHead, ResponseHead

_HOST = frozenset((b"host",))
_LENGTH = frozenset((b"content-length",))
_EXPECT = frozenset((b"expect",))


def add_kept(pieces: list[bytes], headers: Headers, lower: list[bytes], drop: frozenset[bytes],
             tokens: set[bytes]) -> None:
    """Append the ``Name: value`` lines of the headers to forward to ``pieces``, for one join: none in ``drop``
    (hop-by-hop and removed names) nor named by Connection (``tokens``, which never hold framing or Host: see
    ``parser.NEVER_HOP``). Each line goes as its four parts: a line joined here would be three bytes objects
    more per header for the final join to copy again (~1,300 instructions a header, measured)."""
    if tokens:
        drop = drop | tokens
    for (name, value), lname in zip(headers, lower):
        if lname not in drop:
            pieces += (name, b": ", value, b"\r\n")


_date_until = 0.0  # ``_date_line`` holds until this time.time()
_date_line = b""


def date_line() -> bytes:
    """The ``Date: <now>`` line (IMF-fixdate, RFC 9110 5.6.7), made once a second: ~65 ns an answer, not ~3 us."""
    global _date_until, _date_line
    now = time.time()
    if now >= _date_until:
        second = int(now)
        _date_until = second + 1.0
        _date_line = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
    return _date_line


def response_bytes(status: int, reason: bytes, headers: Headers) -> bytes:
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes | memoryview) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)  # type: ignore[str-format]  # %b takes any buffer


def chunk_parts(data: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bytes]:
    """``chunk(data)`` as its pieces, the data itself uncopied: for a ``writelines`` of a large body."""
    return b"%x\r\n" % len(data), data, b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"

REASONS = {200: "OK", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}


@dataclass
class SimpleResponse:
    """A response the proxy makes itself (errors, 401, redirects)."""

    status: int
    body: bytes
    headers: Headers = field(default_factory=list)

    def encode(self, close: bool, head_only: bool = False) -> bytes:
        headers = [(b"Date", date_line()[6:-2])]  # IMF-fixdate, RFC 9110 5.6.7
        if self.body:  # an empty one (the 200 to OPTIONS with Max-Forwards: 0) has no type
            headers.append((b"Content-Type", b"text/plain; charset=utf-8"))
        headers.append((b"Content-Length", b"%d" % len(self.body)))
        headers += self.headers
        if close:
            headers.append((b"Connection", b"close"))
        reason = REASONS.get(self.status, "Error").encode()
        return response_bytes(self.status, reason, headers) + (b"" if head_only else self.body)


#: RFC 9110 7.6.3: a gateway MUST send Via in each inbound request, naming the protocol received (a user's own Via,
#: before it, is kept: it claims no address). Closes the line that X-Forwarded-Host's value leaves open.
_VIA_11 = b"\r\nVia: 1.1 inlets\r\n"
_VIA_10 = b"\r\nVia: 1.0 inlets\r\n"


def request_head(head: RequestHead, service: str, options: HttpOptions, guarded: bool, peer: bytes, scheme: bytes,
                 trusted: bool = False) -> bytes:
    """The head sent upstream for a user at ``peer`` who spoke ``scheme``: hop-by-hop and removed headers dropped, X-Forwarded-* set, one pass.
    On a protected name the credential stays here, whichever client's upstream this is. ``trusted``: ``peer`` is in
    --trusted-proxies, whose X-Forwarded-For is kept and appended to; anyone else's is replaced by its address (Echo,
    Gin and chi read the leftmost entry), as Traefik and Caddy do."""
    noted = head.noted
    rewrite = options.rewrite_host.get(service)
    drop = options.guarded_drop if guarded else options.request_drop
    if rewrite is not None:
        drop = drop | _HOST
    # RFC 9110 10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0 request; passed on inside
    # the HTTP/1.1 request sent upstream it would be live there (a 100 this user cannot take, or a 417)
    voided = noted.get(b"expect") if head.version == b"1.0" else None
    if voided:
        drop = drop | _EXPECT
    lines = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    add_kept(lines, head.headers, head.lower, drop, head.connection)
    if voided:
        kept = [m.strip() for v in voided for m in v.split(b",") if m.strip() and m.strip().lower() != b"100-continue"]
        if kept:
            lines += [b"Expect: ", b", ".join(kept), b"\r\n"]
    if rewrite is not None:
        lines.append(b"Host: " + rewrite + b"\r\n")
    forwarded_for = peer
    if trusted:  # a balancer's chain, unless its Connection names it (RFC 9110 7.6.1: it ends at that hop)
        chain = noted.get(b"x-forwarded-for")
        if chain and b"x-forwarded-for" not in head.connection:
            forwarded_for = b", ".join(chain + [peer])
    host = noted.get(b"host", (b"",))[0]
    via = _VIA_11 if head.version == b"1.1" else _VIA_10
    own = options.own_forwarded
    if len(own) == 3:  # the usual case: all three, in one step
        lines += [b"X-Forwarded-For: ", forwarded_for,
                  b"\r\nX-Forwarded-Proto: ", scheme, b"\r\nX-Forwarded-Host: ", host, via]
    else:  # the client removes or sets some itself
        if b"x-forwarded-for" in own:
            lines += [b"X-Forwarded-For: ", forwarded_for, b"\r\n"]
        if b"x-forwarded-proto" in own:
            lines += [b"X-Forwarded-Proto: ", scheme, b"\r\n"]
        if b"x-forwarded-host" in own:
            lines += [b"X-Forwarded-Host: ", host, b"\r\n"]
        lines.append(via[2:])
    lines += options.request_add_lines
    if head.chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if head.upgrade:
        lines += [b"Connection: upgrade\r\nUpgrade: ", b", ".join(noted[b"upgrade"]), b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def response_head(response: ResponseHead, options: HttpOptions, chunked: bool, close: bool,
                  upgrade: bool = False, keep_alive: bool = False) -> bytes:
    """The response head passed on to the user: hop-by-hop and removed headers dropped, added ones set.
    ``keep_alive``: say so to an HTTP/1.0 user, who would otherwise take the connection as closing."""
    status = response.status
    drop = options.response_drop
    if status < 200 or status == 204:  # RFC 9110 8.6: no Content-Length in these
        drop = drop | _LENGTH
    elif status == 426 and b"upgrade" in response.noted:  # RFC 9110 15.5.22: a 426 MUST name the protocols in
        upgrade = True  # Upgrade, which the user may then ask for through this proxy (as nginx passes it on)
    lines = [b"HTTP/1.1 %d " % status, response.reason, b"\r\n"]
    add_kept(lines, response.headers, response.lower, drop, response.connection)
    if b"date" not in response.noted and status >= 200 and options.stamps_date:  # RFC 9110 6.6.1, as nginx does
        lines.append(date_line())
    lines += options.response_add_lines
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        lines.append(b"Connection: close\r\n")
    elif keep_alive:
        lines.append(b"Connection: keep-alive\r\n")
    if upgrade:
        lines += [b"Connection: upgrade\r\nUpgrade: ", b", ".join(response.noted.get(b"upgrade", [])), b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)
