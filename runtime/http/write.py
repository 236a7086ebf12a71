"""HTTP/1.1 bytes the proxy writes, without I/O: forwarded header lines, chunks, its own answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .http_proto import Headers


def kept_lines(headers: Headers, lower: list[bytes], drop: frozenset[bytes], tokens: set[bytes]) -> list[bytes]:
    """``Name: value`` lines of the headers to forward: one pass, none in ``drop`` (hop-by-hop and removed
    names) nor named by Connection (``tokens``, which never hold framing or Host: see ``http_proto.NEVER_HOP``)."""
    if tokens:
        return [n + b": " + v + b"\r\n" for (n, v), ln in zip(headers, lower) if ln not in drop and ln not in tokens]
    return [n + b": " + v + b"\r\n" for (n, v), ln in zip(headers, lower) if ln not in drop]


def response_bytes(status: int, reason: bytes, headers: Headers) -> bytes:
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

REASONS = {200: "OK", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


@dataclass
class SimpleResponse:
    """A response the proxy makes itself (errors, 401, redirects)."""

    status: int
    body: bytes
    headers: Headers = field(default_factory=list)

    def encode(self, close: bool, head_only: bool = False) -> bytes:
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", b"%d" % len(self.body))]
        headers += self.headers
        if close:
            headers.append((b"Connection", b"close"))
        reason = REASONS.get(self.status, "Error").encode()
        return response_bytes(self.status, reason, headers) + (b"" if head_only else self.body)
