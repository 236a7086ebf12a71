"""UDP flows against their bounds: stream limits and a port's max flows drop and count, a spray of sources
takes the place of unanswered flows without locking users out, and a flood leaves TCP room."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import pytest
from helpers.process import client_args, echo_once, server_args, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import (
    TlsFiles, control_url, echo_server, free_port, run, udp_free_port, start_client, start_server, stop,
    wait_listening, until_connected,
)
from helpers.udp import ask, udp_echo, udp_tunnel

from inlets_py.runtime.client.dialer import ClientConfig
from inlets_py.runtime.core.probe import get, parse_url
from inlets_py.runtime.core.tls import client_context
from inlets_py.runtime.client.group import ClientGroup
from inlets_py.runtime.client.tcp_upstreams import TcpUpstreams, Upstream
from inlets_py.runtime.core.services import MAX_DATAGRAM
from inlets_py.runtime.core.channel import DATAGRAM_SHARE, OUT_HIGH_WATER


def test_a_datagram_past_a_stream_limit_is_counted_as_dropped(tls: TlsFiles, token: str) -> None:
    """Found by a review helper: datagrams of new sources past the client's flows were lost with no dropped sample
    and no log line (the client's TOO_MANY_STREAMS reset was not counted), and the server's --max-client-streams
    did not bound the flows at all."""
    async def scenario(server_limit: int, client_limit: int) -> None:
        echo = await udp_echo()
        server = await start_server(tls, token, max_streams=server_limit)
        public = udp_free_port()
        client, task = await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", echo)},
                                          max_streams=client_limit)
        udp = server.udp_ports[f"udp:{public}"]
        udp.assured_after = 0.0  # two exchanges assure a flow: not one a new source may take the place of
        answered = []
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):  # a flow each; the third is one past the limit
            try:
                answered += await ask(public, [source.encode()] * 2, source=source, timeout=1)
            except asyncio.TimeoutError:
                pass
        for _ in range(100):  # bounded: 5 s
            if udp.counters.dropped:
                break
            await asyncio.sleep(0.05)
        assert answered == [b"127.0.0.1"] * 2 + [b"127.0.0.2"] * 2
        assert udp.counters.dropped == {"client_stream_limit": 2}  # the third source's two datagrams
        await stop(task)
        await server.stop()

    run(scenario(server_limit=4, client_limit=1024))  # the server's --max-client-streams, half of it for UDP
    run(scenario(server_limit=4096, client_limit=4))  # the client's --max-streams, of which it keeps half for TCP


@pytest.mark.parametrize("server_limit, client_limit", [([], ["--max-streams", "64"]),
                                                         (["--max-client-streams", "64"], [])])
def test_a_flood_of_udp_sources_leaves_streams_for_tcp(tmp_path: Path, tls: TlsFiles, token_file: Path,
                                                       echo_port: int, server_limit: list[str],
                                                       client_limit: list[str]) -> None:
    """One datagram from each of many source addresses (anyone can send them, and forge the source) opens a
    flow each; the flows took every stream the client allows (--max-streams), so for their 60 s every TCP
    connection through that client was refused. At most half of them are UDP flows now. The same when the
    server's --max-client-streams is the lower limit (a review helper: 512 with the client's default 1024 let
    600 sources take all 512, and 0 of 5 TCP connections went through)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read
    sink.bind(("127.0.0.1", 0))
    control, public, tcp_public = free_port(), udp_free_port(), free_port()
    server = spawn(*server_args(control, tls, token_file, *server_limit), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, *client_limit,
                                "--upstream", f"udp:{public}=127.0.0.1:{sink.getsockname()[1]}",
                                "--upstream", f"{tcp_public}=127.0.0.1:{echo_port}"), log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "client.log", "event=connected")
        wait_port(tcp_public)
        for i in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as source:  # a new source port each
                source.sendto(b"x", ("127.0.0.1", public))
            if i % 20 == 19:
                time.sleep(0.05)
        time.sleep(1.0)
        answers = [echo_once(tcp_public, b"tcp %d" % i) for i in range(10)]
        assert answers == [b"tcp %d" % i for i in range(10)]
    finally:
        stop_all(client, server)
        sink.close()


