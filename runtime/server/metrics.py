"""Prometheus metrics for the tunnel servers (RED: rate, errors, duration).

Each server owns a ``CollectorRegistry`` (never the global one), so several servers
in one process keep their numbers apart. Label values that come from the network
are bounded: hosts only when a client advertised them, methods only when standard,
control-plane paths only when routed; everything else counts under ``OTHER``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

OTHER = "_other"
METHODS = frozenset("GET HEAD POST PUT DELETE OPTIONS PATCH TRACE CONNECT".split())
#: Latency buckets from sub-millisecond (loopback) to the default upstream timeout.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """What every server exposes: connected clients and control-plane requests."""

    def __init__(self, mode: str, connected: Callable[[], int], paths: set[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._paths = paths
        self.connected = Gauge(
            f"{mode}_controlplane_connected_gauge", "Tunnel clients connected now.", registry=self.registry
        )
        self.connected.set_function(lambda: float(connected()))
        self.control_requests = Counter(
            f"{mode}_controlplane_requests", "Requests to the control port by status code and path.",
            ["code", "path"], registry=self.registry,
        )

    def control_request(self, path: str, code: int) -> None:
        self.control_requests.labels(str(code), path if path in self._paths else OTHER).inc()

    def route(self) -> tuple[int, str, bytes]:
        """The ``GET /metrics`` route of the control plane (behind the bearer token)."""
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


class _RequestStats:
    """Request counts and duration histograms kept as plain lists, exposed at scrape time.

    The proxy records every request; prometheus-client's Counter and Histogram take
    a lock and walk the buckets in Python per update, which costs as much as routing a
    small request. Here an update is a dict lookup, a bisect and three additions.
    """

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], list[float]] = {}  # labels -> [count, sum, per-bucket counts]

    def describe(self) -> list:
        return []

    def collect(self):
        requests = CounterMetricFamily(
            "http_dataplane_requests", "HTTP requests on the data plane.", labels=["code", "host", "method"])
        duration = HistogramMetricFamily(
            "http_dataplane_request_duration_seconds", "Time from request head to the end of the response.",
            labels=["code", "host", "method"])
        for labels, values in list(self.series.items()):
            requests.add_metric(labels, values[0])
            cumulative, buckets = 0.0, []
            for bound, count in zip(DURATION_BUCKETS, values[2:]):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            buckets.append(("+Inf", values[0]))
            duration.add_metric(labels, buckets, values[1])
        yield requests
        yield duration


class HttpMetrics(ServerMetrics):
    def __init__(self, connected: Callable[[], int], paths: set[str]) -> None:
        super().__init__("http", connected, paths)
        self.stats = _RequestStats()
        self.registry.register(self.stats)  # type: ignore[arg-type]
        self._keys: dict[tuple[int, str, bytes], list[float]] = {}

    def observe(self, code: int, host: str, method: bytes, seconds: float) -> None:
        """Count one request; ``host`` must already be an advertised name or ``OTHER``."""
        values = self._keys.get((code, host, method))
        if values is None:
            name = method.decode("latin-1")
            labels = (str(code), host, name if name in METHODS else OTHER)
            values = self.stats.series.setdefault(labels, [0.0, 0.0] + [0.0] * len(DURATION_BUCKETS))
            if len(self._keys) < 10_000:  # distinct raw methods are bounded by llhttp's list anyway
                self._keys[(code, host, method)] = values
        values[0] += 1
        values[1] += seconds
        index = bisect_left(DURATION_BUCKETS, seconds)
        if index < len(DURATION_BUCKETS):
            values[2 + index] += 1

    def forget_host(self, host: str) -> None:
        """Drop the series of a host no client serves any more (keeps label sets bounded)."""
        for key in [k for k in self._keys if k[1] == host]:
            del self._keys[key]
        for labels in [labels for labels in self.stats.series if labels[1] == host]:
            del self.stats.series[labels]


class TcpMetrics(ServerMetrics):
    def __init__(self, connected: Callable[[], int], paths: set[str]) -> None:
        super().__init__("tcp", connected, paths)
        self.connections = Gauge(
            "tcp_dataplane_connections_gauge", "Data-plane connections open now, by public port.",
            ["port"], registry=self.registry,
        )
        self.connections_total = Counter(
            "tcp_dataplane_connections", "Data-plane connections accepted and tunnelled, by public port.",
            ["port"], registry=self.registry,
        )
        self.bytes = Counter(
            "tcp_dataplane_bytes", "Bytes through the data plane: in = from the public side, out = to it.",
            ["port", "direction"], registry=self.registry,
        )
        self.refused = Counter(
            "tcp_dataplane_refused", "Data-plane connections refused, by public port and reason.",
            ["port", "reason"], registry=self.registry,
        )

    def watch_udp(self, ports: Callable[[], dict]) -> None:
        """Report the UDP ports of this server (``{service: UdpPort}``) at scrape time."""
        self.registry.register(_UdpCollector(ports))

    def port(self, port: int) -> tuple:
        """Bound children for one port: (gauge, total, bytes in, bytes out), cheap to update per chunk."""
        label = str(port)
        return (self.connections.labels(label), self.connections_total.labels(label),
                self.bytes.labels(label, "in"), self.bytes.labels(label, "out"))


class _UdpCollector:
    """UDP counters live on each port's protocol object (plain ints on the hot path);
    they become metrics only when scraped."""

    def __init__(self, ports: Callable[[], dict]) -> None:
        self.ports = ports

    def collect(self):
        datagrams = CounterMetricFamily("udp_dataplane_datagrams", "UDP datagrams through the data plane.",
                                        labels=["port", "direction"])
        volume = CounterMetricFamily("udp_dataplane_bytes", "UDP payload bytes through the data plane.",
                                     labels=["port", "direction"])
        dropped = CounterMetricFamily("udp_dataplane_dropped", "UDP datagrams dropped, by reason.",
                                      labels=["port", "reason"])
        flows = GaugeMetricFamily("udp_dataplane_flows_gauge", "UDP flows (source addresses) open now.",
                                  labels=["port"])
        for service, udp in list(self.ports().items()):
            port, counters = service.partition(":")[2], udp.counters
            datagrams.add_metric([port, "in"], counters.datagrams_in)
            datagrams.add_metric([port, "out"], counters.datagrams_out)
            volume.add_metric([port, "in"], counters.bytes_in)
            volume.add_metric([port, "out"], counters.bytes_out)
            for reason, count in counters.dropped.items():
                dropped.add_metric([port, reason], count)
            flows.add_metric([port], len(udp.flows))
        yield from (datagrams, volume, dropped, flows)
