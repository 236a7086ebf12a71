"""`inlets tcp server`: opens the data ports clients advertise and forwards them.

Data-plane sockets are bound apart from the control plane (``--data-addr``), opened
when the first client advertises a port and closed when the last one leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from ..core.logs import logfmt
from ..core.bridge import TcpBridge
from ..core.listen import BindError, listen, listen_as
from .dataplane import HEADER_TIMEOUT, DataPlaneOptions, HeaderReader, ProxyProtocolError, address, bind_failure
from .proxy_protocol import Address
from .proxy_protocol import encode as encode_proxy_header
from .control import ControlConfig, ControlPlane
from ..core.handshake import CLOSE_SERVICE_REFUSED, HandshakeError, Hello
from ..core.services import parse_port_service
from .metrics import PortCounters, TcpMetrics
from ..core.mux import ResetCode
from .registry import Registry, credited, open_on_first, opened, reached, unreachable
from ..core.session import Session
from .status import status_route
from .udp import UdpCounters, UdpPort
from .udp_socket import UdpSocket

log = logging.getLogger("inlets.tcp")

#: Bytes of a user's kept to send to another client if this one cannot reach its upstream (OpenSSH-sized first
#: reads fit many times over; an upload past it before any answer is not retried).
REPLAY_LIMIT = 256 * 1024

#: A client's reset of a user's stream that means it refused the user, as ``tcp_dataplane_refused_total{reason}``.
_CLIENT_REFUSALS = {ResetCode.TOO_MANY_STREAMS: "client_stream_limit",  # its --max-streams
                    ResetCode.REFUSED: "upstream_failed",  # its upstream could not be dialled
                    ResetCode.NOT_ALLOWED: "client_not_serving"}  # it does not serve this port (any more)


class DataPlaneConnection(TcpBridge):
    """A user's connection to a data port: tunnelled to the next client serving it."""

    accepted = True  # from ``listen``: TCP_NOTSENT_LOWAT came with the socket
    #: The clients that could not reach their upstream for this user (set at the first; a class default costs nothing)
    _tried = ()  # type: tuple[Session, ...]

    def __init__(self, server: TcpTunnelServer, service: str, counters: PortCounters) -> None:
        super().__init__()
        self.server = server
        self.service = service
        self.counters = counters  # the port's plain ints, updated per chunk
        self._counted = False
        self._header: HeaderReader | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        #: The user's bytes so far, until something shows a client reached an upstream (None from then on).
        self._replay = b""  # type: bytes | bytearray | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = address(transport.get_extra_info("peername"))
        version = self.server.options.lb_proxy_protocol
        if version:  # the real source comes in the balancer's header
            self._header = HeaderReader(version, self.peer)
            self._header_timer = asyncio.get_running_loop().call_later(
                HEADER_TIMEOUT, self._refuse, "proxy_header_timeout"
            )
            return
        self._admit(self.peer, None, b"")

    def _local(self) -> Address:
        """The data port's address as the user reached it (asked only for a PROXY header)."""
        return address(self.transport.get_extra_info("sockname") if self.transport is not None else None)

    def _admit(self, source: Address, destination: Address | None, rest: bytes) -> None:
        if not self.server.options.allows(source):
            self._refuse("source_not_allowed", source)
            return
        channel = open_on_first(self.server.registry.candidates(self.service), self.service, self)
        if isinstance(channel, str):  # why no client took it
            if channel == "no_client":
                log.info("event=no_client service=%s", logfmt(self.service))
            self._refuse(channel)
            return
        self.attach(channel)
        session = cast(Session, channel.session)
        self.server.registry.took(self.service, session)
        opened(session, self.service)  # until it answers: a blackholed upstream's dial answers in 10 s
        self.counters.open += 1
        self.counters.total += 1
        self._counted = True
        version = self.server.options.proxy_protocol
        if version:  # through the bridge, which keeps what finds no credit: a header dropped would let the
            # user's own first bytes (a PROXY header of theirs) name the source the upstream trusts
            header = self._replay = encode_proxy_header(version, source, destination or self._local())
            TcpBridge.data_received(self, header)
        if rest:
            self.data_received(rest)

    def _refuse(self, reason: str, source: Address | None = None, error: object = None) -> None:
        self._count_refused(reason, source, error)
        self._done = True
        self.abort()

    def _count_refused(self, reason: str, source: Address | None = None, error: object = None) -> None:
        """Count a refusal and log it in one line (``error``: what was wrong, when there is more to say)."""
        refused = self.counters.refused
        refused[reason] = refused.get(reason, 0) + 1
        if reason == "no_client":
            return
        source_host = (source or self.peer)[0]
        if error is None:
            log.info("event=refused service=%s reason=%s source=%s", logfmt(self.service), logfmt(reason),
                     logfmt(source_host))
        else:
            log.info("event=refused service=%s reason=%s source=%s error=%s", logfmt(self.service), logfmt(reason),
                     logfmt(source_host), logfmt(error))

    def on_reset(self, code: int, reason: str) -> None:
        if code == ResetCode.REFUSED and self._replay is not None and self._elsewhere():
            return
        # The client refused it: counted by why, as our own refusals are, so connections_total less these is what was
        # carried (a client whose upstream is down made every user a plain connection, reset, with no refused count)
        why = _CLIENT_REFUSALS.get(code)
        if why is not None and self._counted:
            self._count_refused(why)
        super().on_reset(code, reason)

    def _elsewhere(self) -> bool:
        """The client could not dial its upstream (REFUSED) and nothing came back from it: no upstream saw the
        user's bytes, so they go to the next client serving the port, each client tried once. False (the user is
        reset) when none is left, or when the user sent more than the stream's first credit (``_pending``)."""
        if self._done or self._eof_from_stream or self._pending is not None:
            return False
        service, session = self.service, cast(Session, self.channel.session)  # type: ignore[union-attr]
        tried = self._tried = (*self._tried, session)
        unreachable(session, service)  # tried after the others (``open_on_first``) for a while
        found = open_on_first([s for s in self.server.registry.sessions_for(service) if s not in tried], service, self)
        log.info("event=upstream_unreachable service=%s client=%s action=%s", logfmt(service), session.name,
                 "reset" if isinstance(found, str) else "next_client")
        if isinstance(found, str):  # counted refused by on_reset, as with one client
            return False
        self.attach(found)
        self.server.registry.took(service, found.session)
        opened(found.session, service)
        self._eof_sent = False
        if self._replay:  # bytes() copies a bytearray, which may grow while this waits for credit
            TcpBridge.data_received(self, bytes(self._replay))
        if self._eof_from_socket:
            self.eof_received()
        return True

    def _keep(self, data: bytes) -> None:
        """Keep ``data`` with the user's bytes so far, to send again if need be, up to ``REPLAY_LIMIT``: past it (an
        upload the upstream takes without answering, or a user who sent that much before a refusal) nothing is kept
        and no other client is tried."""
        replay = self._replay
        if len(replay) + len(data) > REPLAY_LIMIT:  # type: ignore[arg-type]
            self._replay = None
            return
        if type(replay) is bytes:
            replay = self._replay = bytearray(replay)
        replay += data  # type: ignore[operator]

    def _bad_header(self, error: object) -> None:
        self._refuse("bad_proxy_header", error=error)

    def eof_received(self) -> bool:
        if self._header is None:
            return super().eof_received()
        error = self._header.cut_short()
        if error is not None:
            self._bad_header(error)
        else:
            self._done = True
            self.abort()
        return False

    def data_received(self, data: bytes) -> None:
        if self._header is not None:
            try:
                done = self._header.feed(data)
            except ProxyProtocolError as exc:
                self._bad_header(exc)
                return
            if done is None:
                return
            source, destination, rest = done
            self._header = None
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._admit(source, destination, rest)
            return
        self.counters.bytes_in += len(data)
        replay = self._replay
        if replay is not None:  # nothing shows yet that a client reached an upstream
            if replay:
                self._keep(data)
            else:
                self._replay = data  # the common case: one read before the answer, kept without a copy (no call)
        super().data_received(data)

    def on_data(self, data: bytes | memoryview) -> None:
        if self._replay is not None:  # the client answered: it reached its upstream
            self._reached()
        self.counters.bytes_out += len(data)
        super().on_data(data)

    def on_eof(self) -> None:
        if self._replay is not None:  # its FIN, nothing said before: the dial worked (a failed one is REFUSED), and
            self._reached()  # the upstream closed (a health check's connection: 28 of 30 users went to the other)
        super().on_eof()

    def on_writable(self) -> None:
        if self._replay is not None and credited(self.channel):  # the client's dial worked (it acknowledges each
            self._reached()  # one): a pool's idle connection to a client-speaks-first upstream draws no answer
        super().on_writable()

    def _reached(self) -> None:
        """The client answered, or acknowledged its dial, so it reached its upstream: nothing will be sent again, and
        it takes its share of users again."""
        self._replay = None
        if self._tried:
            self._tried = ()  # the clients tried before: a long connection kept them (closed ones too) alive
        session = cast(Session, self.channel.session)  # type: ignore[union-attr]
        if session.unreachable or session.silent:
            reached(session, self.service)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        if self._counted:
            self._counted = False
            self.counters.open -= 1
        super().connection_lost(exc)


