"""`inlets http server`: a Host-routed reverse proxy whose upstreams are tunnel clients.

Clients advertise ``http:NAME`` services (``http:*`` for the catch-all) and their
options (``options``); the data plane (``front``) routes each request by
Host to an exact name, then the catch-all, round robin across the clients serving
it; a name some client protected never falls through to the catch-all
(``guard``). The control plane is the one every mode shares, plus ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

from ..core.logs import logfmt
from ..server.admission import PUBLIC_MAX_PER_SOURCE, PUBLIC_MAX_TOTAL, Admission
from ..server.control import ControlConfig, ControlPlane
from ..server.dataplane import DataPlaneOptions
from ..core.listen import listen_as
from ..core.handshake import CLOSE_SERVICE_REFUSED, HandshakeError, Hello
from ..core.services import CATCH_ALL, http_service, parse_http_service, shown_service
from .guard import Guards
from .options import HttpOptions, OptionError
from .leg import Leg
from .front import FrontConnection
from ..server.metrics import OTHER, HttpMetrics
from ..server.registry import Registry
from ..core.bridge import reset
from ..core.session import Session
from ..server.status import status_route

if TYPE_CHECKING:
    from ..acme.https_front import HttpsFront

log = logging.getLogger("inlets.http")

#: Linux's ``struct tcp_info`` up to ``tcpi_bytes_acked`` (Linux 4.1+), a u64 at offset 120; a shorter answer (an
#: older kernel) or another system (FreeBSD's TCP_INFO is another struct) leaves the write buffer's rule alone.
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_BYTES_ACKED = struct.Struct("=120xQ")


class HttpTunnelServer:
    def __init__(
        self,
        config: ControlConfig,
        port: int = 8000,
        data_addr: str | None = None,
        upstream_timeout: float = 60.0,
        idle_timeout: float = 75.0,
        header_timeout: float = 20.0,
        https: HttpsFront | None = None,
        dataplane: DataPlaneOptions | None = None,
        pending: tuple[int, int] = (PUBLIC_MAX_TOTAL, PUBLIC_MAX_PER_SOURCE),  # --max-pending-connections(-per-source)
    ) -> None:
        self.port = port
        self.dataplane = dataplane or DataPlaneOptions()  # --allow-ips (403), --lb-proxy-protocol
        self.https = https  # Let's Encrypt: HTTPS on its port, redirects and HTTP-01 on ``port``
        self.data_addr = data_addr or None
        self.upstream_timeout = upstream_timeout
        self.idle_timeout = idle_timeout  # a kept-alive user connection with no request closes after this
        self.header_timeout = header_timeout  # a request head begun must be complete within this (slowloris)
        self.connections: set[FrontConnection] = set()
        # a --trusted-proxies balancer counts to the total only; behind --lb-proxy-protocol the source its header names
        self.admission = Admission(*pending, config.trusted_proxies, listener="data",
                                   source_later=bool(self.dataplane.lb_proxy_protocol))
        self.registry: Registry[Session] = Registry()
        self.options: dict[Session, HttpOptions] = {}
        self.guards = Guards()  # basic auth / bearer protection, per host name
        self.trusted_proxies = config.trusted_proxies  # wrong credentials count against whom these forwarded for
        self.upgraded = 0  # connections switched to another protocol (websockets) right now
        self.upgrades: set[asyncio.Future[None]] = set()  # each one's end (``end_upgrades``)
        self.control = ControlPlane("http", config, self._admit, self._release)
        self.metrics = HttpMetrics(lambda: len(self.control.clients), self.control.serves)
        self.metrics.certificate_end = config.certificate_end
        self.metrics.upgraded = lambda: self.upgraded
        config.routes.setdefault("/metrics", self.metrics.route)
        config.routes.setdefault("/status", status_route(self.control))
        config.on_request = self.metrics.control_request
        self._default_options = HttpOptions()
        self._listener: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.exchanges: set[Leg] = set()  # requests waiting on an upstream, for the timeout sweep
        self._sweeper: asyncio.Task | None = None
        self.draining = False  # SIGTERM: answers say Connection: close, users between requests are closed

    async def start(self) -> None:
        """Control plane, then the data plane; ``OSError`` (say, port taken) leaves nothing running."""
        self._loop = asyncio.get_running_loop()
        await self.control.start()
        try:
            if self.https is not None:
                self._listener = await self.https.start(self)
            else:
                self._listener = await listen_as("data", lambda: self.admission.connection(lambda: FrontConnection(self), None),
                                                 self.data_addr, self.port)
        except OSError:
            await self.control.stop()
            raise
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def drain(self, timeout: float) -> None:
        """Graceful stop: accept no new users or clients; requests in flight get ``timeout`` seconds, then their
        connections close. A kept-alive user between requests held its stream open, so the drain took its whole
        timeout (30 s with the data port closed) and then cut the user: such users are closed now (the sweep
        closes those that answers leave idle), as nginx does on a graceful stop. Upgraded connections (websockets)
        never finish by themselves: they are cut once no request is in flight (``end_upgrades``)."""
        self.draining = True
        if self._listener is not None:
            self._listener.close()
        self._close_idle()
        self.end_upgrades()
        await self.control.drain(timeout)
        await self.stop()

    async def stop(self) -> None:
        self.guards.close()  # no protection is lifted by a timer after the server stopped
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.close()
        if self.https is not None:
            await self.https.stop()
        await self.control.stop()

    @property
    def data_port(self) -> int:
        assert self._listener is not None and self._listener.sockets
        return self._listener.sockets[0].getsockname()[1]

    # ------------------------------------------------------------ data plane

    async def _sweep(self) -> None:
        """Time out exchanges where nothing moved for ``upstream_timeout``, users who take nothing for as long,
        and idle keep-alive connections: one timer for all (a timer per request costs as much as routing it).
        Also drops the metric series of hosts unserved past their grace. Each timeout fires within 5% of its
        length (at most a second) after it: with --upstream-timeout 2 a 504 came up to 0.5 s late."""
        assert self._loop is not None
        interval = min(1.0, self.upstream_timeout / 20, self.idle_timeout / 20, self.header_timeout / 20)
        while True:
            await asyncio.sleep(interval)
            now = self._loop.time()
            if self.metrics.unserved:
                self.metrics.expire(now)
            if self.draining:  # an answer begun before the drain left its user kept alive
                self._close_idle()
                self.end_upgrades()
            deadline = now - self.upstream_timeout
            # An upstream is not late while the user's socket is full: the proxy holds its credit back then
            for leg in [leg for leg in self.exchanges if leg.last_activity <= deadline
                        and (leg.listener is None or leg.listener.drain is None)]:
                self.exchanges.discard(leg)
                leg.fire_timeout()
            for conn in [c for c in self.connections if c.drain is not None]:  # the proxy's own answers too
                self._check_sending(conn, now, deadline)
            slow = now - self.header_timeout
            for conn in [c for c in self.connections if c.idle_since is not None and _head_late(c, slow)]:
                self.connections.discard(conn)
                conn.header_timed_out()
            idle = now - self.idle_timeout
            # a head begun is the header timeout's from its first byte, as nginx's keepalive_timeout ends there: it
            # closed one begun 7 s into an 8 s wait, the request lost and no 408 sent
            for conn in [c for c in self.connections if c.idle_since is not None and c.idle_since <= idle
                         and _no_head_begun(c)]:
                self.connections.discard(conn)
                if conn.transport is not None:
                    conn.transport.close()

    def _close_idle(self) -> None:
        """Close the users waiting between requests, with no request begun (a closed idle connection is one any
        HTTP client expects: it sends its next request on a new one)."""
        for conn in [c for c in self.connections if c.exchange is None and c.idle_since is not None
                     and _no_head_begun(c)]:
            self.connections.discard(conn)
            if conn.transport is not None:
                conn.transport.close()

    def end_upgrades(self) -> None:
        """Draining, with no request left in flight: cut the upgraded connections (a reset both ways, as at the drain's
        timeout). A websocket never ends by itself, so the drain waited its whole --drain-timeout (30 s) for them,
        then cut them anyway; Caddy closes them at once at a reload. Requests still in flight keep them a while."""
        if self.upgrades and not any(conn.exchange is not None for conn in self.connections):
            for stop in self.upgrades:
                if not stop.done():
                    stop.set_result(None)

    def _check_sending(self, conn: FrontConnection, now: float, deadline: float) -> None:
        """The user's socket is full: one who reads, however slowly, is waited for (nginx's send_timeout); one
        who took nothing since ``deadline`` is cut with a reset (a close would wait for the unread bytes). Reading is
        the write buffer shrinking or, when it did not, the kernel's send queue draining (``_took_more``)."""
        transport = conn.transport
        if transport is None:
            return
        size = transport.get_write_buffer_size()
        if size < conn.unsent or _took_more(conn, transport):
            conn.stalled_since = now
        conn.unsent = size
        if conn.stalled_since <= deadline:
            self.connections.discard(conn)
            log.info("event=send_timeout source=%s unsent=%d reason=%s", logfmt(conn.peer.decode(errors="replace")),
                     size, logfmt(f"the user took none of the answer for {self.upstream_timeout:g}s"))
            reset(transport)

    def route(self, host: str) -> tuple[str | None, str]:
        """(service to use or None, metrics label): exact name (served or protected), then the catch-all."""
        service = f"http:{host}"
        if self.registry.serves(service):
            return service, host
        label = host if self.metrics.remembers(host) else OTHER  # its own label for the grace after its last client
        if service in self.guards:  # protected, served by no client now (401, then 503); past the grace no label of
            return service, label  # its own: ``forget_host`` dropped its series, and nothing would drop them again
        if self.registry.serves(CATCH_ALL):
            return CATCH_ALL, label
        return None, label

    def options_for(self, session: Session) -> HttpOptions:
        return self.options.get(session, self._default_options)

    def observe(self, status: int, label: str, method: bytes, started: float, own: bool = False) -> None:
        """Count a request that began at ``started`` (``time.monotonic()``); ``own``: the proxy made the answer.
        Not the loop's clock: uvloop's is whole milliseconds, read at the start of each loop iteration, which put
        0.4 ms requests in the 2.5 ms bucket and left the sub-millisecond buckets empty or full by chance."""
        self.metrics.observe(status, label or OTHER, method, time.monotonic() - started, own)

    # ------------------------------------------------------------ control plane

    async def _admit(self, session: Session, hello: Hello) -> list[str]:
        if not hello.services:
            raise HandshakeError(CLOSE_SERVICE_REFUSED, "the client advertised no HTTP upstreams")
        services = [http_service(parse_http_service(s)) for s in hello.services]
        try:
            options = HttpOptions.from_extra(hello.extra)
        except OptionError as exc:
            raise HandshakeError(CLOSE_SERVICE_REFUSED, f"bad HTTP options: {exc}") from None
        unknown = set(options.rewrite_host) - set(services)
        if unknown:
            raise HandshakeError(CLOSE_SERVICE_REFUSED, f"rewrite_host names services not advertised: {sorted(unknown)}")
        self.options[session] = options
        self.guards.admit(session, services, options)
        self.registry.add(session, services, hello.client_id)
        for service in services:
            self.metrics.host_served(service.partition(":")[2])
        return services

    def _release(self, session: Session) -> None:
        """The client drains (GOAWAY) or left: no new requests for it. Kept-alive users' idle streams to it end now
        (half-closed): a client's SIGTERM waited for them, as for requests in flight, its whole --drain-timeout."""
        for conn in [c for c in self.connections if c.exchange is None and c.idle_since is not None
                     and (leg := c.leg) is not None and leg.session is session and leg.usable]:  # not an upgraded one
            leg, conn.leg = conn.leg, None
            if leg is not None:
                leg.finish()
        self.options.pop(session, None)
        gone = self.registry.remove(session)
        self.guards.release(session, self.registry.serves)  # after remove: only the other clients count as serving
        for service in gone:
            host = service.partition(":")[2]
            if host != "*":
                self.metrics.host_unserved(host, self._loop.time() if self._loop else 0.0)
            log.info("event=no_clients service=%s", logfmt(shown_service(service)))


