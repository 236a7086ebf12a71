"""Prometheus metrics for the tunnel servers (RED: rate, errors, duration).

Counting is plain Python (an addition per update, no lock), and prometheus-client is
imported only at the first scrape, when the numbers become metric families: a server
that nobody scrapes does not carry the library (about 2 MiB of RSS), and a connection or
a chunk of bytes costs no label lookup. Each server has its own registry, so several
servers in one process keep their numbers apart. Label values that come from the network
are bounded: hosts only when a client advertised them, methods only when standard,
status codes only when registered (an upstream may answer any three digits: 900 series per
host and method), control-plane paths only when routed; everything else counts under ``OTHER``.
"""

from __future__ import annotations

import datetime
from bisect import bisect_left
from http import HTTPStatus
from typing import Any, Callable, Iterator

OTHER = "_other"
METHODS = frozenset("GET HEAD POST PUT DELETE OPTIONS PATCH TRACE CONNECT".split())
#: The status codes that become labels (IANA's registry, as Python knows it); others count as ``OTHER``.
CODES = frozenset(int(status) for status in HTTPStatus) | {499}  # and nginx's "client closed request"
#: Latency buckets from sub-millisecond (loopback) to the default upstream timeout.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """What every server exposes: connected clients and control-plane requests."""

    def __init__(self, mode: str, connected: Callable[[], int], serves: Callable[[str], bool]) -> None:
        self.mode = mode
        self._connected = connected
        self._serves = serves  # the control plane's own test (ControlPlane.serves): a label for each path it answers
        self.control_requests: dict[tuple[str, str], int] = {}  # (code, path) -> count
        self._registry: Any = None  # a prometheus_client CollectorRegistry, made at the first scrape
        #: when the control port's certificate ends (the server sets it; None: --plaintext)
        self.certificate_end: Callable[[], datetime.datetime | None] = lambda: None

    def control_request(self, path: str, code: int) -> None:
        labels = (str(code), path if self._serves(path) else OTHER)
        self.control_requests[labels] = self.control_requests.get(labels, 0) + 1

    @property
    def registry(self) -> Any:
        """This server's own prometheus-client registry (the first use imports the library)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        return self._registry

    def route(self, headers: Any = None) -> tuple[int, str, bytes]:
        """The ``GET /metrics`` route of the control plane (behind the bearer token), run in a thread.

        The format is the one the scraper's Accept asks for: Prometheus asks OpenMetrics first (its ``# EOF``
        shows a scrape cut short), a plain scrape gets the text format. An Accept the library cannot read (a
        version that is no number) gets the text format too, not a 500."""
        from prometheus_client.exposition import choose_encoder

        accept = ", ".join(headers.get_all("Accept")) if headers is not None else ""
        try:
            encode, content_type = choose_encoder(accept)
        except (TypeError, ValueError):
            encode, content_type = choose_encoder("")  # as a plain scrape
        return 200, content_type, encode(self.registry)

    def collect(self) -> Iterator[Any]:
        """The registry's collector interface: the families, built from the counts at scrape time."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(f"{self.mode}_controlplane_connected_gauge", "Tunnel clients connected now.",
                                value=float(self._connected()))
        requests = CounterMetricFamily(f"{self.mode}_controlplane_requests",
                                       "Requests to the control port by status code and path.", labels=["code", "path"])
        for labels, count in list(self.control_requests.items()):
            requests.add_metric(labels, count)
        yield requests
        end = self.certificate_end()
        if end is not None:  # what an alert reads, as blackbox_exporter's probe_ssl_earliest_cert_expiry
            yield GaugeMetricFamily(f"{self.mode}_controlplane_certificate_expiry_timestamp_seconds",
                                    "When the control port's TLS certificate ends (Unix time): renew it before.",
                                    value=end.timestamp())
        yield from self.families()

    def families(self) -> Iterator[Any]:
        """The mode's own families (see the subclasses)."""
        return iter(())


