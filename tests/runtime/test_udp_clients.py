"""UDP through several clients for one port: whose turn a new source's flow is, and what happens to flows when a
client cannot take them or leaves."""

from __future__ import annotations

import asyncio
from collections import Counter

from helpers.tunnel import (TlsFiles, control_url, polled, run, start_client, start_server, stop, udp_free_port,
                            until_connected)
from helpers.udp import Tagged

from inlets_py.runtime.client.dialer import ClientConfig, TunnelClient
from inlets_py.runtime.client.tcp_upstreams import TcpUpstreams, Upstream
from inlets_py.runtime.core.tls import client_context
from inlets_py.runtime.server import registry


async def tagged(name: bytes) -> tuple[asyncio.DatagramTransport, int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Tagged(name), local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


async def new_source(public: int, timeout: float = 5) -> tuple[asyncio.DatagramTransport, bytes]:
    """A new source address sends one datagram: (its socket, kept open so that its flow stays, and who answered)."""
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    class Source(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, address) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Source, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", public))
    transport.sendto(b"hello")
    try:
        return transport, await asyncio.wait_for(answer, timeout)
    except asyncio.TimeoutError:
        transport.close()
        raise


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


#: Longer than DNS allows (253), so the resolver refuses it here without asking a DNS server (test_bridge_dial's).
NEVER = ".".join(["doesnotexist"] * 20) + ".invalid"


async def answered_by(public: int, timeout: float = 2) -> bytes | None:
    """A new source's one datagram: who answered, None when nobody did within ``timeout``."""
    try:
        source, answer = await new_source(public, timeout)
    except asyncio.TimeoutError:
        return None
    source.close()
    return answer


def test_new_flows_go_to_the_other_clients_while_one_cannot_reach_its_upstream(tls: TlsFiles, token: str) -> None:
    """Found by a review helper: three `inlets tcp client`s for one UDP port, the first one's upstream a name that
    does not resolve (`--upstream udp:PORT=dns.typo:53`): 20 of 60 new sources got no answer, every third one for as
    long as it ran, and the server counted none of their datagrams as dropped. A TCP connection there is handed to
    another client and the client is tried after the others for a while (registry.unreachable); a flow the client
    refused now marks it so too, and its datagrams are counted as dropped (upstream_failed)."""

    async def scenario() -> None:
        upstreams = [await tagged(name) for name in (b"B", b"C")]
        server = await start_server(tls, token)
        public = udp_free_port()
        tasks = [(await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream(host, port)}))[1]
                 for host, port in ((NEVER, 53), *(("127.0.0.1", port) for _, port in upstreams))]
        udp = server.udp_ports[f"udp:{public}"]
        try:
            assert await answered_by(public) is None  # the first turn is the first client's, which refuses the flow
            assert udp.counters.dropped == {"upstream_failed": 1}
            answers = Counter([await answered_by(public) for _ in range(30)])
            assert answers[None] <= 1, answers  # a user now and then finds out whether it is back (every 5 s)
            assert abs(answers[b"B"] - answers[b"C"]) <= 2, answers
        finally:
            await stop(*tasks)
            await server.stop()
            for transport, _ in upstreams:
                transport.close()

    run(scenario())


def test_a_client_whose_upstream_is_back_takes_its_share_of_flows_even_from_one_that_never_answers(
        tls: TlsFiles, token: str, monkeypatch) -> None:
    """Once the one flow let through to a marked client reaches its upstream, the client takes its share again. That
    upstream may never answer (syslog, statsd: one way), so the client acknowledges its socket to it, as it does a TCP
    dial; else it got one flow per ``UNREACHABLE_FOR`` (5 s) for good."""
    monkeypatch.setattr(registry, "UNREACHABLE_FOR", 0.3)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        answers, answers_port = await tagged(b"B")
        silent, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))  # one
        silent_port = silent.get_extra_info("sockname")[1]  # way: never answers
        server = await start_server(tls, token)
        public = udp_free_port()
        service = f"udp:{public}"
        mapping = TcpUpstreams({service: Upstream(NEVER, 53)})
        first = TunnelClient(ClientConfig(url=control_url(server), token=token, mode="tcp", services=[service],
                                          ssl_context=client_context(tls.ca), backoff_initial=0.1), mapping.on_stream)
        tasks = [loop.create_task(first.run_forever())]
        await until_connected(first, tasks[0])
        tasks.append((await start_client(control_url(server), token, tls, {service: Upstream("127.0.0.1", answers_port)}))[1])
        udp = server.udp_ports[service]
        (marked, _) = server.control.clients  # in the order they came: the first client's session, then the other's
        try:
            assert await answered_by(public) is None  # refused there: marked
            assert await polled(lambda: udp.counters.dropped.get("upstream_failed") == 1)
            mapping.by_service[service] = Upstream("127.0.0.1", silent_port)  # its upstream is back
            await asyncio.sleep(0.4)  # the mark lapses: the next flow goes to it, and the mark holds while it does
            monkeypatch.setattr(registry, "UNREACHABLE_FOR", 60.0)  # a mark not cleared would outlast the test
            for _ in range(2):  # round robin may start at the other
                await answered_by(public, 0.5)
            assert await polled(lambda: not marked.unreachable), "the acknowledged flow did not clear the mark"
            before = sum(flow.channel.session is marked for flow in udp.flows.values())
            for _ in range(6):
                await answered_by(public, 0.2)
            assert sum(flow.channel.session is marked for flow in udp.flows.values()) - before == 3
        finally:
            await stop(*tasks)
            await server.stop()
            answers.close()
            silent.close()

    run(scenario())