def test_every_datagram_of_a_flow_the_client_refuses_is_counted_as_dropped(tls: TlsFiles, token: str) -> None:
    """Found by a review helper: a new source that sent 5 datagrams before the client's TOO_MANY_STREAMS reset came
    back lost all 5 (each counted in udp_dataplane_datagrams_total{direction="in"}), but dropped_total said 1.
    The client refuses a flow the server had room for when TCP users hold the rest of its --max-streams."""
    async def scenario() -> None:
        echo, tcp_echo = await udp_echo(), await echo_server()
        server = await start_server(tls, token)
        public, tcp_public = udp_free_port(), free_port()
        _, task = await start_client(control_url(server), token, tls, max_streams=4, mapping={
            f"udp:{public}": Upstream("127.0.0.1", echo), tcp_public: Upstream("127.0.0.1", tcp_echo.sockets[0].getsockname()[1])})
        udp = server.udp_ports[f"udp:{public}"]
        users = [await asyncio.open_connection("127.0.0.1", tcp_public) for _ in range(3)]  # 3 of the client's 4
        for reader, writer in users:
            writer.write(b"held")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
        assert await ask(public, [b"first"], source="127.0.0.1") == [b"first"]  # takes the client's fourth stream
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.2", 0))
        for i in range(5):  # in one go: all sent on the flow (the server had room: 1 of 2) before the refusal is back
            sock.sendto(b"late %d" % i, ("127.0.0.1", public))
        for _ in range(100):  # bounded: 5 s
            if udp.counters.dropped:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        sock.close()
        assert udp.counters.datagrams_in == 6
        assert udp.counters.dropped == {"client_stream_limit": 5}
        for _, writer in users:
            writer.close()
        await stop(task)
        await server.stop()
        tcp_echo.close()

    run(scenario())


def test_flows_past_the_ports_bound_are_dropped_and_counted(tls: TlsFiles, token: str) -> None:
    """A UDP port keeps at most ``max_flows`` flows (each holds a stream and a table entry): a spray of sources
    grew the table without end when the bound was gone, with every test passing."""
    async def scenario() -> None:
        echo = await udp_echo()
        server, public, client, task = await udp_tunnel(tls, token, echo)
        udp = server.udp_ports[f"udp:{public}"]
        udp.max_flows = 2
        udp.assured_after = 0.0  # two exchanges assure a flow: not one a new source may take the place of
        answered = []
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):  # the third is one flow past the bound
            try:
                answered += await ask(public, [source.encode()] * 2, source=source, timeout=1)
            except asyncio.TimeoutError:
                pass
        assert answered == [b"127.0.0.1"] * 2 + [b"127.0.0.2"] * 2 and len(udp.flows) == 2
        assert udp.counters.dropped == {"too_many_flows": 2}  # the third source's two datagrams
        await stop(task)
        await server.stop()

    run(scenario())


