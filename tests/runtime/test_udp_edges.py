"""UDP flows at their edges: a client's flow bound shared by its ports, a new flow's first burst, and a client
whose upstream refuses (ICMP unreachable) among others serving the port."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter

import pytest
from helpers.tunnel import TlsFiles, control_url, polled, run, start_client, start_server, stop, udp_free_port
from helpers.udp import Tagged, ask, udp_echo

from inlets_py.runtime.client import udp_upstream
from inlets_py.runtime.client.tcp_upstreams import Upstream


class Counting(asyncio.DatagramProtocol):
    """An upstream that never answers, and counts what reaches it."""

    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, address) -> None:
        self.received += 1


async def _endpoint(protocol: asyncio.DatagramProtocol) -> tuple[asyncio.DatagramTransport, int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: protocol,
                                                                             local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


def _nothing_listens() -> int:
    """A UDP port on loopback nothing listens on: each datagram to it comes back as ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        return closed.getsockname()[1]


async def _spray(public: int, count: int) -> None:
    """One datagram from each of ``count`` new sources (127.0.0.2's ports), kept open so no source port comes back."""
    sources = []
    try:
        for i in range(count):
            one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sources.append(one)
            one.bind(("127.0.0.2", 0))
            one.sendto(b"junk", ("127.0.0.1", public))
            if i % 10 == 9:
                await asyncio.sleep(0.01)  # let the server read them: a full socket buffer would drop, not test
        await asyncio.sleep(0.2)
    finally:
        for one in sources:
            one.close()


@pytest.mark.parametrize("sprayed", ["silent", "echo"])
def test_a_spray_at_one_port_leaves_the_clients_other_ports_room_for_new_users(tls: TlsFiles, token: str,
                                                                             sprayed: str) -> None:
    """Found by a tester: one client, two UDP ports; 520 one-shot sources at port A (its upstream down) took the
    client's flows, and new users of port B were dropped (client_stream_limit; 1 of 5 answered): a new source took
    the place only of a flow of its own port, while the client's bound counts its flows on all of them. The flow that
    goes is now the client's oldest never answered (else least recently active not assured), whichever its port."""

    async def scenario() -> None:
        silent, silent_port = await _endpoint(Counting())
        echo = await udp_echo()
        server = await start_server(tls, token)
        a, b = udp_free_port(), udp_free_port()
        upstream_a = silent_port if sprayed == "silent" else echo
        _, task = await start_client(control_url(server), token, tls, {
            f"udp:{a}": Upstream("127.0.0.1", upstream_a), f"udp:{b}": Upstream("127.0.0.1", echo)},
            max_streams=8)  # the client's 8 streams: 4 UDP flows, both ports together
        at_a, at_b = server.udp_ports[f"udp:{a}"], server.udp_ports[f"udp:{b}"]
        try:
            await _spray(a, 12)
            assert await polled(lambda: len(at_a.flows) == 4 and at_a.counters.evicted == 8), at_a.counters
            for n in (3, 4):
                assert await ask(b, [b"hi %d" % n], source=f"127.0.0.{n}", timeout=2) == [b"hi %d" % n], at_b.counters
            assert at_b.counters.dropped == {} and len(at_b.flows) == 2 and len(at_a.flows) == 2
            assert at_a.counters.evicted == 10 and at_b.counters.evicted == 0  # counted where the flow ended
        finally:
            await stop(task)
            await server.stop()
            silent.close()

    run(scenario())


def test_a_new_flows_first_burst_reaches_an_upstream_given_as_an_address(tls: TlsFiles, token: str) -> None:
    """Found by a tester: 300 datagrams of 100 B from a new source, on loopback: 64 reached the upstream, 236 were
    dropped on the client (logged 10 s later), while on a flow already open none were. The burst came in one
    websocket message before the flow's socket was made (a task), and 64 datagrams waited for it. An address's
    socket is made at once now: a UDP connect waits for nothing."""

    async def scenario() -> None:
        counting = Counting()
        upstream, port = await _endpoint(counting)
        upstream.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        server = await start_server(tls, token)
        public = udp_free_port()
        _, task = await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", port)})
        udp = server.udp_ports[f"udp:{public}"]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        try:
            for i in range(300):
                sender.sendto(i.to_bytes(4, "big") + b"x" * 96, ("127.0.0.1", public))
            assert await polled(lambda: counting.received == 300, timeout=3), (counting.received, udp.counters)
            assert udp.counters.dropped == {}
        finally:
            sender.close()
            await stop(task)
            await server.stop()
            upstream.close()

    run(scenario())


