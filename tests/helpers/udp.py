"""UDP test parts shared by the UDP and metrics tests: an echo upstream, a sender that collects the answers,
and a tunnel serving one UDP port."""

from __future__ import annotations

import asyncio

from helpers.tunnel import TlsFiles, control_url, udp_free_port, start_client, start_server

from inlets_py.runtime.core.datagram import send_empty
from inlets_py.runtime.client.tcp_upstreams import Upstream


class UdpEcho(asyncio.DatagramProtocol):
    """Answers every datagram with itself, prefixed by nothing: boundaries must survive."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        if data:
            self.transport.sendto(data, address)
        else:  # the loop's sendto drops an empty datagram
            send_empty(self.transport, address)


async def udp_echo() -> int:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    return transport.get_extra_info("sockname")[1]


async def ask(port: int, payloads: list[bytes], source: str = "127.0.0.1", timeout: float = 5,
              to: str = "127.0.0.1") -> list[bytes]:
    """Send datagrams from one socket to ``to``:``port``, collect the answers in order of arrival."""
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Collector(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, address) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Collector, local_addr=(source, 0), remote_addr=(to, port))
    for payload in payloads:
        if payload:
            transport.sendto(payload)
        else:
            send_empty(transport)
    got = [await asyncio.wait_for(answers.get(), timeout) for _ in payloads]
    transport.close()
    return got


async def udp_tunnel(tls: TlsFiles, token: str, upstream: int, **client: object) -> tuple:
    """A server, a free UDP port on it, and a client serving that port to the upstream 127.0.0.1:``upstream``:
    (server, public port, client, its task)."""
    server = await start_server(tls, token)
    public = udp_free_port()
    found, task = await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", upstream)},
                                     **client)
    return server, public, found, task


class Tagged(asyncio.DatagramProtocol):
    """An upstream that answers each datagram with its own name, so the user sees which client carried the flow."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        self.transport.sendto(self.name, address)
