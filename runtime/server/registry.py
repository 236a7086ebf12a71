"""Which sessions serve which service, and whose turn is next.

Several clients may advertise the same service: new connections go round robin
across the live ones, and a session that closed is never picked again, so once a
dead client is detected no new connection fails on it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Generic, Iterable, TypeVar

from ..core.bridge import DIAL_TIMEOUT
from ..core.mux import StreamError, StreamLimit

if TYPE_CHECKING:
    from ..core.channel import Channel, StreamHandler
    from ..core.session import Session

S = TypeVar("S")

#: Seconds a client that could not reach its upstream for a service is tried after the others for it; then one user
#: goes to it, and the next one this long after, until a stream shows it reaches its upstream again (``reached``). A
#: blackholed upstream's dial takes 10 s: had the mark just lapsed, every user in those 10 s went to that client.
UNREACHABLE_FOR = 5.0
#: Seconds a client may leave a user's new stream unanswered, no other of its streams for the service answered
#: since, before new users go to the others first: until its dial to a blackholed upstream failed (10 s), half of
#: the users went to it (50 of 100 in 5 s). An upstream slower than this to answer only loses users to the others.
SILENT_FOR = 0.5
#: A stream unanswered for longer was no dial still going (it would have been refused by now): a user and an
#: upstream both silent, which says nothing of the client; the mark is dropped.
SILENT_MOST = DIAL_TIMEOUT + 1.0
#: Response timeouts in a row (the server's --upstream-timeout: 504) from one client's upstream for a host, none of
#: its requests answered between, after which its new requests go to the other clients first: an upstream that
#: accepts and never answers (a hung app) took every other request (20 of 40), its dial acknowledged like any other.
#: A long poll answered within the timeout never counts, however slow; any answer starts the count over.
EJECT_AFTER = 3
#: Seconds such a client is tried after the others for the host (Envoy's outlier detection ejects for 30 s too); then
#: one request goes to it, and the next one this long after, until one is answered.
EJECT_FOR = 30.0
#: Client ids whose marks (unreachable, silent, response timeouts, ejected) are kept once their session left, for its
#: reconnection (``Registry.add``) to take.
MARKS_KEPT = 1024


class Registry(Generic[S]):
    def __init__(self) -> None:
        self._serving: dict[str, list[S]] = {}
        self._turn: dict[str, int] = {}
        self._ids: dict[S, str] = {}  # a session's client id (the hello's), where it sent one
        self._of_id: dict[str, list[S]] = {}  # and the other way round
        #: Marks of a client id's sessions gone, when the last left: a reconnection (SIGHUP, a network blip) is a
        #: new session, and one starting clean took users to a blackholed upstream again (9 of 100 slow, not 3).
        #: A hung client's ejection too: reconnected clean it took 3 more requests to a 504 (3 of 20, not 0).
        #: Each is kept until the time first in its tuple.
        self._left: dict[str, tuple[float, dict[str, float], dict[str, float], dict[str, int], dict[str, float]]] = {}

    def add(self, session: S, services: list[str], client_id: str = "") -> list[str]:
        """Register ``session`` for ``services``; returns the services that are new. ``session`` takes the marks
        of ``client_id``'s other sessions, live or left lately (``inherit``)."""
        if client_id and session not in self._ids:
            left = self._left.pop(client_id, None)
            if left is not None and time.monotonic() <= left[0]:
                inherit(session, *left[1:])  # type: ignore[arg-type]
            same = self._of_id.setdefault(client_id, [])
            for other in same:  # a SIGHUP's new session comes before the old one leaves
                inherit(session, other.unreachable, other.silent,  # type: ignore[attr-defined]
                        other.timeouts, other.ejected)  # type: ignore[attr-defined]
            same.append(session)
            self._ids[session] = client_id
        new = []
        for service in services:
            sessions = self._serving.setdefault(service, [])
            if not sessions:
                new.append(service)
            if session not in sessions:
                sessions.append(session)
        return new

    def remove(self, session: S) -> list[str]:
        """Forget ``session``; returns the services nobody serves any more. Its marks are kept for its client id
        a while (``UNREACHABLE_FOR``, or as long as an ejection lasts; of ``MARKS_KEPT`` ids at most)."""
        client_id = self._ids.pop(session, None)
        if client_id is not None:
            same = self._of_id[client_id]
            same.remove(session)
            if not same:
                del self._of_id[client_id]
            self._keep_marks(client_id, session)
        gone = []
        for service, sessions in list(self._serving.items()):
            if session in sessions:
                sessions.remove(session)
                if not sessions:
                    del self._serving[service]
                    self._turn.pop(service, None)
                    gone.append(service)
        return gone

    def _keep_marks(self, client_id: str, session: S) -> None:
        now = time.monotonic()
        left = self._left
        while left:  # oldest first: the ones gone longest, or past MARKS_KEPT (a later one due first waits its turn)
            oldest = next(iter(left))
            if now <= left[oldest][0] and len(left) < MARKS_KEPT:
                break
            del left[oldest]
        marks = (session.unreachable, session.silent, session.timeouts, session.ejected)  # type: ignore[attr-defined]
        if any(marks):
            # An ejection outlives a reconnection made later than UNREACHABLE_FOR (a client restarted by hand).
            until = max(now + UNREACHABLE_FOR, max(session.ejected.values(), default=0.0))  # type: ignore[attr-defined]
            left.pop(client_id, None)
            left[client_id] = (until, *map(dict, marks))  # type: ignore[assignment]

    def candidates(self, service: str) -> list[S]:
        """Sessions for ``service`` in the order to try them, rotating the start each call. One being asked whether
        it is alive (``Keepalive.probe``: its client id connected again) is left out while another serves ``service``:
        its client likely gave it up, and a user sent there waited for this side's keepalive."""
        sessions = self._serving.get(service)
        if not sessions:
            return []
        turn = self._turn.get(service, 0) % len(sessions)
        self._turn[service] = turn + 1
        ordered = sessions[turn:] + sessions[:turn]
        for session in sessions:  # a plain loop: asked per user connection, and rarely one is probed
            if session.probing:  # type: ignore[attr-defined]
                return [s for s in ordered if not s.probing] or ordered  # type: ignore[attr-defined]
        return ordered

    def took(self, service: str, session: S) -> None:
        """``session`` took the user ``candidates`` ordered: the next turn begins after it. Moving one place per user
        whoever took it gave every turn that began at a client tried last (``open_on_first``) to the one after it: of
        three clients, one upstream down, the other two got 200 and 100 of 300 users."""
        try:
            self._turn[service] = self._serving[service].index(session) + 1
        except (KeyError, ValueError):  # it left meanwhile: the turn stays as it was
            pass

    def services(self) -> list[str]:
        return list(self._serving)

    def sessions_for(self, service: str) -> list[S]:
        return list(self._serving.get(service, []))

    def serves(self, service: str) -> bool:
        """Whether a session serves ``service`` (``sessions_for`` without the copy: looked at per request)."""
        return bool(self._serving.get(service))


