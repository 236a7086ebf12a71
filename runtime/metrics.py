"""Prometheus metrics for the tunnel servers (RED: rate, errors, duration).

Each server owns a ``CollectorRegistry`` (never the global one), so several servers
in one process keep their numbers apart. Label values that come from the network
are bounded: hosts only when a client advertised them, methods only when standard,
control-plane paths only when routed; everything else counts under ``OTHER``.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


class HttpMetrics(ServerMetrics):
    def __init__(self, connected: Callable[[], int], paths: set[str]) -> None:
        super().__init__("http", connected, paths)
        self.requests = Counter(
            "http_dataplane_requests", "HTTP requests on the data plane.",
            ["code", "host", "method"], registry=self.registry,
        )
        self.duration = Histogram(
            "http_dataplane_request_duration_seconds", "Time from request head to the end of the response.",
            ["code", "host", "method"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self._children: dict[tuple[int, str, bytes], tuple] = {}

    def observe(self, code: int, host: str, method: bytes, seconds: float) -> None:
        """Count one request; ``host`` must already be an advertised name or ``OTHER``."""
        key = (code, host, method)
        children = self._children.get(key)
        if children is None:
            name = method.decode("latin-1")
            labels = (str(code), host, name if name in METHODS else OTHER)
            children = (self.requests.labels(*labels), self.duration.labels(*labels))
            if len(self._children) < 10_000:
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def forget_host(self, host: str) -> None:
        """Drop the series of a host no client serves any more (keeps label sets bounded)."""
        for key in [k for k in self._children if k[1] == host]:
            del self._children[key]
            code, _, method = key
            name = method.decode("latin-1")
            labels = (str(code), host, name if name in METHODS else OTHER)
            for metric in (self.requests, self.duration):
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass


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

    def port(self, port: int) -> tuple:
        """Bound children for one port: (gauge, total, bytes in, bytes out), cheap to update per chunk."""
        label = str(port)
        return (self.connections.labels(label), self.connections_total.labels(label),
                self.bytes.labels(label, "in"), self.bytes.labels(label, "out"))