class TcpTunnelServer:
    def __init__(
        self,
        config: ControlConfig,
        data_addr: str | None = None,
        allow_ports: set[int] | None = None,
        options: DataPlaneOptions | None = None,
    ) -> None:
        self.data_addr = data_addr or None
        self.allow_ports = allow_ports
        self.options = options or DataPlaneOptions()
        self.registry: Registry[Session] = Registry()
        self.control = ControlPlane("tcp", config, self._admit, self._release)
        self.metrics = TcpMetrics(lambda: len(self.control.clients), self.control.serves)
        self.metrics.certificate_end = config.certificate_end
        config.routes.setdefault("/metrics", self.metrics.route)  # behind the bearer token
        config.routes.setdefault("/status", status_route(self.control))
        config.on_request = self.metrics.control_request
        self.listeners: dict[str, asyncio.base_events.Server | UdpSocket] = {}
        self.udp_ports: dict[str, UdpPort] = {}
        self.metrics.watch_udp(lambda: self.udp_ports)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self.data_addr:
            await self._check_data_addr(self.data_addr)
        await self.control.start()

    async def _check_data_addr(self, data_addr: str) -> None:
        """The data ports open only when clients ask for them: a --data-addr that is not this machine's is found
        here, at start, by whoever runs the server (as the HTTP server's is), not by each client in its refusal."""
        try:
            probe = await listen_as("data", asyncio.Protocol, data_addr, 0)
        except BindError as exc:
            exc.where = data_addr  # no port of its own yet: the address is what is wrong
            raise
        probe.close()

    async def stop(self) -> None:
        self._close_listeners()
        await self.control.stop()

    async def drain(self, timeout: float) -> None:
        """Graceful stop: accept nothing new; open connections get ``timeout`` seconds to finish."""
        self._close_listeners()
        await self.control.drain(timeout)

    def _close_listeners(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()

    def data_port(self, service: str) -> int | None:
        listener = self.listeners.get(service)
        if isinstance(listener, UdpSocket):
            return listener.sock.getsockname()[1]
        return listener.sockets[0].getsockname()[1] if listener and listener.sockets else None

    async def _admit(self, session: Session, hello: Hello) -> list[str]:
        if not hello.services and not hello.extra.get("forwards"):
            raise HandshakeError(CLOSE_SERVICE_REFUSED, "the client advertised no ports")
        parsed = [parse_port_service(s) for s in hello.services]
        ports = [port for _, port in parsed]
        if self.allow_ports is not None:
            refused = sorted(set(ports) - self.allow_ports)
            if refused:
                allowed = ",".join(map(str, sorted(self.allow_ports)))
                raise HandshakeError(
                    CLOSE_SERVICE_REFUSED, f"port(s) {','.join(map(str, refused))} not allowed (--allow-ports {allowed})"
                )
        services = [f"{kind}:{port}" for kind, port in parsed]
        async with self._lock:
            opened = []
            counted = (set(self.metrics.ports), set(self.metrics.udp))  # a port that never served gets no series
            try:
                # Until none is missing: while one opens, a port found open may close, its last client gone
                # (_release takes no lock); registering then would leave this client serving a closed port.
                while missing := [(kind, port, service) for (kind, port), service in zip(parsed, services)
                                  if service not in self.listeners]:
                    for kind, port, service in missing:
                        if service not in self.listeners:
                            listen = self._listen_udp if kind == "udp" else self._listen
                            self.listeners[service] = await listen(port, service)
                            opened.append(service)
            except OSError as exc:
                for service in opened:
                    listener = self.listeners.pop(service, None)
                    if listener is not None:
                        listener.close()
                    self.udp_ports.pop(service, None)
                    opened_kind, _, opened_port = service.partition(":")
                    if int(opened_port) in counted[opened_kind == "udp"]:  # in its grace before: back in it, else
                        self.metrics.port_closed(opened_kind, int(opened_port), time.monotonic())  # kept for ever
                self.metrics.forget_ports(*counted)
                control = frozenset(address[1] for address in self.control.addresses) if kind == "tcp" else frozenset()
                raise HandshakeError(CLOSE_SERVICE_REFUSED, bind_failure(self.data_addr, port, exc, control)) from None
            self.registry.add(session, services, hello.client_id)
        return services

    async def _listen(self, port: int, service: str) -> asyncio.base_events.Server:
        counters = self.metrics.port(port)
        listener = await listen(lambda: DataPlaneConnection(self, service, counters), self.data_addr, port)
        log.info("event=listening service=%s addr=%s", logfmt(service), logfmt(self.data_addr or "*"))
        return listener

    async def _listen_udp(self, port: int, service: str) -> UdpSocket:
        counters = self.metrics.udp_port(port, UdpCounters)  # kept across clients (for a grace), as TCP ports' are
        udp = UdpPort(service, self.registry, allows=self.options.allows, counters=counters)
        transport = await UdpSocket.bind(self.data_addr, port, udp)  # no --data-addr: every interface, dual stack
        self.udp_ports[service] = udp
        log.info("event=listening service=%s addr=%s", logfmt(service), logfmt(self.data_addr or "*"))
        return transport

    def _release(self, session: Session) -> None:
        for service in self.registry.remove(session):
            listener = self.listeners.pop(service, None)
            self.udp_ports.pop(service, None)
            if listener is not None:
                listener.close()
                kind, _, port = service.partition(":")
                self.metrics.port_closed(kind, int(port), time.monotonic())
                log.info("event=closed service=%s reason=no_clients", logfmt(service))
        for udp in self.udp_ports.values():  # ports other clients still serve: its flows move to them
            udp.end_session(session)