def inherit(session: Session, unreachable: dict[str, float], silent: dict[str, float], timeouts: dict[str, int],
            ejected: dict[str, float]) -> None:
    """``session`` is a reconnection of the client these marks were of: it is tried after the others for the same
    services, at most ``UNREACHABLE_FOR`` from now (``EJECT_FOR`` for a host it was ejected from), then by one user at
    a time (``resting``, ``ejected``) until one answers; its response timeouts in a row count on. So a client that
    claims another's id makes that one's next session lose its users for 30 s at most."""
    now = time.monotonic()
    cap = now + UNREACHABLE_FOR
    mine = session.unreachable
    for service, until in unreachable.items():  # one lapsed but not cleared: the next user finds out
        mine[service] = min(cap, max(until, mine.get(service, until)))
    for service, since in silent.items():  # a dial that hangs: its upstream is likely blackholed
        if SILENT_FOR < now - since <= SILENT_MOST:
            mine[service] = cap
    for service, count in timeouts.items():
        session.timeouts[service] = max(count, session.timeouts.get(service, 0))
    cap = now + EJECT_FOR
    for service, until in ejected.items():  # as above: one lapsed but not answered, the next request finds out
        session.ejected[service] = min(cap, max(until, session.ejected.get(service, until)))


def open_on_first(sessions: Iterable[Session], service: str, handler: StreamHandler) -> Channel | str:
    """A stream on the first of ``sessions`` that takes one, in their order; else why none did, the reason the
    TCP and UDP data planes count: ``client_stream_limit`` (a client holds --max-client-streams already),
    ``client_draining`` (GOAWAY either way, until its client has reconnected) or ``no_client``. A client whose
    upstream for ``service`` could not be dialled (``unreachable``) is tried after the others, but for a user now
    and then, and so is one that has not answered a stream for it for ``SILENT_FOR`` (``resting``)."""
    draining = full = 0
    later: list[Session] = []  # at the --max-streams its client sent, or its upstream down: another client first
    for session in sessions:  # one plain loop, then the few at their limit: a generator cost 2.5% per connection
        if session.closed.is_set():
            continue
        if session.mux.at_peer_limit() or ((session.unreachable or session.silent) and resting(session, service)):
            later.append(session)
            continue
        try:
            return session.open_stream(service, handler)
        except StreamLimit:
            full += 1
        except StreamError:
            draining += 1
    for session in later:  # tried anyway: each refuses the stream, as it did before clients sent their limit
        try:
            return session.open_stream(service, handler)
        except StreamLimit:
            full += 1
        except StreamError:
            draining += 1
    return "client_stream_limit" if full else "client_draining" if draining else "no_client"