class AnswersHello(asyncio.DatagramProtocol):
    """An upstream that answers only what its protocol asks ("hi ..."): junk from a spray of sources goes unanswered."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, address) -> None:
        if data.startswith(b"hi"):
            self.transport.sendto(data, address)


_sprayed: set[tuple[str, int]] = set()  # every source a spray used: the kernel may hand a closed one's port out again


def _new_source(source: str) -> socket.socket:
    """A socket on a source port no spray used before: CI once got a sprayed source's port back while its flow was
    still open, so the datagram went on that flow, opened none, and one eviction fewer came than the test counts."""
    for _ in range(100):  # bounded: the ephemeral range holds thousands
        one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        one.bind((source, 0))
        if one.getsockname() not in _sprayed:
            _sprayed.add(one.getsockname())
            return one
        one.close()
    raise AssertionError(f"no new source port on {source} in 100 tries")


async def spray(public: int, count: int, source: str = "127.0.0.2") -> None:
    """One datagram of junk from each of ``count`` new source ports, as a host (or a forger) sprays a port."""
    for i in range(count):
        with _new_source(source) as one:
            one.sendto(b"junk", ("127.0.0.1", public))
        if i % 10 == 9:
            await asyncio.sleep(0.01)  # let the server read them: a full socket buffer would drop, not test


@pytest.mark.parametrize("bound", ["port", "client"])
def test_a_new_source_takes_the_place_of_the_oldest_flow_never_answered(tls: TlsFiles, token: str, bound: str) -> None:
    """A spray of sources (one host's source ports, or forged ones) held every flow of a port (``max_flows``) or of
    its client (half its --max-streams) for their minute of idle timeout, and each new user's datagrams were dropped
    the while. As Linux's conntrack drops unassured entries first, a new source now takes the place of the oldest
    flow no answer came back on; assured flows are kept, and a source past those is still dropped and counted."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_datagram_endpoint(AnswersHello, local_addr=("127.0.0.1", 0))
        limits = {"max_streams": 8} if bound == "client" else {}  # the client's 8 streams: 4 UDP flows
        server, public, client, task = await udp_tunnel(tls, token, upstream.get_extra_info("sockname")[1], **limits)
        udp = server.udp_ports[f"udp:{public}"]
        if bound == "port":
            udp.max_flows = 4
        udp.assured_after = 0.0  # a datagram after the first answer assures a flow: no test waits the 2 s
        try:
            answered = await ask(public, [b"hi 1", b"hi 1"], source="127.0.0.1")
            await spray(public, 30)
            for _ in range(100):  # bounded: 5 s
                if udp.counters.evicted == 27:  # 3 flows held by the spray, each new one in the oldest's place
                    break
                await asyncio.sleep(0.05)
            assert len(udp.flows) == 4 and udp.counters.evicted == 27, (len(udp.flows), udp.counters)
            for n in (3, 4, 5):
                answered += await ask(public, [b"hi %d" % n] * 2, source=f"127.0.0.{n}", timeout=2)
            assert answered == [b"hi 1", b"hi 1", b"hi 3", b"hi 3", b"hi 4", b"hi 4", b"hi 5", b"hi 5"]
            assert udp.counters.dropped == {}
            with pytest.raises(asyncio.TimeoutError):  # every flow is assured: nothing to take the place of
                await ask(public, [b"hi 6"], source="127.0.0.6", timeout=1)
            reason = "too_many_flows" if bound == "port" else "client_stream_limit"
            assert udp.counters.dropped == {reason: 1} and sorted(a[0] for a in udp.flows) == [
                "127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
            metrics = await asyncio.to_thread(get, parse_url(control_url(server)), "/metrics", ca_file=tls.ca, token=token)
            assert f'udp_dataplane_flows_evicted_total{{port="{public}"}} 30.0' in metrics.body.splitlines()
        finally:
            await stop(task)
            await server.stop()
            upstream.close()

    run(scenario())


@pytest.mark.parametrize("bound", ["port", "client"])
def test_a_spray_of_sources_an_upstream_answers_does_not_lock_new_users_out(tls: TlsFiles, token: str,
                                                                           bound: str) -> None:
    """Found by a review helper: a flow kept its place from its first answer, so 3,000 sources sprayed in 5 s at
    an upstream that answers each datagram (an echo; DNS does too) took the client's 512 flows, and each new user
    after it was dropped (client_stream_limit, 2,455 of them) for the flows' idle minute: 0 of 3 answered. As
    conntrack's UDP entries, a flow now keeps its place once a datagram goes on it after its answer, ``assured_after``
    from its opening (a stream, not a one-shot exchange); until then a new source takes the place of the one least
    recently active: a flow still going (here younger than ``assured_after``) is never that one."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        echo = await udp_echo()
        limits = {"max_streams": 8} if bound == "client" else {}  # the client's 8 streams: 4 UDP flows
        server, public, client, task = await udp_tunnel(tls, token, echo, **limits)
        udp = server.udp_ports[f"udp:{public}"]
        if bound == "port":
            udp.max_flows = 4
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Steady(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, address) -> None:
                answers.put_nowait(data)

        steady, _ = await loop.create_datagram_endpoint(Steady, local_addr=("127.0.0.1", 0),
                                                        remote_addr=("127.0.0.1", public))
        try:
            for n in range(15):  # a flow that goes on, 2 new sources (answered once each) between two of its datagrams
                steady.sendto(b"steady %d" % n)
                assert await asyncio.wait_for(answers.get(), 5) == b"steady %d" % n
                await spray(public, 2)
            for _ in range(100):  # bounded: 5 s
                if udp.counters.evicted + sum(udp.counters.dropped.values()) >= 27:
                    break
                await asyncio.sleep(0.05)
            assert udp.counters.evicted == 27 and udp.counters.dropped == {}, udp.counters  # never the steady flow
            assert steady.get_extra_info("sockname") in udp.flows
            for n in (3, 4):  # new users, each in the place of the flow least recently active
                assert await ask(public, [b"hi %d" % n], source=f"127.0.0.{n}", timeout=2) == [b"hi %d" % n]
            assert udp.counters.evicted == 29 and udp.counters.dropped == {}, udp.counters
        finally:
            steady.close()
            await stop(task)
            await server.stop()

    run(scenario())


def test_a_spray_through_one_server_leaves_a_client_that_holds_two_room_for_the_others_users(tls: TlsFiles,
                                                                                             token: str) -> None:
    """Found by a review helper: a client holding two servers (--url A --url B) counted its UDP flows together, up to
    half its --max-streams, while each server bounds (and evicts) by that half for its own session. Four sources
    sprayed at A took the client's 4 flows; B, with none in its view, opened each new user's flow, the client refused
    it (client_stream_limit), and B had no flow of its own to end in its place: its users were locked out for the
    spray's idle minute. The client now counts flows per server, as its --max-streams bounds each one's streams."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_datagram_endpoint(AnswersHello, local_addr=("127.0.0.1", 0))
        public = udp_free_port()
        servers = [await start_server(tls, token, data_addr=address) for address in ("127.0.0.1", "127.0.0.3")]
        upstreams = TcpUpstreams({f"udp:{public}": Upstream("127.0.0.1", upstream.get_extra_info("sockname")[1])},
                                 max_udp_flows=4)  # as the CLI sets it for --max-streams 8
        group = ClientGroup([ClientConfig(url=control_url(server), token=token, mode="tcp", services=upstreams.services,
                                          ssl_context=client_context(tls.ca), max_streams=8, backoff_initial=0.1,
                                          backoff_max=0.5) for server in servers], upstreams.on_stream)
        tasks = [asyncio.ensure_future(client.run_forever()) for client in group.clients]
        try:
            for client, task in zip(group.clients, tasks):
                await until_connected(client, task)
            at_a, at_b = (server.udp_ports[f"udp:{public}"] for server in servers)
            await spray(public, 4)  # A's 4 flows, never answered
            for _ in range(100):  # bounded: 5 s
                if len(at_a.flows) == 4:
                    break
                await asyncio.sleep(0.05)
            assert len(at_a.flows) == 4, at_a.counters
            assert await ask(public, [b"hi b"], to="127.0.0.3", timeout=2) == [b"hi b"], at_b.counters
            assert await ask(public, [b"hi a"], source="127.0.0.4", timeout=2) == [b"hi a"]  # A: in a sprayed flow's place
            assert at_b.counters.dropped == {} and at_a.counters.evicted == 1
        finally:
            await stop(*tasks)
            for server in servers:
                await server.stop()
            upstream.close()

    run(scenario())


def test_a_udp_flood_into_a_congested_tunnel_leaves_tcp_room_to_move(tmp_path: Path, tls: TlsFiles, token: str,
                                                                      token_file: Path) -> None:
    """Datagrams queued for a tunnel that is not being read (a client stopped, or a link slower than the flood) were
    bounded only by the session's 4 MiB for everything: a flood across 128 sources filled it by itself, which stops
    every stream, so a TCP user's bytes on the same tunnel waited until the client had read 3 MiB of datagrams.
    Datagrams now wait up to their share (DATAGRAM_SHARE) and are dropped past it; TCP's bytes are taken at once."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the flood's upstream: never answers
    sink.bind(("127.0.0.1", 0))

    async def scenario() -> None:
        tcp_echo = await echo_server()
        server = await start_server(tls, token)
        public, tcp_public = udp_free_port(), free_port()
        port = int(control_url(server).rsplit(":", 1)[1])
        client = spawn(*client_args(port, tls, token_file, "--upstream", f"udp:{public}=127.0.0.1:{sink.getsockname()[1]}",
                                    "--upstream", f"{tcp_public}=127.0.0.1:{tcp_echo.sockets[0].getsockname()[1]}"),
                       log=tmp_path / "client.log")
        try:
            await wait_listening("127.0.0.1", tcp_public)
            (session,) = server.control.clients
            client.send_signal(signal.SIGSTOP)  # reads nothing more: the tunnel backs up into the server's queue
            sources = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(128)]  # 32 MiB of first credit
            deadline = time.monotonic() + 20
            for round_ in range(240):  # 128 x 240 x 1,200 B: 37 MB, bounded in time too
                for source in sources:
                    source.sendto(b"u" * 1200, ("127.0.0.1", public))
                await asyncio.sleep(0)  # the server, on this loop, reads them
                if time.monotonic() > deadline:
                    break
            for source in sources:
                source.close()
            await asyncio.sleep(0.5)
            udp = server.udp_ports[f"udp:{public}"]
            assert udp.counters.dropped.get("congested", 0) > 0, udp.counters  # the flood went past what waits
            queued = session.mux.buffered
            assert session.mux.datagram_buffered < DATAGRAM_SHARE + MAX_DATAGRAM and queued < OUT_HIGH_WATER, queued
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp_public)
            writer.write(b"t" * 65536)
            for _ in range(100):  # bounded: 5 s
                if session.mux.buffered >= queued + 65536:
                    break
                await asyncio.sleep(0.05)
            assert session.mux.buffered >= queued + 65536, (queued, session.mux.buffered)  # taken, not held back
            client.send_signal(signal.SIGCONT)
            assert await asyncio.wait_for(reader.readexactly(65536), 20) == b"t" * 65536
            writer.close()
        finally:
            client.send_signal(signal.SIGCONT)
            assert await asyncio.to_thread(stop_all, client) == [0]
            await server.stop()
            tcp_echo.close()

    try:
        run(scenario(), 60)
    finally:
        sink.close()
