"""Streams of idle kept-alive users given up for a request a client refused at its --max-streams (``exchange``)."""

from __future__ import annotations

import heapq

from ..core.session import Session
from .exchange_state import Front
from .leg import LegFailed

#: Idle users' streams given up per refusal (``reclaim_idle_stream``).
RECLAIM_BATCH = 8


def reclaim_idle_stream(front: Front, session: Session) -> bool:
    """A kept-alive user connection keeps its stream between requests, to reuse it: without this, as many
    idle users as the client's --max-streams would have every new user answered 502. The users idle longest
    on the refusing client (up to ``RECLAIM_BATCH``: one scan of the connections serves the refusals that
    follow) give their streams up (a reset: freed at once at both ends, whatever the upstream makes of a
    half-close) and open new ones with their next requests. Scanned only when a client refuses."""
    idle = [(conn.idle_since, id(conn), conn) for conn in front.server.connections
            if conn.exchange is None and conn.idle_since is not None and (leg := conn.leg) is not None
            and leg.session is session and leg.listener is None and leg.usable]
    for _, _, conn in heapq.nsmallest(RECLAIM_BATCH, idle):
        leg, conn.leg = conn.leg, None
        if leg is not None:  # it is: the scan above took only connections with a leg
            leg.abort(LegFailed("idle stream given up for a refused request"))
    return bool(idle)
