"""One tunnel client connected to several servers at once (``--url`` repeated): high availability.

The FAQ's topology is a load balancer in front of the data planes of several exit servers;
each server can only forward to the clients connected to it, so a client serves through every
one of them. Each server gets its own TunnelClient (one session, the same services, the same
client id, its own token and its own reconnect loop), so a server that dies or restarts costs
only its own session. Which servers are held is logged at every change.

A server that refuses this client (a wrong token: HTTP 401, an untrusted certificate) ends only
its own session: that is logged in one line saying what to fix, it is tried again every
``FATAL_RETRY`` seconds (or at once on SIGHUP, after the fix) while the others keep serving,
and the client exits only when every server has refused it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace
from typing import Callable

from ..core.logs import logfmt
from ..core.channel import Channel
from ..core.session import Session
from .dialer import ClientConfig, FatalClientError, TunnelClient

log = logging.getLogger("inlets.client")

#: Seconds between tries of a server that refused this client: slow, since it takes a fix on one side.
FATAL_RETRY = 60.0


class ClientGroup:
    """A TunnelClient per server, run together: the same interface ``run_client`` drives."""

    def __init__(self, configs: list[ClientConfig], on_stream: Callable[[Channel], None],
                 fatal_retry: float = FATAL_RETRY) -> None:
        client_id = configs[0].client_id or uuid.uuid4().hex[:12]  # one client, as every server sees it
        self.clients = [TunnelClient(replace(config, client_id=client_id), on_stream) for config in configs]
        for client in self.clients:
            client.on_change = self._report
        self._held: tuple[str, ...] | None = None
        self.fatal_retry = fatal_retry
        self.refused: dict[str, str] = {}  # URL -> why that server refused this client, until it admits it
        self._retry_now = asyncio.Event()  # SIGHUP: try the servers that refused at once

    @property
    def session(self) -> Session | None:
        """A session new streams can take (``--local`` forwards through the first one): not a draining server's,
        which refused them while another server was there to take them."""
        return next((c.session for c in self.clients if c.serving), None)

    def held(self) -> list[str]:
        """The URLs of the servers this client serves through now: a draining one (GOAWAY) no longer counts."""
        return [c.config.url for c in self.clients if c.connected.is_set() and c.serving]

    def _report(self) -> None:
        held = tuple(self.held())
        for url in held:
            self.refused.pop(url, None)
        if held == self._held:
            return
        self._held = held
        missing = [c.config.url for c in self.clients if c.config.url not in held]
        log.info("event=servers held=%d/%d connected=%s missing=%s", len(held), len(self.clients),
                 logfmt(",".join(held) or "-"), logfmt(",".join(missing) or "-"))

    async def run_forever(self) -> None:
        """Every server's reconnect loop at once; ends (FatalClientError) only when every server refused this client."""
        tasks = [asyncio.ensure_future(self._hold(c)) for c in self.clients]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _hold(self, client: TunnelClient) -> None:
        url = client.config.url
        while True:
            try:
                return await client.run_forever()
            except FatalClientError as exc:
                error = str(exc)
                self.refused[url] = error if error.startswith(url) else f"{url}: {error}"
            if len(self.refused) == len(self.clients):
                raise FatalClientError("every server refused this client: " + "; ".join(self.refused.values()))
            others = [other for other in self.held() if other != url]
            now = (f"serving through {', '.join(others)}" if others else
                   "no other server holds this client now, so users are not served until one does")
            log.error("event=server_refused url=%s error=%s retry_in=%.0fs next=%s", logfmt(url),
                      logfmt(error.removeprefix(f"{url}: ")), self.fatal_retry,  # "URL answers ...": kept whole
                      logfmt(f"{now}; fix this one (the token file and --tls-ca are re-read at each try), "
                             "then send SIGHUP to try it at once"))
            self._report()
            try:
                await asyncio.wait_for(self._retry_now.wait(), self.fatal_retry)
            except asyncio.TimeoutError:
                pass
            self.refused.pop(url, None)  # tried again: failed only if it refuses again
            log.info("event=server_retry url=%s", logfmt(url))

    def reconnect_now(self) -> None:
        """A --local user waits for the tunnel: every server not held is tried now, not at the end of its backoff."""
        for client in self.clients:
            client.reconnect_now()

    async def rotate(self) -> None:
        """SIGHUP: reconnect make-before-break to the servers held, and try the ones that refused at once."""
        self._retry_now.set()
        self._retry_now = asyncio.Event()
        await asyncio.gather(*(c.rotate() for c in self.clients if c.config.url not in self.refused))

    async def shutdown(self) -> None:
        await asyncio.gather(*(c.shutdown() for c in self.clients))
