"""Bridge one TCP connection to one tunnel stream, with backpressure both ways.

Implemented as an ``asyncio.Protocol`` that is also the stream's handler: no task
per connection, no copies beyond the socket's own. Backpressure:

- TCP -> tunnel: when the stream has no credit, reading from the socket pauses
  until the peer grants more (``on_writable``).
- tunnel -> TCP: credit is returned only for bytes the kernel took; what waits in the
  transport's buffer keeps its credit until the buffer is empty, so a slow TCP reader
  stalls its own stream and nothing else, and what it holds is what the stream's credit
  allows (the multiplexer's budget counts it). The kernel itself keeps at most
  ``NOTSENT_LOWAT`` bytes not yet sent: without it, a reader that never reads leaves
  megabytes per socket in the kernel's send buffer. On Linux accepted sockets inherit it from
  their listener (``listen.listen`` sets it there once); dialled ones are tuned here.
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import logging
import os
import socket
import ssl
import struct
import sys
from typing import Awaitable, Callable

from .dial_failures import failure_words
from .hosts import authority, tls_name
from .logs import logfmt
from .mux import ResetCode
from .channel import Channel
from .tls import too_old, upstream_verify_failure

log = logging.getLogger("inlets.bridge")

_LINGER_RESET = struct.pack("ii", 1, 0)
NOTSENT_LOWAT = 128 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value; Python 3.11 lacks the name
#: Linux copies TCP_NOTSENT_LOWAT from a listener to each socket it accepts (tests/runtime/test_socket_options.py
#: checks it); elsewhere (a client's --local ports on macOS, say) every accepted socket is tuned as a dialled one is.
LISTENER_TUNES_ACCEPTED = sys.platform.startswith("linux")


def tune_socket(sock: socket.socket | None) -> None:
    """TCP_NOTSENT_LOWAT on every tunnelled socket: on a listener, for every socket it accepts (where
    ``LISTENER_TUNES_ACCEPTED``), and on each dialled one.

    TCP_NODELAY (Nagle costs tens of ms at p99) is already set by the event loop on every TCP
    transport, asyncio's and uvloop's alike (tests/runtime/test_socket_options.py checks both):
    setting it again cost a second setsockopt, which on uvloop's socket stand-in also builds and
    probes a socket object, per connection on each side."""
    if sock is None:
        return
    try:  # a Unix socket refuses it (OSError): no family check, which costs an enum conversion per socket
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    except OSError:
        pass


class TcpBridge(asyncio.Protocol):
    #: True where the socket comes from a ``listen.listen`` listener, which set TCP_NOTSENT_LOWAT for all it
    #: accepts (on Linux): tuning each one again cost a socket object and a system call per connection.
    accepted = False
    #: Called once when the socket ends (a FIN or a reset) before it sent a byte, after the stream sent it some:
    #: an http:// upstream that serves TLS does so. Set by ``dial`` for those who ask; looked at only as a socket ends.
    #: Told ``user_left``: the stream's FIN (a user's, which the server passes on only a second after a whole request)
    #: had gone to the socket first, so its close may answer that FIN (a long poll that stops), not plain HTTP to TLS.
    unanswered: Callable[[bool], None] | None = None
    #: Called instead of ``unanswered`` when the socket ended so while the stream's bytes were still being written to
    #: it: no TLS server, but one that answered early (413, 401) and closed with the body unread, its answer lost.
    cut_sending: Callable[[], None] | None = None
    #: Set by ``dial`` once the TCP connection of a TLS dial is made: a timeout after it is the handshake's.
    handshaking = False

    def __init__(self, channel: Channel | None = None) -> None:
        self.channel = channel
        self.transport: asyncio.Transport | None = None
        self._pending: memoryview | None = None  # socket data waiting for credit
        self._early: list[bytes | memoryview] = []  # stream data that arrived before the socket connected
        self._eof_from_socket = False
        self._eof_sent = False  # FIN passed to the stream
        self._eof_from_stream = False
        self._write_paused = False
        self._write_failed = False  # a write found the socket gone: our bytes were unsent as it ended (``cut_sending``)
        self._unacked = 0
        self._done = False
        self.connecting: asyncio.Task | None = None  # the dial, until it is done (``dial``)

    def attach(self, channel: Channel) -> None:
        self.channel = channel
        channel.handler = self

    # ------------------------------------------------------------ socket side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport
        if self._done:  # the stream was reset while the socket was connecting
            self.abort()
            return
        if not (self.accepted and LISTENER_TUNES_ACCEPTED):
            tune_socket(transport.get_extra_info("socket"))
        # paused while anything waits: credit for what the kernel took
        transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]
        early, self._early = self._early, []
        for data in early:
            self.on_data(data)
        if self._eof_from_stream:
            self._write_eof_to_socket()

    def data_received(self, data: bytes) -> None:
        if self.unanswered is not None:  # it answered: nothing to tell at its end, and no write of ours to watch
            self.unanswered = None
        channel = self.channel
        if channel is None or self._done:
            return
        if self._pending is not None:  # should not happen while paused; keep order anyway
            self._pending = memoryview(bytes(self._pending) + data)
            return
        count = channel.write(data)
        if count < len(data):
            self._pending = memoryview(data)[count:]
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """Pass the FIN on; keep a TCP socket open for the other direction. A TLS transport (https:// upstreams)
        closes anyway, and asking it not to made asyncio and uvloop log a warning at each upstream close."""
        self._eof_from_socket = True
        if self.unanswered is not None:
            self._closed_unanswered()
        if self._pending is None:
            self._send_eof()
        transport = self.transport
        return transport is None or transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._done:
            return
        if exc is not None and self.unanswered is not None:  # a reset (a FIN came by ``eof_received``)
            self._closed_unanswered()
        self._done = True
        if self.channel is not None:
            if self._eof_sent and self._eof_from_stream:
                return
            reason = f"connection lost: {exc}" if exc else "connection closed"
            self.channel.reset(ResetCode.CANCEL, reason)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._unacked and self.channel is not None:
            self.channel.consumed(self._unacked)
            self._unacked = 0

    # ------------------------------------------------------------ stream side

    def on_data(self, data: bytes | memoryview) -> None:
        if self.transport is None:
            if not self._done:
                self._early.append(data)
            return
        self.transport.write(data)
        if self.unanswered is not None and self.transport.is_closing():  # the write failed: the socket ends now
            self._write_failed = True  # (``unanswered`` is cleared at the answer's first byte: no call after it)
        if self._write_paused:
            self._unacked += len(data)
        elif self.channel is not None:
            self.channel.consumed(len(data))

    def on_eof(self) -> None:
        self._eof_from_stream = True
        if self.transport is not None:
            self._write_eof_to_socket()

    def on_reset(self, code: int, reason: str) -> None:
        """The stream is gone: so is its dial. One left running held a socket to its timeout, and a peer that
        opened and reset streams at once (never over --max-streams) held thousands."""
        self._done = True
        if self.connecting is not None and self.transport is None:
            self.connecting.cancel()
        self.abort()

    def on_writable(self) -> None:
        if self._pending is None or self.channel is None or self._done:
            return
        count = self.channel.write(self._pending)
        self._pending = self._pending[count:] if count < len(self._pending) else None
        if self._pending is None:
            if self._eof_from_socket:
                self._send_eof()
            elif self.transport is not None:
                self.transport.resume_reading()

    # ---------------------------------------------------------------- helpers

    def _closed_unanswered(self) -> None:
        """The socket ended: tell ``unanswered`` when it never sent a byte to a stream that sent it some, all of it
        written (a TLS server reads a whole plain request, then closes); ``cut_sending`` when some was still unsent
        (what was written failed, or waits in the transport's buffer)."""
        tell, self.unanswered = self.unanswered, None
        channel = self.channel
        if (tell is not None and channel is not None and channel.bytes_in and not channel.bytes_out
                and self._pending is None):
            if (self._write_paused or self._write_failed) and self.cut_sending is not None:
                self.cut_sending()
            else:
                tell(self._eof_from_stream)

    def _send_eof(self) -> None:
        if self._eof_sent or self.channel is None:
            return
        self._eof_sent = True
        self.channel.write_eof()
        self._maybe_close()

    def _write_eof_to_socket(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        except OSError:  # the peer is already gone: nothing left to half-close
            self.abort()
            return
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._eof_sent and self._eof_from_stream and self.transport is not None:
            self._done = True
            self.transport.close()

    def fail(self) -> None:
        """The socket never came up; the stream is reset by the caller."""
        self._done = True

    def abort(self) -> None:
        """Close with a TCP RST, so the far end learns at once that the stream failed."""
        if self.transport is not None:
            reset(self.transport)


def reset(transport: asyncio.BaseTransport) -> None:
    """Abort with an RST (SO_LINGER 0), not a FIN: the far end must not take what it got for complete."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()  # type: ignore[attr-defined]


DIAL_TIMEOUT = 10.0
_ERRNO_OF = {ConnectionResetError: errno_codes.ECONNRESET, ConnectionAbortedError: errno_codes.ECONNABORTED,
             ConnectionRefusedError: errno_codes.ECONNREFUSED, BrokenPipeError: errno_codes.EPIPE}


def _tls_failure(exc: ssl.SSLError) -> str:
    """An https:// upstream's failed handshake in words: its errno (OpenSSL's 1) read as "Operation not
    permitted" for an upstream that speaks plain HTTP or only TLS below 1.2."""
    code = exc.reason or ""
    if code == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed: the upstream does not speak TLS (for a plain HTTP one use http://)"
    if too_old(exc):
        return "TLS handshake failed: the upstream offers no TLS 1.2 or newer"
    return f"TLS handshake failed: {code.replace('_', ' ').lower() or 'the connection ended'}"


def dial(channel: Channel, host: str, port: int, *, tls: ssl.SSLContext | None = None, label: str = "",
         logger: logging.Logger = log, opener: Callable[..., Awaitable[socket.socket]] | None = None,
         unanswered: Callable[[bool], None] | None = None) -> None:
    """Bridge ``channel`` to a new connection to host:port (TLS with ``tls``); reset the stream if that
    fails, logging why to ``logger`` under ``label`` (default host:port). ``opener`` makes the TCP connection
    when given (``eyeballs.connect_socket`` for names: the loops try a name's addresses in turn, each until it fails),
    called with ``failures=``, a list it notes each address's failure in. ``unanswered`` is called when the
    connection ends before it said a word to what the stream sent it, told whether the stream's FIN had gone to it
    first (``TcpBridge.unanswered``). TLS checks and sends as SNI ``tls_name(host)``: a final dot
    (``api.example.com.``) failed the check, and SNI may carry none.

    One task for the connect and a timer, with a done-callback: not a coroutine around
    ``wait_for``, which adds a task, a future and their steps to every stream opened."""
    bridge = TcpBridge()
    if unanswered is not None:
        bridge.unanswered = unanswered
        bridge.cut_sending = lambda: _cut_sending(logger, label or (host, port))
    bridge.attach(channel)
    loop = asyncio.get_running_loop()
    failures: list | None = [] if opener else None  # each address's failure: said too if the dial times out
    connecting = loop.create_task(_open(bridge, host, port, tls, opener, failures) if opener else loop.create_connection(
        lambda: bridge, host, port, ssl=tls, server_hostname=tls_name(host) if tls else None))
    timer = loop.call_later(DIAL_TIMEOUT, _time_out, bridge)
    bridge.connecting = connecting
    connecting.add_done_callback(
        lambda task: _dialled(task, timer, bridge, channel, label or (host, port), logger, failures))


async def _open(bridge: TcpBridge, host: str, port: int, tls: ssl.SSLContext | None,
                opener: Callable[..., Awaitable[socket.socket]], failures: list | None) -> tuple:
    sock = await opener(host, port, failures=failures)
    if tls is not None:
        bridge.handshaking = True
    return await asyncio.get_running_loop().create_connection(lambda: bridge, sock=sock, ssl=tls,
                                                             server_hostname=tls_name(host) if tls else None)


def _named(where: str | tuple[str, int]) -> str:
    return where if isinstance(where, str) else authority(*where)


def _cut_sending(logger: logging.Logger, where: str | tuple[str, int]) -> None:
    """An upstream closed as the request was still being sent, before a byte came back: said as ``unanswered`` says
    its TLS hint (the same event), once per upstream per ``RepeatLimit`` window. Its early answer (a 413 to a large
    upload) was lost with the reset that its close with the body unread sent, and the user got 502."""
    named = _named(where)
    logger.warning("event=upstream_closed_without_answer upstream=%s hint=%s", logfmt(named),
                   logfmt("it closed the connection while the request was still being sent: it may have answered "
                          "early (413, 401) without reading the body"), extra={"cause": (named, "cut_sending")})


def _time_out(bridge: TcpBridge) -> None:
    """The dial's timer: cancel it, saying so by clearing ``connecting`` (uvloop's clock, whole milliseconds, can
    read before the timer's ``when()`` as it fires: taken for a shutdown's cancel, 1 dial in 8 never reset its stream)."""
    connecting, bridge.connecting = bridge.connecting, None
    if connecting is not None:
        connecting.cancel()


def _dialled(task: asyncio.Task, timer: asyncio.TimerHandle, bridge: TcpBridge, channel: Channel,
             where: str | tuple[str, int], logger: logging.Logger, failures: list | None = None) -> None:
    """The dial ended: bridged, or the stream reset with why, logged under ``where`` (a label, or host and port
    made one only here, on a failure: not at every dial). A name's dial that timed out says its addresses that
    failed before (refused on one while another dropped SYNs)."""
    timer.cancel()
    timed_out, bridge.connecting = bridge.connecting is None, None
    if task.cancelled():
        if not timed_out:
            return  # cancelled at shutdown or by the stream's reset, not by the timer: the stream is reset already
        reason = "dial timed out"
        if bridge.handshaking:  # as the client's connect tells a port that never speaks TLS from one dropping SYNs
            reason = (f"no TLS answer within {DIAL_TIMEOUT:g} s: the upstream accepted the connection but never "
                      "answered the handshake (is it hung? a plain HTTP one waits for a request: use http://)")
        elif failures:
            reason = f"dial timed out; {failure_words(failures)}"
    elif (exc := task.exception()) is None:
        channel.acknowledge()  # the server's sign this client reaches its upstream, before the upstream says a word
        return
    elif isinstance(exc, ssl.SSLCertVerificationError):
        reason = upstream_verify_failure(exc)
    elif isinstance(exc, socket.gaierror):  # the resolver's words: its codes (-2, -3) are no errno ("Unknown error -2")
        reason = exc.strerror or "the name does not resolve"
    elif isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's code (1: "Operation not permitted")
        reason = _tls_failure(exc)
    elif isinstance(exc, OSError):  # the errno's words: asyncio's own strerror repeats the address
        errno = exc.errno or _ERRNO_OF.get(type(exc))  # asyncio's TLS handshake raises ConnectionResetError()
        reason = os.strerror(errno) if errno else exc.strerror or "dial failed"
    else:  # ValueError, UnicodeError: a host name IDNA refuses ("a..b"); anything else is a bug
        reason = "invalid host name"
        if not isinstance(exc, ValueError):
            logger.error("event=dial_failed upstream=%s", logfmt(_named(where)), exc_info=exc)
    named = _named(where)
    logger.info("event=upstream_failed upstream=%s error=%s", logfmt(named), logfmt(reason),
                extra={"cause": (named, reason)})  # each upstream's failure said, however busy another dead one is
    bridge.fail()
    channel.reset(ResetCode.REFUSED, f"upstream {named}: {reason}")  # the peer's log: host:port, not a Python tuple
