"""Connection upgrade passthrough (websockets through the tunnel): after 101, bytes as they are.

Once the upstream switched protocols the proxy stops parsing: the user's bytes go to
the tunnel stream and back unchanged until either side closes, with the same
backpressure as everything else (credit returns once the user's socket took them).
A FIN passes as a FIN (half-close); a side that is gone (a reset, or a TLS user's close: TLS
has no half-close) ends the other with a reset, as the TCP bridge does. A user's reset went
upstream as a clean FIN, an upstream's reached the user as one (a cut stream passed for a whole
one), and after a user left, an upstream that stayed open held the stream for ever. Once one way has ended (a FIN),
the other must carry something every ``upstream_timeout`` seconds (HAProxy's ``timeout client-fin``/``server-fin``):
a user that half-closed to an upstream that ignores FINs held the connection and its stream for ever. A server
that drains cuts what is left once no request is in flight (``HttpTunnelServer.end_upgrades``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ..core.bridge import reset
from ..core.logs import logfmt
from .leg import Leg, LegFailed
from .options import HttpOptions
from .messages import Body, Event, HttpError, RequestHead, ResponseHead, Upgraded
from .write import response_head

log = logging.getLogger("inlets.http")


class UpgradeGateway(Protocol):
    """The HTTP server as an upgrade sees it: metrics, and the count of open upgrades."""

    upgraded: int
    upstream_timeout: float  # how long a half-closed upgraded connection may stay silent
    #: one per upgraded connection: its result ends the connection (the server drains)
    upgrades: set[asyncio.Future[None]]

    def observe(self, status: int, label: str, method: bytes, started: float) -> None: ...


class UpgradeFront(Protocol):
    """The user's connection as an upgrade sees it (``front.FrontConnection`` is one)."""

    @property
    def server(self) -> UpgradeGateway: ...
    transport: asyncio.Transport | None
    fin: bool  # the user sent a FIN (not: its connection was lost without one)

    async def send(self, data: bytes) -> None: ...  # waits while the user's socket is full

    async def next_event(self) -> Event | HttpError | None: ...  # the user's next bytes; None once closed


async def switch_protocols(front: UpgradeFront, head: RequestHead, response: ResponseHead, leg: Leg,
                           options: HttpOptions, label: str, started: float) -> bool:
    """Answer 101 and bridge both ways until both are done; returns False (the connection ends after)."""
    front.server.upgraded += 1  # before the 101 goes: a user who has it is counted (the finally below undoes it)
    try:
        await front.send(response_head(response, options, False, False, upgrade=True))
    except ConnectionError:
        front.server.upgraded -= 1
        raise
    front.server.observe(101, label, head.method, started)

    async def up() -> None:
        while (event := await front.next_event()) is not None:
            if type(event) is Upgraded and event.tail:  # type: ignore[union-attr]
                await leg.write(event.tail)  # type: ignore[union-attr]
            elif type(event) is Body:
                await leg.write(event.data)  # type: ignore[union-attr]
        if front.fin:
            leg.channel.write_eof()
        transport = front.transport
        if (transport is None or not transport.can_write_eof()) and not downstream_done:
            # the user is gone, not half-closed (TLS closes at the user's FIN): nothing more can reach it
            raise ConnectionResetError("user went away")

    downstream_done = False

    async def down() -> None:
        nonlocal downstream_done
        while (event := await leg.next_event()) is not None:
            data = event.tail if type(event) is Upgraded else getattr(event, "data", b"")  # type: ignore[union-attr]
            if data:
                await front.send(data)
            leg.release()
        downstream_done = True
        transport = front.transport
        if transport is not None:
            if transport.can_write_eof():
                transport.write_eof()
            else:  # TLS (the HTTPS front) has no half-close: without this the user never learns the upstream left
                transport.close()

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    front.server.upgrades.add(stop)
    cut = False
    try:
        while not cut and not all(task.done() for task in tasks):
            wait: float | None = None
            if any(task.done() for task in tasks):  # one way ended with a FIN: the other must keep moving
                timeout = front.server.upstream_timeout
                wait = leg.last_activity + timeout - loop.time()
                if wait <= 0 and front.drain is None:  # (a user whose socket is full: the send timeout's)
                    log.info("event=upgrade_idle host=%s reason=%s", logfmt(label or "-"),
                             logfmt(f"one side closed and nothing moved for {timeout:g}s"))
                    cut = True
                    break
                wait = max(wait, timeout / 20)
            await asyncio.wait([*(task for task in tasks if not task.done()), stop], timeout=wait,
                               return_when=asyncio.FIRST_COMPLETED)
            # a reset or a lost user on either side, or the server stopping
            cut = stop.done() or any(task.done() and task.exception() is not None for task in tasks)
    finally:
        for task in tasks:
            task.cancel()
        front.server.upgrades.discard(stop)
        front.server.upgraded -= 1
        if cut:
            leg.abort(LegFailed("upgraded connection cut"))
            if front.transport is not None:
                reset(front.transport)
    return False
