"""The control port's websocket connection as the websockets library runs it, with what the tunnel adds: it counts
as pending (``Admission``) until its token is proved, its replies are bounded (``BoundedReplies``), and a request
the library refuses itself, too large or malformed, is answered and reported like the ones we refuse."""

from __future__ import annotations

import asyncio
from typing import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import HeaderLineTooLong, InvalidMessage, RequestLineTooLong, TooManyHeaders
from websockets.protocol import CONNECTING
from websockets.server import ServerProtocol

from ..core.wsflow import BoundedReplies
from .admission import Ticket


def malformed(refused: InvalidMessage) -> str | None:
    """What was wrong with a request the library could not parse, in a few words that repeat none of its bytes (a
    malformed Authorization line holds a token); None when the peer closed before its request was whole."""
    cause = refused.__cause__
    if isinstance(cause, EOFError):
        return "lines must end with CRLF" if str(cause.__cause__) == "line without CRLF" else None
    if isinstance(cause, NotImplementedError):
        return "Transfer-Encoding is not supported"
    if isinstance(cause, UnicodeDecodeError):
        return "the request line is not ASCII"
    text = str(cause)
    if text.startswith("unsupported protocol"):
        return "HTTP/1.1 or HTTP/1.0 only"
    if text == "unsupported request body":
        return "a request to this port takes no body"
    if "request line" in text:
        return "malformed request line"
    return "malformed header field" if "header" in text else "malformed request"


class AnsweringProtocol(ServerProtocol):
    """The library's server protocol, but a request it cannot parse (a request line of one word, a header without a
    colon or with a NUL, a body) is answered 400 saying what was wrong: it closed such a connection without a word
    (curl: "Empty reply from server"), where one too large got its 414 or 431."""

    def send_eof(self) -> None:
        refused = self.handshake_exc
        if self.state is CONNECTING and not self.writes and isinstance(refused, InvalidMessage):
            reason = malformed(refused)
            if reason is not None:
                self.writes.append(self.reject(400, f"bad request: {reason}\n").serialize())
        super().send_eof()


class ControlConnection(BoundedReplies, ServerConnection):
    """A control-port websocket connection that counts as pending until ``authenticated``."""

    ticket: Ticket | None = None
    #: told of a request the library refused itself, before any hook of ours saw it, with the status and why: 414
    #: (request line) or 431 (header fields) too large, 400 malformed. Else a hostile peer's requests were neither
    #: logged nor counted.
    on_refused: Callable[[ControlConnection, int, str], None] | None = None
    peer: object = None  # the remote address, kept: remote_address is None once the library has closed

    def __init__(self, protocol: ServerProtocol, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        protocol.__class__ = AnsweringProtocol  # serve() makes the protocol and takes no class for it
        super().__init__(protocol, *args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = transport.get_extra_info("peername")
        super().connection_made(transport)

    async def handshake(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]  # the library's signature
        await super().handshake(*args, **kwargs)
        refused = self.protocol.handshake_exc
        if self.request is None and self.on_refused is not None:
            if isinstance(refused, RequestLineTooLong):
                self.on_refused(self, 414, "request line too long")
            elif isinstance(refused, (HeaderLineTooLong, TooManyHeaders)):
                self.on_refused(self, 431, "header fields too large")
            elif isinstance(refused, InvalidMessage) and (reason := malformed(refused)) is not None:
                self.on_refused(self, 400, reason)

    def authenticated(self) -> None:
        if self.ticket is not None:
            self.ticket.release()

    def connection_lost(self, exc: Exception | None) -> None:
        self.authenticated()  # not any more, but it no longer counts either
        super().connection_lost(exc)


#: What a browser or curl given http:// for the TLS control port is told (Go's servers answer the same case
#: "Client sent an HTTP request to an HTTPS server."), rather than a connection closed without a word.
