"""What the HTTP proxy's parser yields and its writer takes: heads, body pieces, the end of a message.

Plain data, h11-style events: ``parser`` makes them from llhttp's callbacks, ``write`` turns heads
back into bytes, and the exchange between a user and a tunnel client (``exchange``, ``front``,
``leg``) passes them on. Kept apart from the parser so that a reader of either finds one job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.hosts import canonical_ipv6

Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """A request the proxy refuses; ``status`` is the 4xx to answer with (505 for an HTTP version it does not speak)."""

    def __init__(self, status: int, message: str, complete: list[Event] | None = None) -> None:
        super().__init__(message)
        self.status = status
        #: An upstream's whole response parsed before the bad bytes in the same read: it is answered.
        self.complete: list[Event] = complete or []


@dataclass
class RequestHead:
    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers
    host: str = ""  # lower-case name from Host, port and trailing dot removed
    keep_alive: bool = True
    chunked: bool = False
    content_length: int | None = None
    upgrade: bool = False
    expect_continue: bool = False
    lower: list[bytes] = field(default_factory=list)  # header names, lower case, parallel to headers
    noted: dict[bytes, list[bytes]] = field(default_factory=dict)  # values of the _NOTED headers
    connection: set[bytes] = field(default_factory=set)  # tokens of the Connection header
    own_answer: bool = False  # OPTIONS with Max-Forwards: 0 (RFC 9110 7.6.2): the proxy answers, nothing goes upstream

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass
class ResponseHead:
    status: int
    reason: bytes
    version: bytes
    headers: Headers
    keep_alive: bool = True
    chunked: bool = False
    content_length: int | None = None
    lower: list[bytes] = field(default_factory=list)
    noted: dict[bytes, list[bytes]] = field(default_factory=dict)
    connection: set[bytes] = field(default_factory=set)
    bodiless: bool = False  # the answer to HEAD: complete at the end of its head, whatever it says

    @property
    def close_delimited(self) -> bool:
        """Body runs until the connection closes (no length, not chunked)."""
        return (not self.chunked and self.content_length is None and not self.bodiless
                and not no_body_status(self.status))


@dataclass
class Body:
    data: bytes | memoryview  # a large piece of a tunnel message may come as a view of it (``mux.VIEW_FROM``)


def merge_bodies(events: list) -> tuple[list, int]:
    """``events`` with each run of ``Body`` pieces as one, and how many ``Body`` are left: a read of tiny chunks
    (``1\r\nx\r\n`` ...) is then one piece to queue and one tunnel write, not thousands."""
    merged: list = []
    run: list[bytes | memoryview] = []
    for event in events:
        if type(event) is Body:
            run.append(event.data)  # type: ignore[attr-defined]
            continue
        if run:
            merged.append(Body(b"".join(run)))
            run = []
        merged.append(event)
    if run:
        merged.append(Body(b"".join(run)))
    return merged, sum(1 for event in merged if type(event) is Body)


@dataclass
class EndOfMessage:
    pass


@dataclass
class Upgraded:
    """The message before switched protocols; ``tail`` is what followed it, raw."""

    tail: bytes = b""


Event = RequestHead | ResponseHead | Body | EndOfMessage | Upgraded
#: EndOfMessage carries nothing: one instance serves every message (making one costs ~1,200 instructions).
END_OF_MESSAGE = EndOfMessage()


def no_body_status(status: int) -> bool:
    return status < 200 or status in (204, 304)


def host_of(value: bytes) -> str:
    """``Example.COM.:8080`` -> ``example.com``; ``[::1]:80`` and ``[0:0::1]`` -> ``::1`` (the form clients
    advertise: curl sends the address as typed, browsers compressed)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return canonical_ipv6(text[1:].partition("]")[0])
    return text.rpartition(":")[0].rstrip(".") if ":" in text else text.rstrip(".")
