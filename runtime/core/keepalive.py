"""The session's keepalive: a dead peer found within ``keepalive`` seconds of its last sign of life.

Apart from ``session.py`` because it is a job of its own, run as one task beside the session's callbacks: it only
reads when the peer last did something (``_last_rx``, which ``Session._on_message`` sets) and, after silence, pings
and aborts the transport. ``Session`` takes it as a mixin, so nothing on the per-message path changes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from websockets.exceptions import ConnectionClosed

from .logs import logfmt
from .wsflow import BoundedConnection

log = logging.getLogger("inlets.session")

#: Seconds a session has to answer the ping ``probe`` sends (its client id connected again) before it is dropped: its
#: client gave it up and reconnected, and users sent to it hung until this side's --keepalive (20 s) found it dead. A
#: live one answers in a round trip; the bound only spares a slow link (its --keepalive bounds it too, if lower).
PROBE_TIMEOUT = 5.0


class Keepalive:
    """``Session``'s watchdog task (``run`` starts it when ``keepalive`` is set)."""

    websocket: BoundedConnection
    name: str
    keepalive: float | None
    closed: asyncio.Event
    _last_rx: float
    _close_reason: str
    #: While ``probe``'s ping waits: the server opens new streams on its client's other sessions (``Registry``).
    probing: bool = False

    async def _watchdog(self) -> None:
        """Detect a dead peer within ``keepalive`` seconds of its last sign of life, even on a stalled TCP connection.

        Our own rather than the websockets library's: its ping waits on a full send
        buffer and then on the closing handshake, so a stalled peer could hang it.
        A message that did something counts as a sign of life, as does an answered ping. After half the
        keepalive of silence a ping goes, and must be answered within what is left of it: a check on a fixed
        beat that found traffic slept a whole beat more, and the ping waited another, up to 1.5x the keepalive.
        """
        assert self.keepalive is not None
        quiet = self.keepalive / 2  # silence after which a ping is sent
        self._last_rx = time.monotonic()
        try:
            while True:
                await asyncio.sleep(max(0.0, self._last_rx + quiet - time.monotonic()))
                silent = time.monotonic() - self._last_rx
                if silent < quiet:
                    continue  # traffic meanwhile: sleep until half the keepalive after it
                try:
                    await asyncio.wait_for(self._ping(), max(0.0, self.keepalive - silent))
                except asyncio.TimeoutError:
                    silent = time.monotonic() - self._last_rx
                    if silent < self.keepalive:
                        continue  # no answer yet, but a message that did something came meanwhile
                    log.warning("event=keepalive_timeout session=%s after=%.1fs keepalive=%gs", self.name, silent,
                                self.keepalive)
                    self._close_reason = "keepalive timeout"
                    self.websocket.transport.abort()
                    return
                self._last_rx = time.monotonic()  # answered: alive now
        except ConnectionClosed:
            return

    def _found_stale(self) -> None:
        """A stream opened after more than ``keepalive`` of silence, as this process sees it: it was stopped (SIGSTOP,
        a suspended VM) or its loop stalled, so the watchdog could not run, and the peer has since given this connection
        up, answered the user (502) or sent the request to another client. What it sent before that waited in the
        socket: acted on now, a POST answered 502 ran all the same, a PUT ran twice, the late one last. Closed here
        as the watchdog would have closed it, nothing more read (our own pings, answered, keep a live one's silence short)."""
        self._drop_stale("stream_open")

    def _drop_stale(self, found: str) -> None:
        """Close the connection now, as the watchdog would have, nothing more read; its streams are reset at once."""
        silent = time.monotonic() - self._last_rx
        log.warning("event=keepalive_timeout session=%s after=%.1fs keepalive=%gs found=%s", self.name, silent,
                    self.keepalive, logfmt(found))
        self._close_reason = "keepalive timeout"
        self.websocket.discard_messages()
        self.websocket.transport.abort()
        self.teardown(self._close_reason)  # type: ignore[attr-defined]  # Session's

    def probe(self) -> asyncio.Task | None:
        """Ask now whether the peer is alive: another session came with its client id, likely its client back after
        giving this connection up, which may never answer again. New streams go elsewhere (``probing``) until a ping
        is answered, within ``PROBE_TIMEOUT``; else it is dropped as a keepalive timeout. The id is the client's
        word, so that is all it does: a live session another repeats the id of is out of rotation for a round trip.
        One probe at a time; None when one is already out or the session is closed."""
        if self.probing or self.closed.is_set():
            return None
        self.probing = True  # from now, not from the task's first step
        return asyncio.ensure_future(self._probe())

    async def _probe(self) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._ping(), min(self.keepalive or PROBE_TIMEOUT, PROBE_TIMEOUT))
            self._last_rx = time.monotonic()
        except asyncio.TimeoutError:
            if self._last_rx <= started and not self.closed.is_set():  # nor a message that did something meanwhile
                self._drop_stale("client_reconnected")
        except ConnectionClosed:
            pass
        finally:
            self.probing = False

    async def _ping(self) -> None:
        pong = await self.websocket.ping()
        await pong