class HttpMetrics(ServerMetrics):
    """Request counts and duration histograms, as lists of numbers per label set.

    The proxy records every request; prometheus-client's Counter and Histogram take a lock and
    walk the buckets in Python per update, which costs as much as routing a small request.
    Here an update is a dict lookup, a bisect and three additions.
    """

    #: how long a host no client serves keeps its series (a client restarting, a network blip): its counters go on,
    #: and the 503s of the gap count under it; Prometheus itself marks a series stale after 5 minutes
    GRACE = 300.0
    #: hosts kept so at most: beyond it the one unserved longest is dropped at once (label sets stay bounded)
    MAX_UNSERVED = 1024

    def __init__(self, connected: Callable[[], int], serves: Callable[[str], bool]) -> None:
        super().__init__("http", connected, serves)
        self.series: dict[tuple[str, str, str], list[float]] = {}  # labels -> [count, sum, per-bucket counts]
        #: (code, host) -> answers the proxy made itself: an app's own 502 and a tunnel's looked the same
        self.own: dict[tuple[str, str], int] = {}
        self._keys: dict[tuple[int, str, bytes], list[float]] = {}
        #: host -> its entries in ``series`` and ``_keys``: dropping a host scanned every series, for each host
        #: dropped (3,000 hosts leaving at once stalled the proxy for a second)
        self._of_host: dict[str, tuple[list, list]] = {}
        self.unserved: dict[str, float] = {}  # host -> when its last client left (loop time), oldest first
        self.grace = self.GRACE
        #: connections switched to another protocol (websockets) open now: each holds a stream until it ends
        self.upgraded: Callable[[], int] = lambda: 0

    def observe(self, code: int, host: str, method: bytes, seconds: float, own: bool = False) -> None:
        """Count one request; ``host`` must already be an advertised name or ``OTHER``; ``own``: the proxy
        answered it (no client, an upstream unreachable, silent or cut, a bad request), not the upstream."""
        if own:
            labels = (str(code) if code in CODES else OTHER, host)
            self.own[labels] = self.own.get(labels, 0) + 1  # its host has a series below: forget_host drops both
        values = self._keys.get((code, host, method))
        if values is None:
            name = method.decode("latin-1")
            labels = (str(code) if code in CODES else OTHER, host, name if name in METHODS else OTHER)
            series, keys = self._of_host.setdefault(host, ([], []))
            values = self.series.get(labels)
            if values is None:
                values = self.series[labels] = [0.0, 0.0] + [0.0] * len(DURATION_BUCKETS)
                series.append(labels)
            if len(self._keys) < 10_000:  # distinct raw methods are bounded by llhttp's list anyway
                self._keys[(code, host, method)] = values
                keys.append((code, host, method))
        values[0] += 1
        values[1] += seconds
        index = bisect_left(DURATION_BUCKETS, seconds)
        if index < len(DURATION_BUCKETS):
            values[2 + index] += 1

    def host_unserved(self, host: str, now: float) -> None:
        """The last client of ``host`` left: its series stay for ``grace`` seconds (``expire``), then go. Never those
        of ``OTHER``, every unadvertised host's: a client serving a host named so, once gone, took them all with it
        (a counter reset to Prometheus, which any token holder could cause)."""
        if host == OTHER:
            return
        self.unserved.pop(host, None)
        self.unserved[host] = now
        while len(self.unserved) > self.MAX_UNSERVED:
            self.forget_host(next(iter(self.unserved)))

    def host_served(self, host: str) -> None:
        """A client serves ``host`` (again): its series are kept."""
        self.unserved.pop(host, None)

    def remembers(self, host: str) -> bool:
        """Whether ``host``, served by no client now, still has its own label (within the grace)."""
        return host in self.unserved

    def expire(self, now: float) -> None:
        """Drop the series of the hosts unserved for longer than ``grace``."""
        while self.unserved:
            host, since = next(iter(self.unserved.items()))
            if since > now - self.grace:
                return
            self.forget_host(host)

    def forget_host(self, host: str) -> None:
        """Drop the series of a host no client serves any more (keeps label sets bounded)."""
        self.unserved.pop(host, None)
        series, keys = self._of_host.pop(host, ((), ()))
        for key in keys:
            self._keys.pop(key, None)
        for labels in series:
            self.series.pop(labels, None)
            self.own.pop(labels[:2], None)

    def families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        requests = CounterMetricFamily(
            "http_dataplane_requests", "HTTP requests on the data plane.", labels=["code", "host", "method"])
        duration = HistogramMetricFamily(
            "http_dataplane_request_duration_seconds", "Time from request head to the end of the response.",
            labels=["code", "host", "method"])
        for labels, counted in list(self.series.items()):
            values = counted[:]  # one request's count, sum and bucket together: a scrape runs in a thread
            requests.add_metric(labels, values[0])
            cumulative, buckets = 0.0, []
            for bound, count in zip(DURATION_BUCKETS, values[2:]):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            buckets.append(("+Inf", values[0]))
            duration.add_metric(labels, buckets, values[1])
        own = CounterMetricFamily(
            "http_dataplane_proxy_responses", "Of those, the answers the proxy made itself, not an upstream: no "
            "client (503), an upstream unreachable or cut mid-answer (502), silent (504), a bad request (4xx).",
            labels=["code", "host"])
        for labels2, count in list(self.own.items()):
            own.add_metric(labels2, count)
        yield requests
        yield duration
        yield own
        yield GaugeMetricFamily("http_dataplane_upgraded_connections", "Connections switched to another protocol "
                                "(websockets) open now.", value=float(self.upgraded()))


class PortCounters:
    """One public TCP port's numbers, updated by its connections per chunk."""

    __slots__ = ("open", "total", "bytes_in", "bytes_out", "refused")

    def __init__(self) -> None:
        self.open = 0
        self.total = 0
        self.bytes_in = 0  # from the public side
        self.bytes_out = 0  # to it
        self.refused: dict[str, int] = {}  # reason -> count


