"""The control plane behind a TLS-terminating reverse proxy: real nginx on loopback.

The server runs in plain ws:// mode on loopback; nginx terminates TLS, proxies
``/some/prefix/`` with the websocket upgrade (tests/fixtures/nginx-inlets-location.conf,
shown verbatim in the README), and connects out from 127.0.0.5 so the tunnel server
can tell that a client came through it.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from helpers.integrity import Upstream as HashingUpstream, exchange, payloads
from helpers.process import inlets, one_line_error
from helpers.proxy_daemons import Daemon, free_port, nginx
from helpers.tunnel import TlsFiles, echo_server, port_of, run, start_client, start_server, stop, wait_listening
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
from inlets_py.runtime.client.dialer import ClientConfig, FatalClientError
from inlets_py.runtime.server.control import ControlConfig
from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.core.tls import client_context

MiB = 1024 * 1024
NGINX_DEFAULT_READ_TIMEOUT = 60.0  # nginx's proxy_read_timeout when the configuration sets none
SHORT_READ_TIMEOUT = 2.0  # the test's shortened one


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles):
    """nginx with two TLS servers for one control port: ``port`` with nginx's default
    proxy_read_timeout, ``extra_ports[0]`` with SHORT_READ_TIMEOUT."""
    control_port = free_port()
    daemon = nginx(tmp_path_factory.mktemp("nginx"), control_port=control_port, cert=tls.cert, key=tls.key,
                   read_timeouts=[None, SHORT_READ_TIMEOUT])
    daemon.control_port = control_port  # type: ignore[attr-defined]
    yield daemon
    daemon.stop()


def remotes(server) -> list[str]:
    return [info.remote.rsplit(":", 1)[0] for info in server.control.clients.values()]


def url(port: int, prefix: str = "/some/prefix") -> str:
    return f"wss://localhost:{port}{prefix}"


def test_64_mib_each_way_through_nginx_terminating_tls_with_a_path_prefix(
    tls: TlsFiles, token: str, front: Daemon
) -> None:
    up, down = payloads(64 * MiB)

    async def scenario() -> None:
        upstream = HashingUpstream(down)
        up_port = await upstream.start()
        server = await start_server(None, token, port=front.control_port)  # plain ws:// on loopback
        public = free_port()
        client, task = await start_client(url(front.port), token, tls, {public: Upstream("127.0.0.1", up_port)},
                                          proxy="none")
        try:
            assert remotes(server) == [front.bound_from], "the client did not come through nginx"
            await wait_listening("127.0.0.1", public)
            await exchange(public, upstream, up)
        finally:
            await stop(task)
            await server.stop()

    run(scenario(), timeout=90)
    access = (front.log.parent / "nginx-access.log").read_text()
    assert '"GET /some/prefix/connect HTTP/1.1" 101' in access


def test_wrong_token_through_nginx_is_refused_with_401(tls: TlsFiles, token: str, front: Daemon) -> None:
    async def scenario() -> None:
        server = await start_server(None, token, port=front.control_port)
        try:
            with pytest.raises(FatalClientError, match="401"):
                await start_client(url(front.port), "wrong-token", tls, {free_port(): Upstream("127.0.0.1", 9)},
                                   proxy="none")
        finally:
            await server.stop()

    run(scenario(), timeout=30)


def test_ws_url_to_nginx_terminating_tls_says_to_use_wss(tls: TlsFiles, token: str, front: Daemon) -> None:
    """nginx answers plain HTTP on its TLS port with 400 ("The plain HTTP request was sent to HTTPS port"): the
    client retried that forever as 'server rejected WebSocket connection: HTTP 400'."""
    async def scenario() -> None:
        server = await start_server(None, token, port=front.control_port)
        try:
            plain = url(front.port).replace("wss://", "ws://")
            with pytest.raises(FatalClientError, match=f"the server speaks TLS: use --url {url(front.port)}$"):
                await start_client(plain, token, None, {free_port(): Upstream("127.0.0.1", 9)}, proxy="none")
        finally:
            await server.stop()

    run(scenario(), timeout=30)


@pytest.mark.parametrize("scheme, serve, says", [
    ("ws", True, "speaks TLS: use wss:// in --url"),  # nginx's 400 to plain HTTP on its TLS port
    ("wss", False, "/status answered HTTP 502: Bad Gateway"),  # no server behind nginx: its HTML error page
])
def test_inlets_status_through_nginx_says_what_went_wrong(tls: TlsFiles, token: str, front: Daemon, tmp_path,
                                                          scheme: str, serve: bool, says: str) -> None:
    """`inlets status` showed the first line of nginx's error page: '/status answered HTTP 400: <html>'."""
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)

    async def scenario() -> None:
        server = await start_server(None, token, port=front.control_port) if serve else None
        try:
            result = await asyncio.to_thread(inlets, "status", "--url", url(front.port).replace("wss://", f"{scheme}://"),
                                             "--token-file", str(token_file), "--tls-ca", str(tls.ca))
            assert one_line_error(result, says, 1)
            assert "<html>" not in result.stderr
        finally:
            if server is not None:
                await server.stop()

    run(scenario(), timeout=60)


