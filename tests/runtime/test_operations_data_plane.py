"""Who may use the data plane: --allow-ips at accept, the PROXY protocol told to nginx and read from a balancer,
and stream limits that refuse and count. Real nginx where it exists."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from helpers.proxy_daemons import _spawn, binary
from helpers.process import client_args, spawn, stop_all
from helpers.tunnel import (
    TlsFiles, answer_or_reset, control_url, echo_server, free_port, metric, port_of, run, serve, start_client,
    start_server, stop, wait_listening,
)

from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
from inlets_py.runtime.server.dataplane import DataPlaneOptions
from inlets_py.runtime.core.channel import OUT_HIGH_WATER
from inlets_py.runtime.server.proxy_protocol import encode
from inlets_py.runtime.client.tcp_upstreams import Upstream


def test_allow_ips_refuses_other_sources_at_accept_and_counts_them(tls: TlsFiles, token: str) -> None:
    async def attempt(port: int, source: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(b"hi")
        writer.write_eof()
        return await answer_or_reset(reader, writer)

    async def scenario() -> None:
        echo = await echo_server()
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(allow_ips=SourceAllowList(parse_networks("127.0.0.2/32,2001:db8::/32")))
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(echo))})
        await wait_listening("127.0.0.1", public)
        assert await attempt(public, "127.0.0.2") == b"hi"
        assert await attempt(public, "127.0.0.3") == b""
        assert metric(server, "tcp_dataplane_refused_total", port=str(public), reason="source_not_allowed") >= 1
        await stop(task)
        await server.stop()

    run(scenario())


NGINX_PROXY_PROTOCOL = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/b; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f;
    uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}
}}
"""


@pytest.fixture
def nginx_proxy_protocol(tmp_path: Path):
    exe = binary("nginx")
    port = free_port()
    directory = tmp_path / "nginx"
    directory.mkdir()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_PROXY_PROTOCOL.format(dir=directory, port=port))
    daemon = _spawn("nginx", [exe, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)],
                    directory, port, "127.0.0.1")
    yield port
    daemon.stop()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_tells_nginx_the_real_source(tls: TlsFiles, token: str, nginx_proxy_protocol: int, version: str) -> None:
    async def scenario() -> None:
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(proxy_protocol=version)
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", nginx_proxy_protocol)})
        await wait_listening("127.0.0.1", public)
        reader, writer = await asyncio.open_connection("127.0.0.1", public, local_addr=("127.0.0.7", 0))
        source_port = writer.get_extra_info("sockname")[1]
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response
        assert response.rstrip().endswith(f"127.0.0.7:{source_port}".encode()), response
        await stop(task)
        await server.stop()

    run(scenario())


