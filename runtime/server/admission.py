"""Connections that have not proved anything yet: capped, and their memory given back.

Such a connection costs memory before it has proved anything (a TLS handshake buffers
up to a few hundred KiB), so at most ``max_per_source`` of them are admitted from one
address (an IPv6 one's /64) (one more is closed as soon as it is accepted, before TLS starts) and at most
``max_total`` at once: at that cap the oldest still pending is closed to make room, so
a flood of silent connections cannot keep out a client that completes its handshake in
milliseconds. A trusted reverse proxy carries many users' connections: it is held to the
total only.

Four listeners use it. On the control port a connection stops counting once its token
checks out (``ControlConnection.authenticated``), or when it closes. On the HTTPS data plane
(``acme.https_front``) and the ordinary HTTP data port (``http.server``) a connection counts
until its first request head is complete (``FrontConnection``), over TLS too: counted only
until its handshake was done, one that then sent nothing sat uncounted until --idle-timeout.
On the HTTPS front's plain port (no TLS) a connection counts until it closes: it lives for
one challenge answer or redirect. On the ordinary data port behind a PROXY-protocol balancer
(``source_later``) it counts by the source the balancer's header names (``move``), the
balancer itself to the total only.

Freed memory tends to stay with the process (the allocator keeps it for reuse), so
when the last of a burst of pending connections has gone, unreachable objects are
collected and the allocator is asked to return free pages to the system.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import ssl
import time
from typing import Callable

from ..core.allowlist import SourceAllowList
from ..core.heap import trimmer
from ..core.hosts import source_key, unmapped
from ..core.logs import logfmt
from ..core.tls import PLAINTEXT_ATTEMPTS, REFUSED

log = logging.getLogger("inlets.server")

DEFAULT_MAX_TOTAL = 128
DEFAULT_MAX_PER_SOURCE = 16
#: A public site's connections with nothing proved yet, at once (the HTTP data port's until their first request head,
#: the HTTPS front's through their handshake to it): its users, not a few tunnel clients. A handshake and a
#: browser's first request take a few milliseconds, so 1,024 pending is some hundred thousand a second; at ~90 KiB
#: for each whole ClientHello that stalls, or handshake done and silent, the cap holds the TLS layer to ~100 MiB
#: (measured: 4,000 such connections, RSS 31 -> 126 MiB). The defaults of --max-pending-connections and
#: --max-https-handshakes.
PUBLIC_MAX_TOTAL = 1024
#: Of those, from one address: room for a NAT's many users (browsers open up to six connections per site each),
#: while one flooding address takes at most 1/16 of the total.
PUBLIC_MAX_PER_SOURCE = 64
HANDSHAKE_TIMEOUT = 10.0  # for TLS; the websocket handshake has its own (open_timeout)
SHUTDOWN_TIMEOUT = 5.0
#: Give memory back after a burst of at least this many pending connections has ended.
TRIM_AFTER = 32
#: Addresses a burst's refusals and evictions name in the log, at most, and how long before they may be named again.
REPORTED_MAX = 32
REPORTED_WINDOW = 60.0


class Ticket:
    """One pending connection's place; giving it back twice is harmless."""

    __slots__ = ("admission", "source", "key", "transport")

    def __init__(self, admission: Admission, source: str, transport: asyncio.BaseTransport) -> None:
        self.admission, self.source, self.transport = admission, source, transport
        self.key = source_key(source)  # what the per-source cap counts: an IPv6 source's /64

    def release(self) -> None:
        self.admission._release(self)


