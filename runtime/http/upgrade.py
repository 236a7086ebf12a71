"""Connection upgrade passthrough (websockets through the tunnel): after 101, bytes as they are.

Once the upstream switched protocols the proxy stops parsing: the user's bytes go to
the tunnel stream and back unchanged until either side closes, with the same
backpressure as everything else (credit returns once the user's socket took them).
A FIN passes as a FIN (half-close); a side that is gone (a reset, or a TLS user's close: TLS
has no half-close) ends the other with a reset, as the TCP bridge does. A user's reset went
upstream as a clean FIN, an upstream's reached the user as one (a cut stream passed for a whole
one), and after a user left, an upstream that stayed open held the stream for ever.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..core.bridge import reset
from .leg import Leg, LegFailed
from .options import HttpOptions
from .messages import Body, Event, HttpError, RequestHead, ResponseHead, Upgraded
from .write import response_head


class UpgradeGateway(Protocol):
    """The HTTP server as an upgrade sees it: metrics, and the count of open upgrades."""

    upgraded: int

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
    cut = False
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        cut = any(task.exception() is not None for task in done)  # a reset or a lost user on either side
    finally:
        for task in tasks:
            task.cancel()
        front.server.upgraded -= 1
        if cut:
            leg.abort(LegFailed("upgraded connection cut"))
            if front.transport is not None:
                reset(front.transport)
    return False