def test_a_flows_datagrams_waiting_for_a_names_socket_are_bounded_in_bytes_not_count() -> None:
    """While an upstream's name resolves, a flow kept 64 datagrams whatever their size: a burst of 300 small ones
    lost 236. It keeps as many bytes as its stream's first window (256 KiB) now, all flows still EARLY_BYTES."""

    class Channel:  # the tunnel side: credit given back as the datagrams are taken
        target = "udp:5353"

        def consumed(self, count: int) -> None:
            pass

    async def scenario() -> None:
        flow = udp_upstream.UdpUpstream(Channel())  # type: ignore[arg-type]  # no socket yet
        for _ in range(300):
            flow.on_data(b"d" * 100)
        assert flow.dropped == 0 and len(flow._early) == 300
        big = udp_upstream.UdpUpstream(Channel())  # type: ignore[arg-type]
        for _ in range(10):
            big.on_data(b"d" * 60_000)
        assert len(big._early) == udp_upstream.EARLY_FLOW_BYTES // 60_000 and big.dropped == 10 - len(big._early)
        empty = udp_upstream.UdpUpstream(Channel())  # type: ignore[arg-type]
        for _ in range(10_000):  # empty datagrams cost the peer no credit: counted as nothing, kept without bound
            empty.on_data(b"")
        bound = udp_upstream.EARLY_FLOW_BYTES // udp_upstream.DATAGRAM_COST
        assert len(empty._early) == bound and empty.dropped == 10_000 - bound, (len(empty._early), empty.dropped)
        flow.close()
        big.close()
        empty.close()
        assert udp_upstream.UdpUpstream.early_bytes == 0

    run(scenario())


def test_new_flows_go_to_the_other_client_while_ones_upstream_refuses(tls: TlsFiles, token: str) -> None:
    """Found by a tester: two clients serve a UDP port, X's upstream refuses (nothing listens: ICMP port
    unreachable), Y's answers: every other new source was lost (5 of 10), where a TCP connection goes to the client
    that reaches its upstream. X acknowledged the flow's socket, which told the server its upstream was reachable,
    and the refusal was only logged. A refusal before any answer now fails the flow (REFUSED), as a refused TCP dial:
    its datagrams are counted (upstream_failed), X is tried after Y, and that source's next datagram goes to Y."""

    async def scenario() -> None:
        tagged, tagged_port = await _endpoint(Tagged(b"Y"))
        server = await start_server(tls, token)
        public = udp_free_port()
        tasks = [(await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", port)}))[1]
                 for port in (_nothing_listens(), tagged_port)]
        udp = server.udp_ports[f"udp:{public}"]
        sources = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
        try:
            answers: Counter[bytes | None] = Counter()
            for round_ in range(2):
                for one in sources:
                    one.setblocking(False)
                    one.sendto(b"%d" % round_, ("127.0.0.1", public))
                    answers[await _answer(one)] += 1
            assert answers[None] <= 1 and answers[b"Y"] >= 19, answers  # one finds X out, then it rests
            assert udp.counters.dropped == {"upstream_failed": answers[None]}, udp.counters
        finally:
            for one in sources:
                one.close()
            await stop(*tasks)
            await server.stop()
            tagged.close()

    run(scenario())


async def _answer(one: socket.socket, timeout: float = 2.0) -> bytes | None:
    """The answer ``one`` got within ``timeout``, None if none came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            return one.recv(100)
        except BlockingIOError:
            await asyncio.sleep(0.01)
    return None


def test_a_one_way_upstream_restarting_leaves_a_long_lived_flow_alone(tls: TlsFiles, token: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A review of the refusal rule above: a one-way upstream (syslog, statsd) never answers, so any ICMP error, while
    it restarts say, failed its long-lived flow and marked the client unreachable. Past the flow's first seconds
    (``REFUSAL_WINDOW``) a refusal is only logged, as after an answer."""

    async def scenario() -> None:
        got: list[bytes] = []

        class Collector(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, address) -> None:
                got.append(data)

        collector, port = await _endpoint(Collector())
        server = await start_server(tls, token)
        public = udp_free_port()
        task = (await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", port)}))[1]
        udp = server.udp_ports[f"udp:{public}"]
        source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            source.sendto(b"first", ("127.0.0.1", public))
            assert await polled(lambda: got == [b"first"], 5), got
            await asyncio.sleep(udp_upstream.REFUSAL_WINDOW + 0.3)  # a long-lived flow, never answered
            collector.close()  # the collector restarts: the next datagram comes back as ICMP port unreachable
            source.sendto(b"lost", ("127.0.0.1", public))
            assert await polled(lambda: "event=upstream_failed" in caplog.text, 5), caplog.text  # its ICMP came back
            collector, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Collector, local_addr=("127.0.0.1", port))
            source.sendto(b"after", ("127.0.0.1", public))
            assert await polled(lambda: got[-1:] == [b"after"], 5), got
            assert "upstream_failed" not in udp.counters.dropped, udp.counters  # the flow carried on
            assert len(udp.flows) == 1
        finally:
            source.close()
            await stop(task)
            await server.stop()
            collector.close()

    caplog.set_level(logging.INFO, logger="inlets.udp")
    run(scenario())