class Admission:
    """Counts connections not yet authenticated, per source and in total."""

    def __init__(
        self,
        max_total: int = DEFAULT_MAX_TOTAL,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        trusted_proxies: SourceAllowList | None = None,
        *,
        listener: str = "control",
        answer_plain_http: bytes | None = None,
        source_later: bool = False,
    ) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.trusted_proxies = trusted_proxies
        #: every peer is a balancer whose PROXY header names the real source: the peer counts to the total only, the
        #: source it names to the per-source cap too (``move``)
        self.source_later = source_later
        self.listener = listener  # named in the log lines: "control", "https", "data" or "http"
        #: What plain HTTP on the TLS port is answered (the control port's also logged per source): by default
        #: ``PLAIN_HTTP_ANSWER``, the control port's words; the HTTPS front passes its own.
        self.answer_plain_http = PLAIN_HTTP_ANSWER if answer_plain_http is None else answer_plain_http
        self.per_source: collections.Counter[str] = collections.Counter()
        self.pending: dict[Ticket, None] = {}  # oldest first
        self.refused = 0  # over the per-source cap
        self.evicted = 0  # closed to make room at the total cap
        self._burst = 0  # the most pending at once since memory was last given back
        self._reported: set[tuple[str, str]] = set()  # one log line per kind and address, ``REPORTED_MAX`` at most
        self._reported_since = 0.0  # when ``_reported`` was last emptied: a busy server is never without pending
        self._trim = trimmer()
        self._handshakes: set[asyncio.Transport] = set()

    def _at_cap(self, source: str) -> bool:
        """Whether ``source`` has its most pending (a trusted proxy counts to the total only)."""
        trusted = self.trusted_proxies is not None and self.trusted_proxies.allows(source)
        return not trusted and self.per_source[source_key(source)] >= self.max_per_source

    def _uncount(self, key: str) -> None:
        self.per_source[key] -= 1
        if self.per_source[key] <= 0:
            del self.per_source[key]

    def admit(self, source: str, transport: asyncio.BaseTransport) -> Ticket | None:
        if not self.source_later and self._at_cap(source):
            self.refused += 1
            self._report("handshakes_refused", source)
            return None
        if len(self.pending) >= self.max_total:
            oldest = next(iter(self.pending))
            oldest.release()
            oldest.transport.abort()
            self.evicted += 1
            self._report("handshakes_evicted", oldest.source)
        ticket = Ticket(self, source, transport)
        self.pending[ticket] = None
        self.per_source[ticket.key] += 1
        self._burst = max(self._burst, len(self.pending))
        return ticket

    def move(self, ticket: Ticket, source: str) -> bool:
        """A balancer's PROXY header named the connection's real source: count it there. False when that source
        is at its cap (the place is given back; the caller closes the connection)."""
        key = source_key(source)
        if ticket not in self.pending or key == ticket.key:
            return True
        if self._at_cap(source):
            self.refused += 1
            self._report("handshakes_refused", source)
            ticket.release()
            return False
        self._uncount(ticket.key)
        ticket.source, ticket.key = source, key
        self.per_source[key] += 1
        return True

    def _report(self, event: str, source: str) -> None:
        """One line per kind and address, until nothing is pending or a minute has passed, and ``REPORTED_MAX``
        addresses at most (the burst's end counts them all): one line per kind named the first address only, and on
        a busy server, never without a pending connection, no other ever (the README says to raise the per-source
        cap for an address such a line names)."""
        now = time.monotonic()
        if now - self._reported_since > REPORTED_WINDOW:
            self._reported.clear()
            self._reported_since = now
        key = (event, source_key(source))
        if key not in self._reported and len(self._reported) < REPORTED_MAX:
            self._reported.add(key)
            log.warning("event=%s listener=%s remote=%s pending=%d limit=%d per_source_limit=%d",
                        event, logfmt(self.listener), logfmt(source), len(self.pending), self.max_total,
                        self.max_per_source)

    def _release(self, ticket: Ticket) -> None:
        if self.pending.pop(ticket, False) is False:
            return
        self._uncount(ticket.key)
        if not self.pending:
            self._reported.clear()
            if self._burst >= TRIM_AFTER:
                log.info("event=handshake_burst_over listener=%s most_pending=%d evicted=%d refused=%d "
                         "action=memory_returned", logfmt(self.listener), self._burst, self.evicted, self.refused)
                self._burst = 0
                gc.collect()
                if self._trim is not None:
                    self._trim()

    def connection(self, make: Callable[[], asyncio.Protocol], ssl_context: ssl.SSLContext | None) -> asyncio.Protocol:
        """The protocol for a newly accepted socket (websockets' ``create_connection`` hook, or a listener's factory):
        ``make()``'s protocol takes the connection over once TLS is up, with its place (``ticket``), which it gives
        back itself when it has proved something (``ControlConnection.authenticated``, ``FrontConnection`` at its
        first request head) or closes."""
        return _Pending(self, make(), ssl_context)

    def abort_handshakes(self) -> None:
        """On shutdown: drop connections still in their TLS handshake."""
        for transport in list(self._handshakes):
            transport.abort()