def _took_more(conn: FrontConnection, transport: asyncio.Transport) -> bool:
    """The user acknowledged bytes since the sweep last asked (TCP_INFO's ``tcpi_bytes_acked``). The kernel's send
    queue drains first, and the socket stays unwritable until it is nearly empty: the write buffer of a user reading
    32 KiB/s did not shrink for seconds, and they were cut as one who took none. Asked only when it did not shrink."""
    sock = transport.get_extra_info("socket")
    if _TCP_INFO is None or sock is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _BYTES_ACKED.size)
    except OSError:  # not TCP (a Unix socket), or closed meanwhile
        return False
    if len(info) < _BYTES_ACKED.size:
        return False
    (acked,) = _BYTES_ACKED.unpack(info)
    before, conn.acked = conn.acked, acked
    return before is not None and acked > before


def _no_head_begun(conn: FrontConnection) -> bool:
    """A connection waiting between requests has no bytes of the next one yet (parsed, in a head, or noted)."""
    return (not conn.events and not conn.reader.in_head
            and (conn.head_since is None or conn.head_since < conn.idle_since))  # type: ignore[operator]


def _head_late(conn: FrontConnection, slow: float) -> bool:
    """The request head awaited began at or before ``slow``: its first bytes came while the connection
    waited, or before (with the connection itself, or behind the request just answered; ``head_since`` is
    only noted while waiting), and then the wait counts from its start."""
    idle_since, head_since = conn.idle_since, conn.head_since
    assert idle_since is not None
    if head_since is not None and head_since >= idle_since:
        return head_since <= slow
    return conn.reader.in_head and idle_since <= slow
