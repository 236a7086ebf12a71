"""The HTTP server's --allow-ips and --lb-proxy-protocol judge a balancer's connection as the TCP server does.

The TCP server's rules (test_proxy_header_hostile.py) were fixed in the shared reader; the HTTP server had its own:
a LOCAL/UNKNOWN header (no source in it) skipped --allow-ips, and a connection closed part-way through its header
went uncounted and unlogged.
"""

from __future__ import annotations

import struct

import pytest
from helpers.http import LOOPBACK, Stack, raw_request
from helpers.tunnel import metric

from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
from inlets_py.runtime.server.dataplane import DataPlaneOptions
from inlets_py.runtime.server.proxy_protocol import V2_SIGNATURE

GET = b"GET /who HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"
#: A header that names no source: the balancer's own connection (a health check), v1 UNKNOWN and v2 LOCAL.
NO_SOURCE = {"v1": b"PROXY UNKNOWN\r\n", "v2": V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)}


@pytest.fixture(scope="module")
def stack():
    stack = Stack()
    yield stack
    stack.close()


def refused(server) -> float:
    return metric(server, "http_dataplane_requests_total", code="403")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_header_naming_no_source_is_judged_by_the_balancers_address(stack, tls, token, version: str) -> None:
    """LOCAL/UNKNOWN skipped --allow-ips altogether (a 200 for a balancer outside it, 2 of 2 versions), while the
    TCP server judges the balancer's own address then; now both do."""
    app, app_port = stack.upstream("app")
    gate = DataPlaneOptions(allow_ips=SourceAllowList(parse_networks("203.0.113.0/24,127.0.0.2")),
                            lb_proxy_protocol=version)
    server = stack.server(tls, token, dataplane=gate)
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    port = server.data_port
    assert raw_request(port, NO_SOURCE[version] + GET, source="127.0.0.2").startswith(b"HTTP/1.1 200")  # listed
    outside = raw_request(port, NO_SOURCE[version] + GET, source=LOOPBACK)
    assert outside.startswith(b"HTTP/1.1 403"), outside[:100]
    assert refused(server) == 1