def test_default_keepalive_is_well_within_nginx_default_read_timeout() -> None:
    """The watchdog pings after keepalive/2 idle and checks every keepalive/2, so an idle
    tunnel carries a ping (and its pong) at least every ``keepalive`` seconds."""
    client_default = next(f.default for f in dataclasses.fields(ClientConfig) if f.name == "keepalive")
    server_default = next(f.default for f in dataclasses.fields(ControlConfig) if f.name == "keepalive")
    assert client_default <= NGINX_DEFAULT_READ_TIMEOUT / 2, client_default
    assert server_default <= NGINX_DEFAULT_READ_TIMEOUT / 2, server_default


def test_idle_tunnel_survives_a_short_nginx_read_timeout_at_the_default_ratio(
    tls: TlsFiles, token: str, front: Daemon
) -> None:
    """nginx cuts a websocket that is silent for proxy_read_timeout. Scale the defaults down:
    keepalive / read timeout as the defaults are to nginx's 60 s. An idle tunnel must stay
    up for several timeouts; a tunnel without pings is cut (so the timeout is really short)."""
    client_default = next(f.default for f in dataclasses.fields(ClientConfig) if f.name == "keepalive")
    keepalive = SHORT_READ_TIMEOUT * client_default / NGINX_DEFAULT_READ_TIMEOUT
    short = front.extra_ports[0]
    idle = 3.5 * SHORT_READ_TIMEOUT

    async def scenario() -> None:
        echo = await echo_server()
        public = free_port()
        server = await start_server(None, token, port=front.control_port, keepalive=keepalive)
        client, task = await start_client(url(short), token, tls, {public: Upstream("127.0.0.1", port_of(echo))},
                                          proxy="none", keepalive=keepalive)
        try:
            first = client.session
            await asyncio.sleep(idle)
            assert client.session is first, "nginx cut the idle tunnel despite the keepalive"
            await wait_listening("127.0.0.1", public)
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            writer.write(b"still here")
            writer.write_eof()
            assert await reader.read() == b"still here"
            writer.close()
            assert client.session is first
        finally:
            await stop(task)
            await server.stop()

        # The control: with no pings from either side, nginx does cut the tunnel.
        server = await start_server(None, token, port=front.control_port, keepalive=0)
        client, task = await start_client(url(short), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                          proxy="none", keepalive=0)
        try:
            first = client.session
            for _ in range(int(3 * SHORT_READ_TIMEOUT / 0.05)):  # bounded: 3 timeouts
                if client.session is not first:
                    break
                await asyncio.sleep(0.05)
            assert client.session is not first, "nginx never cut a silent tunnel: the short timeout is not in effect"
        finally:
            await stop(task)
            await server.stop()

    run(scenario(), timeout=60)


def test_failed_logins_behind_nginx_are_limited_per_client_not_per_proxy(tls: TlsFiles, token: str, front: Daemon) -> None:
    """With --trusted-proxies naming nginx, a guesser is limited by its own address (taken from
    X-Forwarded-For, whatever it forges there) and a client at another address behind nginx is not refused."""
    async def attempt(offered: str, source: str, forged: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {offered}"}
        if forged:
            headers["X-Forwarded-For"] = forged
        try:
            ws = await connect(url(front.port) + "/connect", ssl=client_context(tls.ca), additional_headers=headers,
                               local_addr=(source, 0), proxy=None)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    async def scenario() -> None:
        trusted = SourceAllowList(parse_networks(front.bound_from))
        server = await start_server(None, token, port=front.control_port, trusted_proxies=trusted)
        try:
            guesses = [await attempt(f"guess-{i}", "127.0.0.9", forged=f"192.0.2.{i}") for i in range(12)]
            assert guesses == [401] * 10 + [429] * 2  # forging X-Forwarded-For moved nothing
            assert await attempt("guess-x", "127.0.0.1") == 401  # another user behind the same nginx
            client, task = await start_client(url(front.port), token, tls, {free_port(): Upstream("127.0.0.1", 9)},
                                              proxy="none")
            # who the client is, in logs and /status: the address nginx forwarded for, not nginx's (as before)
            (remote,) = [info.remote for info in server.control.clients.values()]
            assert remote.startswith(f"127.0.0.1 via {front.bound_from}:"), remote
            await stop(task)
            assert await attempt(token, "127.0.0.9") == 429  # the guesser's address is, the right token too
        finally:
            await server.stop()

    run(scenario(), timeout=60)
