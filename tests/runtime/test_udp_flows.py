"""UDP through the tunnel: real DNS with dig and dnsmasq, datagram boundaries, a flow per source that ends when
idle, and answers that leave from the address the user wrote to."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers.faults import BlockingOnWrap
from helpers.proxy_daemons import binary
from helpers.process import client_args, server_args, spawn, stop_all, wait_for_text
from helpers.tunnel import (
    TlsFiles, control_url, free_port, polled, run, udp_free_port, start_client, start_server, stop, until_connected,
)
from helpers.udp import ask, udp_echo, udp_tunnel

from inlets_py.runtime.client.dialer import ClientConfig, TunnelClient
from inlets_py.runtime.core.datagram import send_empty
from inlets_py.runtime.core.tls import client_context
from inlets_py.runtime.client.tcp_upstreams import Upstream, parse_upstreams
from inlets_py.runtime.core.services import MAX_DATAGRAM


def test_parse_udp_upstreams() -> None:
    mapping = parse_upstreams(["127.0.0.1", "udp:5353=10.0.0.2:53", "2222=10.0.0.3:22"], ["80"], ["53,51820"])
    assert mapping == {
        "udp:5353": Upstream("10.0.0.2", 53), "tcp:2222": Upstream("10.0.0.3", 22), "tcp:80": Upstream("127.0.0.1", 80),
        "udp:53": Upstream("127.0.0.1", 53), "udp:51820": Upstream("127.0.0.1", 51820),
    }


def test_datagram_boundaries_and_sizes_survive(tls: TlsFiles, token: str) -> None:
    async def scenario() -> None:
        echo = await udp_echo()
        server, public, client, task = await udp_tunnel(tls, token, echo)
        sizes = [0, 1, 2, 100, 1400, 9000, 65000, MAX_DATAGRAM]  # 0: an empty datagram is one too
        payloads = [bytes([i]) * size for i, size in enumerate(sizes)]
        got = await ask(public, payloads)
        assert sorted(got, key=len) == payloads  # each datagram whole, none merged or split
        udp = server.udp_ports[f"udp:{public}"]
        assert udp.counters.datagrams_in == len(sizes) and udp.counters.datagrams_out == len(sizes)
        await stop(task)
        await server.stop()

    run(scenario())


def test_a_flow_per_source_address_ends_when_idle(tls: TlsFiles, token: str) -> None:
    async def scenario() -> None:
        echo = await udp_echo()
        server, public, client, task = await udp_tunnel(tls, token, echo)
        udp = server.udp_ports[f"udp:{public}"]
        udp.idle_timeout = 2.0  # 0.6 s ended the first flow before the second was asked, once on a busy machine
        assert await ask(public, [b"one"], source="127.0.0.1") == [b"one"]
        assert await ask(public, [b"two"], source="127.0.0.2") == [b"two"]
        assert len(udp.flows) == 2 and {a[0] for a in udp.flows} == {"127.0.0.1", "127.0.0.2"}
        assert client.session.open_streams == 2 and client.session.udp_flows == 2
        # the sweep first wakes 5 s after the start (the default), then each 1 s; the resets reach the client later
        await polled(lambda: not udp.flows and client.session.open_streams == client.session.udp_flows == 0, 12)
        assert not udp.flows and client.session.open_streams == 0  # both ends forgot them
        assert client.session.udp_flows == 0  # and the client's count of flows (TcpUpstreams counts per session)
        assert await ask(public, [b"again"]) == [b"again"]  # a new flow after the idle end
        await stop(task)
        await server.stop()

    run(scenario())


@pytest.fixture
def dnsmasq(tmp_path: Path):
    exe = binary("dnsmasq")
    port = udp_free_port()
    argv = [exe, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--address=/tunnel.test/192.0.2.42", "--log-facility=-"]
    process = subprocess.Popen(argv, stdout=open(tmp_path / "dnsmasq.log", "w"), stderr=subprocess.STDOUT)
    time.sleep(0.3)
    if process.poll() is not None:
        pytest.fail(f"dnsmasq did not start: {(tmp_path / 'dnsmasq.log').read_text()}")
    yield port
    process.terminate()
    process.wait(5)


def test_real_dns_query_with_dig_through_the_tunnel(tmp_path: Path, tls: TlsFiles, token_file: Path, dnsmasq: int) -> None:
    dig = binary("dig")
    control, public = free_port(), udp_free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    client = spawn(*client_args(control, tls, token_file, "--upstream", f"udp:{public}=127.0.0.1:{dnsmasq}"),
                   log=tmp_path / "client.log")
    try:
        wait_for_text(tmp_path / "server.log", f"service=udp:{public}")
        answer = subprocess.run([dig, "@127.0.0.1", "-p", str(public), "+tries=1", "+time=3", "+short", "tunnel.test"],
                                capture_output=True, text=True, timeout=15)
        assert answer.stdout.strip() == "192.0.2.42", answer
        full = subprocess.run([dig, "@127.0.0.1", "-p", str(public), "+tries=1", "+time=3", "nothing.example"],
                              capture_output=True, text=True, timeout=15)
        assert "status: REFUSED" in full.stdout or "status: NXDOMAIN" in full.stdout, full.stdout
    finally:
        stop_all(client, server)


def test_a_client_that_half_closes_flows_leaves_no_streams_on_the_server(tls: TlsFiles, token: str) -> None:
    """A client (hostile, or broken) that answers each UDP flow with FIN: the server forgot the flow but kept
    its stream open, one more per datagram that opened a flow, for as long as the client stayed."""
    async def scenario() -> None:
        server = await start_server(tls, token)
        public = udp_free_port()
        config = ClientConfig(url=control_url(server), token=token, mode="tcp", services=[f"udp:{public}"],
                              ssl_context=client_context(tls.ca))
        client = TunnelClient(config, lambda channel: channel.write_eof())
        task = asyncio.ensure_future(client.run_forever())
        await until_connected(client, task)
        (session,) = server.control.clients
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(200):  # each one finds the last flow ended and opens another
                sender.sendto(b"x", ("127.0.0.1", public))
                await asyncio.sleep(0.002)
        await polled(lambda: session.open_streams == 0 and not server.udp_ports[f"udp:{public}"].flows)  # the last FINs
        assert server.udp_ports[f"udp:{public}"].counters.datagrams_in > 20
        assert session.open_streams == 0 and not server.udp_ports[f"udp:{public}"].flows
        await stop(task)
        await server.stop()

    run(scenario())


def test_a_client_that_drains_hands_its_udp_flows_to_the_others_at_once(tls: TlsFiles, token: str) -> None:
    """Two clients serve a UDP port; one stops gracefully (SIGTERM, or SIGHUP's reconnect) while a source keeps
    sending. Its flow stayed bound to it, so it waited out its whole --drain-timeout (30 s) for a flow that never
    finishes, and then the flow was cut anyway. The flow now ends at its GOAWAY and the next datagram opens one
    on the other client."""
    async def scenario() -> None:
        echo = await udp_echo()
        server = await start_server(tls, token)
        public = udp_free_port()
        url = control_url(server)
        mapping = {f"udp:{public}": Upstream("127.0.0.1", echo)}
        first, first_task = await start_client(url, token, tls, mapping)
        second, second_task = await start_client(url, token, tls, mapping)
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Collector(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, address) -> None:
                answers.put_nowait(data)

        source, _ = await loop.create_datagram_endpoint(Collector, remote_addr=("127.0.0.1", public))
        source.sendto(b"one")
        assert await asyncio.wait_for(answers.get(), 5) == b"one"
        (flow,) = server.udp_ports[f"udp:{public}"].flows.values()
        holder = first if flow.channel.session.name == first.client_id else second
        assert holder.config.drain_timeout == 30
        started = loop.time()
        await asyncio.wait_for(holder.shutdown(), 10)
        assert loop.time() - started < 5
        source.sendto(b"two")
        assert await asyncio.wait_for(answers.get(), 5) == b"two"
        source.close()
        await stop(first_task, second_task)
        await server.stop()

    run(scenario())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_answers_leave_from_the_address_the_user_wrote_to_on_every_interface(loop: str, tls: TlsFiles, token: str) -> None:
    """No --data-addr: the port listens on every interface. An answer to a datagram sent to 127.0.0.2 left from
    127.0.0.1 (the kernel's choice), which a connected socket (dig, resolvers, WireGuard) never receives."""
    targets = ["127.0.0.1", "127.0.0.2", "127.0.0.3"] + (["::1"] if _ipv6_loopback() else [])

    async def scenario() -> None:
        echo = await udp_echo()
        server = await start_server(tls, token, data_addr=None)
        public = udp_free_port()
        client, task = await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", echo)})
        in_thread = asyncio.get_running_loop().run_in_executor  # uvloop has no sock_recvfrom
        for target in targets:
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as user:
                user.settimeout(5)
                user.connect((target, public))  # takes answers from (target, public) only
                user.send(target.encode())
                assert await in_thread(None, user.recv, 100) == target.encode()
            with socket.socket(family, socket.SOCK_DGRAM) as user:  # and, said plainly, from where
                user.settimeout(5)
                user.sendto(b"", (target, public))  # an empty datagram takes the same way
                data, source = await in_thread(None, user.recvfrom, 100)
                assert (data, source[:2]) == (b"", (target, public))
        udp = server.udp_ports[f"udp:{public}"]
        assert udp.counters.datagrams_out == 2 * len(targets) and not udp.counters.dropped
        await stop(task)
        await server.stop()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(asyncio.wait_for(scenario(), 60))
    else:
        run(scenario())


def test_an_ipv4_only_host_answers_from_the_address_written_to_too() -> None:
    """Where the host has no IPv6 the port is bound on 0.0.0.0: IP_PKTINFO instead of IPV6_PKTINFO."""
    from inlets_py.runtime.server.udp_socket import UdpSocket, _bound

    class Echo:
        def connection_made(self, transport: UdpSocket) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, address: tuple, local: bytes | None) -> None:
            self.transport.sendto(data, address, local)

        def send_failed(self) -> None:
            raise AssertionError("an answer could not be sent")

        def overflowed(self, count: int) -> None:
            raise AssertionError(f"{count} datagrams dropped by the kernel")

        def connection_lost(self, exc: Exception | None) -> None:
            pass

    async def scenario() -> None:
        port = udp_free_port()
        endpoint = UdpSocket(_bound(socket.AF_INET, ("0.0.0.0", port)), Echo())
        in_thread = asyncio.get_running_loop().run_in_executor
        try:
            for target in ("127.0.0.1", "127.0.0.2"):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as user:
                    user.settimeout(5)
                    user.connect((target, port))
                    user.send(target.encode())
                    assert await in_thread(None, user.recv, 100) == target.encode()
        finally:
            endpoint.close()

    run(scenario())


def test_an_empty_datagram_leaves_the_socket_non_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    """``send_empty`` borrows the transport's descriptor in a socket object; under PyPy that made it blocking."""
    monkeypatch.setattr(socket, "socket", BlockingOnWrap)

    async def scenario() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Peer(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, address) -> None:
                if not got.done():
                    got.set_result(data)

        peer, _ = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
        sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        send_empty(sender, peer.get_extra_info("sockname"))
        data = await asyncio.wait_for(got, 5)
        blocking = os.get_blocking(sender.get_extra_info("socket").fileno())
        peer.close()
        sender.close()
        return blocking, data

    blocking, data = asyncio.run(scenario())
    assert data == b""
    assert not blocking, "the transport's descriptor was left blocking"


def test_allow_ips_bounds_udp_sources_on_a_dual_stack_port(tls: TlsFiles, token: str) -> None:
    """No --data-addr: the UDP port is dual stack, and an IPv4 user's address comes as ::ffff:127.0.0.2. The
    allow-list matches it as the IPv4 address it is (--allow-ips 127.0.0.2 let none of it in when it did not),
    and a datagram from outside it is dropped and counted."""
    from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
    from inlets_py.runtime.server.dataplane import DataPlaneOptions

    async def scenario() -> None:
        echo = await udp_echo()
        server = await start_server(tls, token, data_addr=None)
        server.options = DataPlaneOptions(allow_ips=SourceAllowList(parse_networks("127.0.0.2")))
        public = udp_free_port()
        client, task = await start_client(control_url(server), token, tls, {f"udp:{public}": Upstream("127.0.0.1", echo)})
        udp = server.udp_ports[f"udp:{public}"]
        assert await ask(public, [b"inside"], source="127.0.0.2") == [b"inside"]
        with pytest.raises(asyncio.TimeoutError):
            await ask(public, [b"outside"], source="127.0.0.3", timeout=1)
        assert udp.counters.dropped == {"source_not_allowed": 1} and len(udp.flows) == 1
        await stop(task)
        await server.stop()

    run(scenario())
