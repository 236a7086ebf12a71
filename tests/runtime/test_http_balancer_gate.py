"""The HTTP server's --allow-ips and --lb-proxy-protocol judge a balancer's connection as the TCP server does.

The TCP server's rules (test_proxy_header_hostile.py) were fixed in the shared reader; the HTTP server had its own:
a LOCAL/UNKNOWN header (no source in it) skipped --allow-ips, and a connection closed part-way through its header
went uncounted and unlogged.
"""

from __future__ import annotations

import logging
import struct

import pytest
from helpers.http import LOOPBACK, Stack, answer_after_fin, raw_request
from helpers.tunnel import metric

from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
from inlets_py.runtime.server.dataplane import DataPlaneOptions
from inlets_py.runtime.server.proxy_protocol import V2_SIGNATURE, encode

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


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_broken_balancer_header_is_refused_counted_and_logged_with_what_was_wrong(stack, tls, token, version: str,
                                                                                   caplog) -> None:
    """A connection closed (FIN) part-way through its header was closed uncounted and unlogged; it is refused as
    ``bad_proxy_header``, as the TCP server refuses it, and each such line says what was wrong (``error=``), as the
    TCP server's do. One that sent nothing (a balancer's connect check) still closes uncounted."""
    app, app_port = stack.upstream("app")
    server = stack.server(tls, token, dataplane=DataPlaneOptions(lb_proxy_protocol=version))
    stack.client(server, tls, token, [f"http://{LOOPBACK}:{app_port}"])
    port = server.data_port
    header = encode(version, ("203.0.113.9", 4242), (LOOPBACK, port))
    with caplog.at_level(logging.INFO, logger="inlets.http"):
        assert answer_after_fin(port, b"") == b""
        assert refused(server) == 0
        cut = answer_after_fin(port, header[:10])
        assert cut.startswith(b"HTTP/1.1 403"), cut[:100]
        assert raw_request(port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")  # no header at all
    assert refused(server) == 2
    lines = [r.getMessage() for r in caplog.records if "reason=bad_proxy_header" in r.getMessage()]
    assert len(lines) == 2, lines
    assert all("source=127.0.0.1" in line and "error=" in line for line in lines), lines
    assert "connection closed after 10 bytes" in lines[0], lines
