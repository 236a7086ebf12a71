"""Connection upgrade passthrough (websockets through the tunnel): after 101, bytes as they are.

Once the upstream switched protocols the proxy stops parsing: the user's bytes go to
the tunnel stream and back unchanged until either side closes, with the same
backpressure as everything else (credit returns once the user's socket took them).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .leg import Leg
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

    async def send(self, data: bytes) -> None: ...  # waits while the user's socket is full

    async def next_event(self) -> Event | HttpError | None: ...  # the user's next bytes; None once closed


async def switch_protocols(front: UpgradeFront, head: RequestHead, response: ResponseHead, leg: Leg,
                           options: HttpOptions, label: str, started: float) -> bool:
    """Answer 101 and bridge both ways until both are done; returns False (the connection ends after)."""
    await front.send(response_head(response, options, False, False, upgrade=True))
    front.server.observe(101, label, head.method, started)
    front.server.upgraded += 1

    async def up() -> None:
        while (event := await front.next_event()) is not None:
            if type(event) is Upgraded and event.tail:  # type: ignore[union-attr]
                await leg.write(event.tail)  # type: ignore[union-attr]
            elif type(event) is Body:
                await leg.write(event.data)  # type: ignore[union-attr]
        leg.channel.write_eof()

    async def down() -> None:
        while (event := await leg.next_event()) is not None:
            data = event.tail if type(event) is Upgraded else getattr(event, "data", b"")  # type: ignore[union-attr]
            if data:
                await front.send(data)
            leg.release()
        transport = front.transport
        if transport is not None:
            if transport.can_write_eof():
                transport.write_eof()
            else:  # TLS (the HTTPS front) has no half-close: without this the user never learns the upstream left
                transport.close()

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.exception()  # retrieved: a reset on either side just ends the bridge
    finally:
        for task in tasks:
            task.cancel()
        front.server.upgraded -= 1
    return False
