"""A balancer's PROXY header (--lb-proxy-protocol) that breaks the specification is refused at once and counted.

Only well-formed headers were ever sent by the tests, so the parser's checks could all be removed with every test
passing: a v1 header past its 107 bytes was buffered until the header timeout, a TCP4 header naming an IPv6
address was believed, and a v2 header with a short address block or another version went unchecked (a short one
raised out of the protocol callback, logged as a fatal error and counted nowhere).
"""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from helpers.tunnel import (
    TlsFiles, control_url, echo_server, free_port, metric, port_of, run, start_client, start_server, stop,
    wait_listening,
)

from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.server.dataplane import DataPlaneOptions
from inlets_py.runtime.server.proxy_protocol import V2_SIGNATURE, encode


def v2(ver_cmd: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, family, len(body)) + body


BAD = {
    "v1": [
        b"PROXY TCP4 " + b"1" * 120,  # no CRLF within the 107 bytes a v1 header may take
        b"PROXY TCP4 2001:db8::1 127.0.0.1 4242 80\r\n",  # an IPv6 address in a TCP4 header
        b"PROXY TCP6 203.0.113.9 127.0.0.1 4242 80\r\n",  # and the other way round
        b"PROXY TCP4 203.0.113.9 2001:db8::1 4242 80\r\n",  # an IPv6 destination in a TCP4 header: was believed,
        # and the upstream's own header then said UNSPEC, the user's address lost although --allow-ips had passed it
        b"PROXY TCP6 2001:db8::9%eth0 2001:db8::1 4242 80\r\n",  # a scope zone: no address the spec knows, and was
        # passed on as it was, a v1 header to the upstream that nginx and HAProxy refuse
    ],
    "v2": [
        v2(0x21, 0x11, b"\xcb\x00\x71\x09"),  # TCP over IPv4, but the address block holds 4 bytes, not 12
        v2(0x11, 0x11, bytes([203, 0, 113, 9, 127, 0, 0, 1]) + struct.pack("!HH", 4242, 80)),  # version 1 in a v2 header
    ],
}


async def behind_a_balancer(tls: TlsFiles, token: str, version: str):
    """A TCP server expecting ``version`` PROXY headers, a client serving an echo on a public port: (server, the
    client's task, that port, the echo), once the port listens."""
    echo = await echo_server()
    server = await start_server(tls, token)
    server.options = DataPlaneOptions(lb_proxy_protocol=version)
    public = free_port()
    _, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
    await wait_listening("127.0.0.1", public)
    return server, task, public, echo


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_malformed_balancer_header_is_refused_at_once_and_counted(tls: TlsFiles, token: str, version: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Refused at once, counted, and logged once with what was wrong and the source: each was two lines, one with
    the error and one with the source, so counting the log's refusals counted these twice."""
    async def attempt(port: int, header: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(header + b"hello")
        try:
            return await asyncio.wait_for(reader.read(5), 10)  # "hello" if carried: the failure names the header
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async def scenario() -> None:
        server, task, public, echo = await behind_a_balancer(tls, token, version)
        good = encode(version, ("203.0.113.9", 4242), ("127.0.0.1", public))
        reader, writer = await asyncio.open_connection("127.0.0.1", public)  # a right header: carried
        writer.write(good + b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        writer.close()
        with caplog.at_level(logging.INFO, logger="inlets.tcp"):
            for header in BAD[version]:
                assert await attempt(public, header) == b"", header
        refused = metric(server, "tcp_dataplane_refused_total", port=str(public), reason="bad_proxy_header")
        assert refused == len(BAD[version])
        lines = [r.getMessage() for r in caplog.records if "reason=bad_proxy_header" in r.getMessage()]
        assert len(lines) == len(BAD[version]), lines
        assert all("source=127.0.0.1" in line and "error=" in line for line in lines), lines
        await stop(task)
        await server.stop()
        echo.close()

    run(scenario())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_balancer_closing_within_its_header_is_refused_as_a_bad_header(tls: TlsFiles, token: str, version: str) -> None:
    """A connection closed (FIN) part-way through its PROXY header was held until the header timeout (5 s) and
    counted as ``proxy_header_timeout``, as if the balancer were slow; it is refused when the FIN comes, counted as
    ``bad_proxy_header``; one that sent nothing (``wait_listening``'s connection here, a balancer's plain connect
    check) closes uncounted."""
    async def scenario() -> None:
        server, task, public, echo = await behind_a_balancer(tls, token, version)
        header = encode(version, ("203.0.113.9", 4242), ("127.0.0.1", public))
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(header[:10])
        writer.write_eof()
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        except ConnectionResetError:
            pass
        writer.close()
        counted = {reason: metric(server, "tcp_dataplane_refused_total", port=str(public), reason=reason)
                   for reason in ("bad_proxy_header", "proxy_header_timeout")}
        assert counted == {"bad_proxy_header": 1, "proxy_header_timeout": 0}
        await stop(task)
        await server.stop()
        echo.close()

    run(scenario())