def test_the_proxy_header_reaches_the_upstream_first_even_when_the_tunnel_is_full(
    tmp_path: Path, tls: TlsFiles, token: str, token_file: Path
) -> None:
    """With the client not reading (stopped, or a slow link), the server's queue to it passes its high-water
    mark; a user connecting then must still reach the upstream behind the server's PROXY header. It was
    dropped when it found the tunnel full, so the user's own first bytes, a PROXY header naming any source,
    were what the upstream took for the server's."""
    firsts: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        firsts.append(await reader.read(64))
        while await reader.read(65536):
            pass

    async def scenario() -> None:
        recorder = await serve(upstream)
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(proxy_protocol="v1")
        public = free_port()
        port = int(control_url(server).rsplit(":", 1)[1])
        client = spawn(*client_args(port, tls, token_file, "--upstream", f"{public}=127.0.0.1:{port_of(recorder)}"),
                       log=tmp_path / "client.log")
        writers = []
        try:
            await wait_listening("127.0.0.1", public)
            for _ in range(100):
                if firsts:
                    break
                await asyncio.sleep(0.05)
            firsts.clear()  # wait_listening's own connection
            client.send_signal(signal.SIGSTOP)
            (session,) = server.control.clients
            for _ in range(40):  # 40 streams' first credit: 10 MiB for a client that reads nothing
                _, writer = await asyncio.open_connection("127.0.0.1", public)
                writer.write(b"x" * 256 * 1024)
                writers.append(writer)
            for _ in range(100):
                if session.mux.buffered >= OUT_HIGH_WATER:
                    break
                await asyncio.sleep(0.05)
            assert session.mux.buffered >= OUT_HIGH_WATER
            _, writer = await asyncio.open_connection("127.0.0.1", public)
            writer.write(b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\nGET / HTTP/1.0\r\n\r\n")
            writers.append(writer)
            await asyncio.sleep(0.2)
            client.send_signal(signal.SIGCONT)
            for _ in range(200):
                if len(firsts) == len(writers):
                    break
                await asyncio.sleep(0.05)
            assert len(firsts) == len(writers)
            assert all(first.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") for first in firsts), firsts
        finally:
            client.send_signal(signal.SIGCONT)
            for writer in writers:
                writer.close()
            assert await asyncio.to_thread(stop_all, client) == [0]  # it drains through this loop's server
            await server.stop()

    run(scenario())


@pytest.mark.parametrize("lb_version", ["v1", "v2"])
def test_balancer_header_sets_the_source_for_allow_list_and_upstream(
    tls: TlsFiles, token: str, nginx_proxy_protocol: int, lb_version: str
) -> None:
    async def through_balancer(port: int, claimed: tuple[str, int]) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode(lb_version, claimed, ("192.0.2.1", port)))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return await answer_or_reset(reader, writer)

    async def scenario() -> None:
        server = await start_server(tls, token)
        server.options = DataPlaneOptions(
            allow_ips=SourceAllowList(parse_networks("203.0.113.0/24")), proxy_protocol="v2", lb_proxy_protocol=lb_version
        )
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", nginx_proxy_protocol)})
        await wait_listening("127.0.0.1", public)
        answer = await through_balancer(public, ("203.0.113.9", 4242))
        assert answer.rstrip().endswith(b"203.0.113.9:4242"), answer
        assert await through_balancer(public, ("198.51.100.1", 4242)) == b""  # outside --allow-ips
        # no header at all: dropped, counted
        reader, writer = await asyncio.open_connection("127.0.0.1", public)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            pass
        writer.close()
        assert metric(server, "tcp_dataplane_refused_total", reason="bad_proxy_header") == 1
        await stop(task)
        await server.stop()

    run(scenario())


def test_stream_limits_refuse_data_plane_connections_and_count_them(tls: TlsFiles, token: str, echo_port: int) -> None:
    """Found by a review helper: the server's --max-client-streams bounded only the streams a client opened, so 30
    users got through a client limited to 10; and users a client refused at its own --max-streams were counted
    nowhere (no refused sample, no log line)."""

    async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        try:
            echoed = await asyncio.wait_for(reader.read(1), 5)
        except ConnectionResetError:
            echoed = b""
        return reader, writer, echoed

    async def scenario(server_limit: int, client_limit: int) -> None:
        server = await start_server(tls, token, max_streams=server_limit)
        public = free_port()
        client, task = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", echo_port)},
                                          max_streams=client_limit)
        await wait_listening("127.0.0.1", public)
        held = [await connect(public) for _ in range(3)]
        try:
            assert [echoed for _, _, echoed in held] == [b"x", b"x", b"x"]
            refused = [await connect(public) for _ in range(2)]
            assert [echoed for _, _, echoed in refused] == [b"", b""]
            for _ in range(100):  # the client's refusal comes back as a reset: counted when it arrives
                if metric(server, "tcp_dataplane_refused_total", port=str(public), reason="client_stream_limit") == 2:
                    break
                await asyncio.sleep(0.02)
            assert metric(server, "tcp_dataplane_refused_total", port=str(public), reason="client_stream_limit") == 2
            for _, writer, _ in held + refused:
                writer.close()
            for _ in range(100):  # a slot is free once a held stream is gone
                if (await connect(public))[2] == b"x":
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("no connection got through after the held ones closed")
        finally:
            await stop(task)
            await server.stop()

    run(scenario(server_limit=3, client_limit=1024))  # the server's --max-client-streams
    run(scenario(server_limit=4096, client_limit=3))  # the client's --max-streams
