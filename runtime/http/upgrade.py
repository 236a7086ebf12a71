"""Connection upgrade passthrough (websockets through the tunnel): after 101, bytes as they are.

Once the upstream switched protocols the proxy stops parsing: the user's bytes go to
the tunnel stream and back unchanged until either side closes, with the same
backpressure as everything else (credit returns once the user's socket took them).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .http_leg import Leg
from .http_options import HttpOptions
from .http_proto import Body, RequestHead, ResponseHead, Upgraded

if TYPE_CHECKING:
    from .http_proxy import FrontConnection


async def switch_protocols(front: FrontConnection, head: RequestHead, response: ResponseHead, leg: Leg,
                           options: HttpOptions, label: str, started: float) -> bool:
    """Answer 101 and bridge both ways until both are done; returns False (the connection ends after)."""
    await front._send(front._response_head(response, options, False, False, upgrade=True))
    front.server.observe(101, label, head.method, started)
    front.server.upgraded += 1

    async def up() -> None:
        while (event := await front._next()) is not None:
            if type(event) is Upgraded and event.tail:  # type: ignore[union-attr]
                await leg.write(event.tail)  # type: ignore[union-attr]
            elif type(event) is Body:
                await leg.write(event.data)  # type: ignore[union-attr]
        leg.channel.write_eof()

    async def down() -> None:
        while (event := await leg.next_event()) is not None:
            data = event.tail if type(event) is Upgraded else getattr(event, "data", b"")  # type: ignore[union-attr]
            if data:
                await front._send(data)
            leg.release()
        transport = front.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

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
