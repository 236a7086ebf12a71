"""One tunnel client connected to several servers at once (``--url`` repeated): high availability.

The FAQ's topology is a load balancer in front of the data planes of several exit servers;
each server can only forward to the clients connected to it, so a client serves through every
one of them. Each server gets its own TunnelClient (one session, the same services, the same
client id, its own token and its own reconnect loop), so a server that dies or restarts costs
only its own session. Which servers are held is logged at every change.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace
from typing import Callable

from ..core.session import Channel, Session
from .dialer import ClientConfig, TunnelClient

log = logging.getLogger("inlets.client")


class ClientGroup:
    """A TunnelClient per server, run together: the same interface ``run_client`` drives."""

    def __init__(self, configs: list[ClientConfig], on_stream: Callable[[Channel], None]) -> None:
        client_id = configs[0].client_id or uuid.uuid4().hex[:12]  # one client, as every server sees it
        self.clients = [TunnelClient(replace(config, client_id=client_id), on_stream) for config in configs]
        for client in self.clients:
            client.on_change = self._report
        self._held: tuple[str, ...] | None = None

    @property
    def session(self) -> Session | None:
        """A connected session (``--local`` forwards through the first one up)."""
        return next((c.session for c in self.clients if c.session is not None and not c.session.closed.is_set()), None)

    def held(self) -> list[str]:
        """The URLs of the servers this client is connected to now."""
        return [c.config.url for c in self.clients if c.connected.is_set()]

    def _report(self) -> None:
        held = tuple(self.held())
        if held == self._held:
            return
        self._held = held
        missing = [c.config.url for c in self.clients if c.config.url not in held]
        log.info("event=servers held=%d/%d connected=%s missing=%s", len(held), len(self.clients),
                 ",".join(held) or "-", ",".join(missing) or "-")

    async def run_forever(self) -> None:
        """Every server's reconnect loop at once; a fatal error (wrong token, untrusted certificate) ends all."""
        tasks = [asyncio.ensure_future(c.run_forever()) for c in self.clients]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def rotate(self) -> None:
        await asyncio.gather(*(c.rotate() for c in self.clients))

    async def shutdown(self) -> None:
        await asyncio.gather(*(c.shutdown() for c in self.clients))
