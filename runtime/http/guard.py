"""Basic auth and bearer tokens belong to the host name, not to the client that declared them.

Several clients may serve one name, and clients come and go. Protection must not
depend on which of them a request meets: while any client serving a name declared
protection, every request for the name must pass it (any declared credential will
do), and no upstream ever sees that credential. When the protecting clients leave
and no client serves the name, their protection stays: requests for the name get
503 (after 401 without the credential), never the catch-all's answer with the
credential forwarded. A client that serves the name without protection while no
protecting client is connected lifts it: at once when it connects, PROTECTION_GRACE
after the last protecting client left when it still serves the name then (that client
may be restarting). Serving a name is what every client, holding the tunnel's token,
is trusted with. Kept protections of names no client serves are bounded
(MAX_LEFT, the oldest forgotten first): every client may declare 1,024 names, and
300 clients that each declared new ones and left took the server from 29 to 189 MiB.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Hashable

from ..core.logs import logfmt
from ..core.services import shown_service
from ..server.ratelimit import FailedLoginLimiter
from .options import HttpOptions

log = logging.getLogger("inlets.http")

#: Names whose protection is kept after their last protecting client left (each a few hundred bytes).
MAX_LEFT = 4096
#: How long a name stays protected after its last protecting client left while a client serving it without protection
#: is connected. Leaving is also a restart or an upgrade: the client drains (GOAWAY) and comes back within its reconnect
#: backoff (0.5 s doubling to 30 s). Lifted at once, the unprotected client served the site to anyone without
#: credentials until it was back.
PROTECTION_GRACE = 30.0


class Protection:
    """The protections declared for one name: by the clients connected now, else by the last to leave."""

    def __init__(self) -> None:
        self.declared: dict[Hashable, HttpOptions] = {}
        self.left: list[HttpOptions] = []  # the protection of the last client to leave, kept

    @property
    def options(self) -> list[HttpOptions]:
        return list(self.declared.values()) or self.left

    def authorized(self, authorization: bytes | None) -> bool:
        """Whether the ``Authorization`` value passes one of them (each compared in constant time, all tried)."""
        ok = False
        for options in self.options:
            ok |= options.authorized(authorization)
        return ok

    def challenges(self) -> list[tuple[bytes, bytes]]:
        return sorted({options.challenge() for options in self.options})


class Guards(dict[str, Protection]):
    """``http:NAME`` (or ``http:*``) -> its ``Protection``, for the names a client declared protected.
    A dict, so that the lookup on every request costs what a dict's does."""

    def __init__(self, max_left: int = MAX_LEFT) -> None:
        super().__init__()
        self.max_left = max_left
        self._left: dict[str, None] = {}  # names kept with only ``left``, oldest first
        self._sessions: dict[Hashable, list[str]] = {}  # what each client declared protected: release looks there only
        #: Names (all among ``_left``, so bounded with them) lifted at the deadline unless a protecting client is back,
        #: soonest first, with the client that left; one timer for them all, set for the soonest.
        self._grace: dict[str, tuple[float, Hashable]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._forgotten, self._forgotten_said = 0, 0.0
        #: Wrong credentials per user address, counted as the control port counts wrong tokens: one connection
        #: tried 10,000 passwords a second, each a 401, where the control port answers 429 after 10 a minute.
        self.failures = FailedLoginLimiter()

    def refusal(self, protection: Protection, authorization: bytes | None, source: bytes) -> int | None:
        """None when ``authorization`` passes; else 401, or 429 once ``source`` has sent too many wrong ones. A
        request without one (a browser's first) is no failed guess. While ``source`` is limited, every credential
        it sends is 429, the right one too: passing the right one told a guesser which it was (3,000 a second)."""
        if authorization is None:  # a protected name: its challenge
            return 401
        if self.limited(source):
            return 429
        if protection.authorized(authorization):
            return None
        where = source.decode(errors="replace")
        if self.failures.failed(where):  # once per window per source
            log.warning("event=auth_rate_limited source=%s failures=%d window=%.0fs", logfmt(where),
                        self.failures.limit, self.failures.window)
        return 401

    def limited(self, source: bytes) -> bool:
        """Whether ``source`` sent too many wrong credentials this window (none of its credentials passes)."""
        return self.failures.blocked(source.decode(errors="replace"))

    def admit(self, session: Hashable, services: list[str], options: HttpOptions) -> None:
        lifted = []
        for service in services:
            protection = self.get(service)
            if options.protected:
                if protection is None:
                    protection = self[service] = Protection()
                protection.declared[session] = options
                protection.left = []
                self._left.pop(service, None)
                self._grace.pop(service, None)  # a protecting client is back (say, restarted): nothing to lift
                self._sessions.setdefault(session, []).append(service)
            elif protection is not None and not protection.declared:
                del self[service]
                self._left.pop(service, None)
                self._grace.pop(service, None)
                lifted.append(service)
        if lifted:  # said: an operator saw a password prompt go, or a 503 turn into the site, with no word why
            _said("protection_lifted", session, lifted, "a client serving these names without protection connected, "
                  "while none that protects them was")

    def release(self, session: Hashable, served: Callable[[str], bool]) -> None:
        """``session`` left (or drains); ``served``: whether a client still serves a name, ``session`` no longer
        counted. A name still served when its last protecting client leaves is served without protection only, but
        that client may be restarting (a drain, an upgrade): kept for PROTECTION_GRACE, then lifted unless a
        protecting client is back (lifted at once, the site answered anyone without credentials meanwhile)."""
        kept, graced = [], []
        for service in self._sessions.pop(session, ()):
            protection = self.get(service)
            if protection is None:  # lifted meanwhile by a client serving it unprotected
                continue
            options = protection.declared.pop(session, None)
            if options is None or protection.declared:
                continue
            protection.left = [options]
            self._left[service] = None
            self._grace.pop(service, None)  # at most one deadline per name: the latest leave's
            (graced if served(service) and not self._closed else kept).append(service)
        if kept:
            _said("protection_kept", session, kept, "the last client protecting these names left and none serves "
                  "them: they still ask for its credentials (503 once given) until a client serves them, one without "
                  "protection lifting it")
        if graced:
            loop = asyncio.get_running_loop()
            when = loop.time() + PROTECTION_GRACE
            self._grace.update(dict.fromkeys(graced, (when, session)))
            if self._timer is None:  # else one is set for a sooner deadline, and sets the next
                self._timer = loop.call_at(when, self._lift_due, served)
            _said("protection_kept", session, graced, "the last client protecting these names left while a client "
                  "serving them without protection is connected: they still ask for its credentials for "
                  f"{PROTECTION_GRACE:g}s, as it may be restarting, then are lifted unless a client protecting them "
                  "is back")
        while len(self._left) > self.max_left:  # the oldest kept goes: its name falls back to the catch-all
            oldest = next(iter(self._left))
            del self._left[oldest], self[oldest]
            self._grace.pop(oldest, None)
            self._forgotten += 1
        if self._forgotten and time.monotonic() - self._forgotten_said >= 60:
            self._forgotten_said = time.monotonic()
            log.warning("event=protection_forgotten names=%d kept=%d reason=%s", self._forgotten, self.max_left,
                        logfmt("more protected names than kept were left by their clients: the oldest no longer "
                               "get 401"))
            self._forgotten = 0

    def _lift_due(self, served: Callable[[str], bool]) -> None:
        """The grace of the soonest names ended: lifted where no protecting client is back and a client serves them
        (served by none now, they stay kept, as any name whose last client left); the timer set for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        lifted: dict[Hashable, list[str]] = {}
        while self._grace:
            service, (when, session) = next(iter(self._grace.items()))
            if when > loop.time():
                self._timer = loop.call_at(when, self._lift_due, served)
                break
            del self._grace[service]
            protection = self.get(service)
            if protection is not None and not protection.declared and served(service):
                del self[service]
                self._left.pop(service, None)
                lifted.setdefault(session, []).append(service)
        for session, services in lifted.items():
            _said("protection_lifted", session, services, "the last client protecting these names left "
                  f"{PROTECTION_GRACE:g}s ago and none is back, while a client serving them without protection is "
                  "connected")

    def close(self) -> None:
        """The server stops: nothing is lifted after it (the pending lifts are dropped, names left now are kept)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._grace.clear()


def _said(event: str, session: Hashable, services: list[str], why: str) -> None:
    """One line for a client's names, however many (a client may declare 1,024), naming the first."""
    log.info("event=%s client=%s names=%d first=%s note=%s", event, logfmt(str(getattr(session, "name", session))),
             len(services),
             logfmt(shown_service(services[0])), logfmt(why))
