"""HTTP/1.1 responses from an upstream, for the proxy, without I/O (``parser`` has the common part).

One request at a time: a response to HEAD has no body whatever its headers say, and only a request
that asked for an upgrade may be answered 101, which llhttp cannot be told; ``expect`` tells this
reader before each request goes.
"""

from __future__ import annotations

import httptools

from .messages import END_OF_MESSAGE, Body, Event, HttpError, ResponseHead, no_body_status
from .header_values import header_tokens, is_keep_alive
from .options import NEVER_HOP  # what the Connection header may never make hop-by-hop
from .parser import MAX_HEADERS, MAX_HEADER_BYTES, Reader

#: Bytes a reason phrase may not hold (RFC 9112 4: HTAB, SP, VCHAR and obs-text only), which llhttp lets through
#: (all but CR and LF): a NUL, ESC or DEL reached the user as sent, where the same in a header value is a 502.
_REASON_CTL = bytes(range(9)) + bytes(range(10, 32)) + b"\x7f"
#: Any byte after the head of an answer to HEAD (llhttp, not told, waits for the body its headers announce): the
#: stream is dropped, as after any other answer, so that a late body is never read as the next request's answer.
_AFTER_HEAD = "upstream sent bytes after its answer to HEAD, which has no body"


class ResponseReader(Reader):
    """Bytes from an upstream -> response events, for one request at a time.

    Call ``expect(head_request)`` before each request is sent: a response to HEAD
    has no body whatever its headers say, which llhttp cannot be told.
    """

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES, max_headers: int = MAX_HEADERS) -> None:
        super().__init__(httptools.HttpResponseParser, max_header_bytes, max_headers)
        self._head_request = False
        self._upgrade = False
        self._skip = False
        self._interim = 0  # bytes of interim (1xx) heads before the answer to this request
        self.head: ResponseHead | None = None

    def expect(self, head_request: bool, upgrade: bool = False) -> None:
        """The next request is a HEAD, or asks for an upgrade (only then may the answer be a 101)."""
        self._head_request = head_request
        self._upgrade = upgrade
        self.head = None
        self._interim = 0
        if self._skip:  # previous answer to HEAD: llhttp still waits for its body
            self._parser = self._parser_class(self)
            self._skip = False
            self._chunk_fresh = False

    def on_status(self, reason: bytes) -> None:
        self._start_text += reason

    def on_headers_complete(self) -> None:
        if self._skip:  # a second head in the read that ended an answer to HEAD
            raise self._fail(502, _AFTER_HEAD)
        self._in_head = False
        self._head_fed = 0
        self._check_size()
        parser = self._parser
        status = parser.get_status_code()
        if status < 100:  # llhttp takes any 3 digits: 099 passed as a final answer here and as an interim one where
            # it is sent on, which stripped its framing and hung the connection. RFC 9110 15: invalid, as are 600-999,
            # which go on as they are (as nginx passes them; an app's /status/N): their framing is a final answer's
            raise self._fail(502, f"upstream sent a bad response: status {status:03d} is below 100")
        if status == 101 and not self._upgrade:  # what follows would reach the user raw (RFC 9110 15.2.2)
            raise self._fail(502, "upstream switched protocols (101) for a request that asked for no upgrade")
        reason = self._start_text
        if not reason.isalpha() and len(reason.translate(None, _REASON_CTL)) != len(reason):  # "OK": one test
            raise self._fail(502, "upstream sent a bad response: control characters in its reason phrase")
        version = parser.get_http_version().encode()
        try:
            chunked, length = self._framing()
        except HttpError as exc:
            if exc.status == 501:  # a coding besides chunked: nginx's 502 too, as the body cannot be passed on framed
                coding = self._noted[b"transfer-encoding"][0].strip().decode("latin-1")[:40]
                raise self._fail(502, f"upstream sent Transfer-Encoding {coding!r}: only chunked can be passed on") from None
            raise self._fail(502, f"upstream sent an ambiguous response: {exc}") from None
        if chunked and b"\t" in self._noted[b"transfer-encoding"][0]:  # llhttp ends "chunked" at a space only: it
            # reads the body as running to the close, and the user got its chunk framing as the body, chunked again
            raise self._fail(502, "upstream sent an ambiguous response: a tab beside chunked in Transfer-Encoding")
        tokens = header_tokens(self._noted.get(b"connection"))
        if status == 101 and not (b"upgrade" in tokens and b"upgrade" in self._noted):
            # llhttp stops after any 101 but reports where only with both headers (else "Pause on CONNECT/Upgrade")
            raise self._fail(502, "upstream switched protocols (101) without naming the new one in Upgrade and "
                                  "Connection: upgrade (RFC 9110 7.8)")
        if tokens and not tokens.isdisjoint(NEVER_HOP):
            tokens -= NEVER_HOP  # framing stays, whatever Connection says
        # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; the connection is closed after
        # it (the answer goes on: its chunks are whole), as for a request, which gets 400
        keep_alive = is_keep_alive(version, tokens) and not (chunked and version == b"1.0")
        head = ResponseHead(status, reason, version, self._headers, keep_alive,
                            chunked, length, self._lower, self._noted, tokens)
        if no_body_status(status):
            head.chunked, head.content_length = False, None
        self._events.append(head)
        if 100 <= status < 200:
            if status != 101:  # an endless run of them held the request open, every one counting as activity
                self._interim += self._header_bytes() + len(self._start_text) + 16
                if self._interim > self.max_header_bytes:
                    raise self._fail(502, f"upstream sent more than {self.max_header_bytes} bytes of interim (1xx) "
                                          "responses and no final one")
            return
        self.head = head
        if self._head_request:
            if head.chunked or head.content_length:  # a body announced: an upstream that sends it anyway, after the
                head.keep_alive = False  # next request went out on this stream, would answer that one with it
            head.chunked = False  # keep content-length: it describes the GET answer
            head.bodiless = True
            self._events.append(END_OF_MESSAGE)
            self._skip = True

    def on_body(self, body: bytes) -> None:
        self._chunk_fresh = False
        if self._skip:  # a body after an answer to HEAD, in the read that ended its head
            raise self._fail(502, _AFTER_HEAD)
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        if self._skip:  # at its head, an answer to HEAD that announced no body (Content-Length: 0, 304) ends here
            if self._chunk_fresh:  # else a last chunk came after it
                raise self._fail(502, _AFTER_HEAD)
        elif self.head is not None:
            self._events.append(END_OF_MESSAGE)
        self._chunk_fresh = False

    def feed(self, data: bytes | memoryview) -> list[Event]:
        if self._skip:  # nothing may follow an answer to HEAD: such bytes were swallowed and the stream kept, where
            # the rest of a late body (a forged answer) was read as the next request's answer
            raise self._fail(502, _AFTER_HEAD)
        try:
            return self._feed(data)
        except HttpError as exc:
            parsed, self._events = self._events, []
            message = str(exc) if exc.status >= 500 else f"upstream sent a bad response: {exc}"
            # bytes that begin no valid response after a whole one: that one stands (the stream is not reused)
            raise HttpError(max(exc.status, 502), message, parsed if END_OF_MESSAGE in parsed else None) from None
