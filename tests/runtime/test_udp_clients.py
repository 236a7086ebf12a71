"""UDP through several clients for one port: whose turn a new source's flow is, and what happens to flows when a
client cannot take them or leaves."""

from __future__ import annotations

import asyncio
from collections import Counter

from helpers.tunnel import TlsFiles, control_url, run, start_client, start_server, stop, udp_free_port

from inlets_py.runtime.client.tcp_upstreams import Upstream


class Tagged(asyncio.DatagramProtocol):
    """An upstream that answers each datagram with its own name, so the user sees which client carried the flow."""

    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        self.transport.sendto(self.name, address)


async def tagged(name: bytes) -> tuple[asyncio.DatagramTransport, int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Tagged(name), local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


async def new_source(public: int) -> tuple[asyncio.DatagramTransport, bytes]:
    """A new source address sends one datagram: (its socket, kept open so that its flow stays, and who answered)."""
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    class Source(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, address) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Source, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", public))
    transport.sendto(b"hello")
    return transport, await asyncio.wait_for(answer, 5)


def test_the_flows_a_client_at_its_bound_cannot_take_are_shared_by_the_others(tls: TlsFiles, token: str) -> None:
    """Found by a review helper: three `inlets tcp client`s for one UDP port, the third at its flows' bound
    (--max-streams 2: one flow, held): of 300 new sources 200 went to the first client and 100 to the second. Each
    new flow moved the turn one place whoever took it, so the turns that began at the full client fell to the one
    after it, as TCP's did before registry.took. The next turn now begins after the client that took the flow."""

    async def scenario() -> None:
        upstreams = [await tagged(name) for name in (b"A", b"B", b"C")]
        server = await start_server(tls, token)
        public = udp_free_port()
        tasks = [(await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", port)},
                                     **({"max_streams": 2} if name == b"C" else {})))[1]
                 for (_, port), name in zip(upstreams, (b"A", b"B", b"C"))]
        sources = []
        try:
            for _ in range(3):  # one of the first three lands on C, which then holds its one flow
                source, answer = await new_source(public)
                sources.append(source)
                if answer == b"C":
                    break
            assert answer == b"C"
            answers = Counter()
            for _ in range(30):
                source, answer = await new_source(public)
                sources.append(source)
                answers[answer] += 1
            assert answers == {b"A": 15, b"B": 15}, answers
        finally:
            for source in sources:
                source.close()
            await stop(*tasks)
            await server.stop()
            for transport, _ in upstreams:
                transport.close()

    run(scenario())