def opened(session: Session, service: str) -> None:
    """A user's stream for ``service`` went to ``session``: when none was waiting for an answer there, note since
    when one is (a timestamp per session, not a timer per stream; ``resting`` reads it)."""
    silent = session.silent
    if service not in silent:
        silent[service] = time.monotonic()


def unreachable(session: Session, service: str) -> None:
    """``session``'s client could not dial its upstream for ``service``: others take its users for a while."""
    session.unreachable[service] = time.monotonic() + UNREACHABLE_FOR
    session.silent.pop(service, None)  # the dial's answer came: the mark above says what it was


def reached(session: Session, service: str) -> None:
    """A stream to ``session`` for ``service`` shows its client reaches its upstream: it takes its share again."""
    if session.unreachable:
        session.unreachable.pop(service, None)
    if session.silent:
        session.silent.pop(service, None)


def credited(channel: Channel) -> bool:
    """Whether the client granted ``channel`` credit (a WINDOW frame), which it does once its dial to the upstream
    worked (``Multiplexer.acknowledge``): ``on_writable`` comes also when the session's own send buffer drains, which
    says nothing of the client."""
    mux = channel.session.mux
    return mux.send_window(channel.stream_id) + channel.bytes_out > mux.initial_send_window


def timed_out(session: Session, service: str) -> bool:
    """A request to ``session`` for ``service`` got no answer within the upstream timeout: at ``EJECT_AFTER`` in a
    row its client is tried after the others (``ejected``) for ``EJECT_FOR``. True when that began now (to be said)."""
    count = session.timeouts[service] = session.timeouts.get(service, 0) + 1
    if count < EJECT_AFTER:
        return False
    began = service not in session.ejected
    session.ejected[service] = time.monotonic() + EJECT_FOR
    return began


def answered(session: Session, service: str) -> bool:
    """``session``'s upstream answered a request for ``service``: the count of timeouts starts over; True when that
    ends an ejection (to be said). Only an answer does: a hung app's dials are acknowledged too."""
    session.timeouts.pop(service, None)
    return session.ejected.pop(service, None) is not None


def ejected(session: Session, service: str) -> bool:
    """Whether ``session`` is tried after the others for ``service`` after ``EJECT_AFTER`` response timeouts in a row;
    when its time is up one request goes to it, and the next one ``EJECT_FOR`` later, until one is answered."""
    until = session.ejected.get(service)
    if until is None:
        return False
    now = time.monotonic()
    if now < until:
        return True
    session.ejected[service] = now + EJECT_FOR  # the mark holds while this one request finds out
    return False


def resting(session: Session, service: str) -> bool:
    """Whether ``session`` is tried after the others for ``service``; when its time is up one user goes to it, and
    the next one ``UNREACHABLE_FOR`` later (a timestamp, not a timer per refusal: a flood of them made thousands).
    Also while a stream for it has waited more than ``SILENT_FOR`` for the client's first answer (its dial may be
    hanging on a blackholed upstream), and nothing else answered since."""
    now = time.monotonic()
    since = session.silent.get(service)
    if since is not None:
        if now - since > SILENT_MOST:
            del session.silent[service]
        elif now - since > SILENT_FOR:
            return True
    until = session.unreachable.get(service)
    if until is None:
        return False
    if now < until:
        return True
    session.unreachable[service] = now + UNREACHABLE_FOR  # the mark holds while this one user finds out
    return False