_PLAIN_HTTP_BODY = b"This is an inlets tunnel server's TLS port: use https:// (wss:// for inlets clients), not http://\n"


def plain_http_answer(body: bytes) -> bytes:
    """The whole 400 response for plain HTTP sent to a TLS port, then closed."""
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


PLAIN_HTTP_ANSWER = plain_http_answer(_PLAIN_HTTP_BODY)
TLS_HANDSHAKE_RECORD = 0x16
TLS_MAX_RECORD = 16384 + 2048  # a TLS record's payload at most (RFC 5246 6.2.3, ciphertext's)


class _Pending(asyncio.Protocol):
    """The accepted socket's protocol until the caps admit it and TLS is up; then the connection's.

    TLS starts once the first bytes show a TLS handshake record and that record has come
    whole; plain HTTP (a request's method: letters) is answered 400 in words (on the
    control port), anything else closed. The first bytes, and any that come before TLS
    takes over, are kept and fed to the TLS protocol right after its ``connection_made``, before it reads anything else. ``start_tls``
    (asyncio's and uvloop's alike) pauses reading, installs the TLS protocol and schedules
    its ``connection_made`` and the resumption of reading in its first step; a callback
    scheduled one step later runs right after those, and the loop polls the socket only
    after all three.
    """

    def __init__(self, admission: Admission, connection: asyncio.Protocol, ssl_context: ssl.SSLContext | None):
        self.admission = admission
        self.connection = connection
        self.ticket: Ticket | None = None  # this connection's place, until given back or passed on to ``connection``
        self.ssl_context = ssl_context
        #: the bytes before TLS takes over, in one buffer: a list of reads held ~50 bytes per read, and summing
        #: it at each read was quadratic, for a ClientHello trickled a byte a segment (18 KiB of record)
        self.early = bytearray()
        self.transport: asyncio.BaseTransport | None = None
        #: closes a connection whose first TLS record (its ClientHello) has not all come in time
        self.silence: asyncio.TimerHandle | None = None
        self.starting = False  # TLS is starting: bytes that still come here go to it after the first ones

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # uvloop's are no asyncio.Transport
        peer = transport.get_extra_info("peername")
        ticket = self.admission.admit(unmapped(str(peer[0])) if peer else "?", transport)
        if ticket is None:
            transport.abort()
            return
        self.ticket = ticket
        if self.ssl_context is None:
            self._pass_ticket_on()
            transport.set_protocol(self.connection)
            self.connection.connection_made(transport)
            return
        self.transport = transport
        self.admission._handshakes.add(transport)  # type: ignore[arg-type]
        self.silence = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, transport.abort)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:  # only before TLS takes over: ClientHello bytes
        self.early += data
        transport = self.transport
        if transport is None or self.starting:
            return  # TLS is starting: these go to it with the first
        if self.early[0] == TLS_HANDSHAKE_RECORD:
            if self._first_record_whole():
                if self.silence is not None:
                    self.silence.cancel()
                self.starting = True
                self._start_tls(transport)
            return  # else wait for the rest, still within ``silence``
        if self.silence is not None:
            self.silence.cancel()
        if data[:1].isalpha() and self.ticket is not None:
            if self.admission.listener == "control":  # an inlets client given ws://: the operator is told
                PLAINTEXT_ATTEMPTS.seen(self.ticket.source)
            transport.write(self.admission.answer_plain_http)  # type: ignore[attr-defined]
            transport.close()
        else:
            transport.abort()  # type: ignore[attr-defined]

    def _first_record_whole(self) -> bool:
        """Whether the first TLS record (the ClientHello's, mostly all of it) has arrived: TLS starts only then.

        The event loop's TLS layer costs ~90 KiB a connection (measured; asyncio's allocates a 256 KiB read
        buffer) from ``start_tls`` on, where these few bytes cost next to nothing: a peer that sends part of a ClientHello and stalls holds no more than
        one that sends nothing, and both are closed at ``HANDSHAKE_TIMEOUT``. A record's length above TLS's
        limit is left to the TLS layer to refuse."""
        if len(self.early) < 5:  # the record header itself is cut into pieces
            return False
        length = min(int.from_bytes(self.early[3:5], "big"), TLS_MAX_RECORD)
        return len(self.early) >= 5 + length

    def _start_tls(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        handshake = asyncio.ensure_future(loop.start_tls(
            transport, _Decrypted(), self.ssl_context, server_side=True,  # type: ignore[arg-type]
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT, ssl_shutdown_timeout=SHUTDOWN_TIMEOUT))
        loop.call_soon(loop.call_soon, self._feed_early, transport)
        asyncio.ensure_future(self._hand_over(transport, handshake))

    def connection_lost(self, exc: Exception | None) -> None:  # only before the hand-off
        if self.silence is not None:
            self.silence.cancel()
        if self.transport is not None:
            self.admission._handshakes.discard(self.transport)  # type: ignore[arg-type]
        self._give_back()

    def _give_back(self) -> None:
        """The connection has gone or failed before the hand-off: its place is free."""
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None

    def _pass_ticket_on(self) -> None:
        """At the hand-off: the connection keeps the place until it has proved itself (a token, a request head)."""
        self.connection.ticket, self.ticket = self.ticket, None  # type: ignore[attr-defined]

    def _feed_early(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_protocol()
        if transport.is_closing() or not hasattr(tls, "buffer_updated"):  # uvloop's is no BufferedProtocol
            return
        view, self.early = memoryview(self.early), bytearray()  # a new buffer: the old one stays whole under the view
        refused: list[ssl.SSLObject] = []
        reset = REFUSED.set(refused)
        try:
            while view:
                buffer = tls.get_buffer(len(view))
                count = min(len(buffer), len(view))
                buffer[:count] = view[:count]
                tls.buffer_updated(count)
                view = view[count:]
        finally:
            REFUSED.reset(reset)
        if refused:  # its alert is written: closed once sent, not held until the peer closes or the handshake times out
            transport.close()

    async def _hand_over(self, transport: asyncio.BaseTransport, handshake: asyncio.Future) -> None:
        self.admission._handshakes.add(transport)  # type: ignore[arg-type]
        tls = None
        try:
            tls = await handshake
        except Exception:  # noqa: BLE001 - a failed or timed-out handshake, a peer gone
            pass
        finally:
            self.admission._handshakes.discard(transport)  # type: ignore[arg-type]
            # closed meanwhile (evicted, say): asyncio then returns None, uvloop a closing transport
            if tls is None or tls.is_closing() or transport.is_closing():
                transport.abort()  # type: ignore[attr-defined]
                self._give_back()
                tls = None
        if tls is None:
            return
        self._pass_ticket_on()
        decrypted = tls.get_protocol()
        tls.set_protocol(self.connection)
        self.connection.connection_made(tls)
        if isinstance(decrypted, _Decrypted):
            decrypted.hand_over(self.connection)


class _Decrypted(asyncio.Protocol):
    """The TLS layer's protocol until the hand-off: a request may arrive with the handshake's end."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return False  # over TLS, True has no effect but asyncio's warning, once per such connection

    def hand_over(self, connection: asyncio.Protocol) -> None:
        for data in self.data:
            connection.data_received(data)
        if self.eof:
            connection.eof_received()