class TcpMetrics(ServerMetrics):
    #: how long a port no client serves keeps its series, as ``HttpMetrics.GRACE``: a client churning through
    #: ports left every port's series for ever
    GRACE = HttpMetrics.GRACE

    def __init__(self, connected: Callable[[], int], serves: Callable[[str], bool]) -> None:
        super().__init__("tcp", connected, serves)
        self.unserved: dict[tuple[str, int], float] = {}  # (kind, port) -> when its listener closed, oldest first
        self.grace = self.GRACE
        self.ports: dict[int, PortCounters] = {}  # the server's own data ports: bounded by its configuration
        #: UDP port -> its udp.UdpCounters, kept as ``ports`` are: a port's listener (UdpPort) goes with its last
        #: client, and counters that went with it started again at 0 when the client reconnected.
        self.udp: dict[int, Any] = {}
        self._udp_ports: Callable[[], dict] | None = None

    def port(self, port: int) -> PortCounters:
        self.unserved.pop(("tcp", port), None)
        counters = self.ports.get(port)
        if counters is None:
            counters = self.ports[port] = PortCounters()
        return counters

    def forget_ports(self, tcp: set[int], udp: set[int]) -> None:
        """Keep only these ports' counters: those a refused handshake made (its bind failed, or another port's did)
        were scraped as a port at 0 that never served."""
        for port in set(self.ports) - tcp:
            del self.ports[port]
        for port in set(self.udp) - udp:
            del self.udp[port]

    def udp_port(self, port: int, make: Callable[[], Any]) -> Any:
        """The counters of a UDP port (``make()`` the first time), kept while it is served."""
        self.unserved.pop(("udp", port), None)
        counters = self.udp.get(port)
        if counters is None:
            counters = self.udp[port] = make()
        return counters

    def port_closed(self, kind: str, port: int, now: float) -> None:
        """The last client of a port left (its listener closed): its counters go on if a client comes back within
        ``grace``; past it they go, at this or a later call (run on the loop, which updates them, not at a scrape)."""
        self.unserved.pop((kind, port), None)
        self.unserved[(kind, port)] = now
        for (old_kind, old_port), since in list(self.unserved.items()):
            if since > now - self.grace:
                break
            if old_kind == "tcp" and (counters := self.ports.get(old_port)) is not None and counters.open:
                continue  # connections still draining count into it: dropped at a later call
            del self.unserved[(old_kind, old_port)]
            (self.ports if old_kind == "tcp" else self.udp).pop(old_port, None)

    def watch_udp(self, ports: Callable[[], dict]) -> None:
        """Report the flows of this server's open UDP ports (``{service: UdpPort}``) at scrape time; their
        counters are ``udp``'s, which every UdpPort of the same port shares."""
        self._udp_ports = ports

    def families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        gauge = GaugeMetricFamily("tcp_dataplane_connections_gauge",
                                  "Data-plane connections open now, by public port.", labels=["port"])
        total = CounterMetricFamily("tcp_dataplane_connections",
                                    "Data-plane connections handed to a client, by public port (those it refused "
                                    "count in tcp_dataplane_refused too).", labels=["port"])
        volume = CounterMetricFamily("tcp_dataplane_bytes",
                                     "Bytes through the data plane: in = from the public side, out = to it.",
                                     labels=["port", "direction"])
        refused = CounterMetricFamily("tcp_dataplane_refused",
                                      "Data-plane connections refused, by public port and reason.",
                                      labels=["port", "reason"])
        for port, counters in sorted(self.ports.items()):
            label = str(port)
            gauge.add_metric([label], counters.open)
            total.add_metric([label], counters.total)
            volume.add_metric([label, "in"], counters.bytes_in)
            volume.add_metric([label, "out"], counters.bytes_out)
            for reason, count in list(counters.refused.items()):
                refused.add_metric([label, reason], count)
        yield from (gauge, total, volume, refused)
        if self._udp_ports is not None:
            yield from _udp_families(self.udp, self._udp_ports())


def _udp_families(counted: dict[int, Any], ports: dict) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    datagrams = CounterMetricFamily("udp_dataplane_datagrams", "UDP datagrams through the data plane.",
                                    labels=["port", "direction"])
    volume = CounterMetricFamily("udp_dataplane_bytes", "UDP payload bytes through the data plane.",
                                 labels=["port", "direction"])
    dropped = CounterMetricFamily("udp_dataplane_dropped", "UDP datagrams dropped, by reason.",
                                  labels=["port", "reason"])
    flows = GaugeMetricFamily("udp_dataplane_flows_gauge", "UDP flows (source addresses) open now.",
                              labels=["port"])
    evicted = CounterMetricFamily("udp_dataplane_flows_evicted", "UDP flows not assured, ended for a new source "
                                  "when the flows were at their bound.", labels=["port"])
    flows_now = {service.partition(":")[2]: len(udp.flows) for service, udp in list(ports.items())}
    for number, counters in sorted(counted.items()):
        port = str(number)
        datagrams.add_metric([port, "in"], counters.datagrams_in)
        datagrams.add_metric([port, "out"], counters.datagrams_out)
        volume.add_metric([port, "in"], counters.bytes_in)
        volume.add_metric([port, "out"], counters.bytes_out)
        for reason, count in list(counters.dropped.items()):
            dropped.add_metric([port, reason], count)
        flows.add_metric([port], flows_now.get(port, 0))
        evicted.add_metric([port], counters.evicted)
    yield from (datagrams, volume, dropped, flows, evicted)
