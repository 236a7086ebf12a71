"""A hostile tunnel server towards a real client: it may refuse the client, never steer it elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Callable

import pytest
from helpers.tunnel import control_url, port_of, run, serve, start_server
from websockets.asyncio.server import ServerConnection, serve as websocket_serve

from inlets_py.runtime.client import connect
from inlets_py.runtime.client.dialer import ClientConfig, FatalClientError, TunnelClient
from inlets_py.runtime.core.handshake import Hello, Welcome, parse_hello
from inlets_py.runtime.core.mux import HEADER, FrameType
from inlets_py.runtime.core.tls import client_context, server_context


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # an address; a name (its socket is dialled apart)
def test_a_redirect_is_refused_in_words_and_its_location_never_dialled(host: str) -> None:
    """A 302 from the control URL made the client dial the host:port it named (any, on its network), and at a
    name URL crash with a traceback: a tunnel server never redirects, so the client follows none."""
    dialled: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.append(await reader.read(4096))

    async def scenario() -> None:
        other = await serve(elsewhere)
        location = f"ws://127.0.0.1:{port_of(other)}/internal"

        async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()

        server = await serve(redirect)
        client = TunnelClient(ClientConfig(url=f"ws://{host}:{port_of(server)}", token="t0ken", mode="tcp",
                                           services=["tcp:80"], open_timeout=5), lambda channel: None)
        with pytest.raises(FatalClientError) as refused:
            await client.open_session()
        await asyncio.sleep(0.2)  # a dial made all the same would have arrived by now
        server.close()
        other.close()
        assert location in str(refused.value) and "redirect" in str(refused.value), refused.value
        assert dialled == [], "the client dialled the host the redirect named"

    run(scenario(), 20)


@pytest.mark.parametrize("path, hint", [("/connect", "give --url without /connect: the client adds it"),
                                        ("/elsewhere", "check --url")])
def test_a_404_says_to_leave_the_endpoint_path_out_when_the_url_named_it(tls, token: str, path: str,
                                                                          hint: str) -> None:
    """``--url wss://HOST:8123/connect`` asked for ``/connect/connect``, and the 404 said only "check --url"."""
    async def scenario() -> None:
        server = await start_server(tls, token)
        client = TunnelClient(ClientConfig(url=control_url(server) + path, token=token, mode="tcp",
                                           services=["tcp:80"], open_timeout=5, ssl_context=client_context(tls.ca)),
                              lambda channel: None)
        with pytest.raises(FatalClientError) as refused:
            await client.open_session()
        await server.stop()
        assert "(HTTP 404)" in str(refused.value) and str(refused.value).endswith(hint), refused.value

    run(scenario(), 20)


@contextlib.asynccontextmanager
async def welcoming(tls, first: Callable[[Hello], str | bytes | None]) -> AsyncIterator[str]:
    """A server (URL yielded) that answers each hello with ``first(hello)`` (nothing when None), then reads on."""
    async def handler(ws: ServerConnection) -> None:
        message = first(parse_hello(await ws.recv()))
        if message is not None:
            await ws.send(message)
        async for _ in ws:  # answers the client's close
            pass

    async with websocket_serve(handler, "127.0.0.1", 0, ssl=server_context(tls.cert, tls.key), compression=None,
                               ping_interval=None) as server:
        yield f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("binary", [True, False], ids=["binary-first", "silent"])
def test_a_server_that_sends_no_text_welcome_is_named_at_once_or_when_the_wait_ends(tls, token: str, monkeypatch,
                                                                                     binary: bool) -> None:
    """A binary first message was held for a session that never started, unread, with reading paused: 15 s of
    silence, "timed out", then the close waited out its own 5 s. Now it is refused at once, in the words a text
    welcome this client cannot read gets; silence is named as such when the wait ends."""
    monkeypatch.setattr(connect, "WELCOME_TIMEOUT", 3.0, raising=False)

    async def scenario() -> None:
        first = HEADER.pack(FrameType.DATA, 2, 2) + b"zz" if binary else None
        async with welcoming(tls, lambda hello: first) as url:
            client = TunnelClient(ClientConfig(url=url, token=token, mode="tcp", services=["tcp:80"], open_timeout=5,
                                               ssl_context=client_context(tls.ca)), lambda channel: None)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(FatalClientError if binary else TimeoutError) as failed:
                await client.open_session()
            took = loop.time() - started
        if binary:
            assert str(failed.value) == "bad handshake from server: expected a text welcome message, got a binary one"
            assert took < 2.5, f"{took:.1f} s"  # at once, its close too: within the 3 s wait for a welcome
        else:
            assert str(failed.value) == ("the server accepted the websocket but sent no welcome within 3s: is --url an "
                                         "inlets server's control port (8123 unless set)?")
            assert took < 6, f"{took:.1f} s"  # the 3 s wait, and a close the server answers: not the close's 5 s more

    run(scenario(), 30)


def test_the_connected_line_names_what_the_client_serves_and_a_welcome_listing_others_is_warned_of(
    tls, token: str, caplog
) -> None:
    """The line repeated the welcome's list as it came: a server could write ``x\\ny`` into it, or an empty list."""
    caplog.set_level(logging.INFO, logger="inlets.client")

    def welcome(hello: Hello) -> str:
        return Welcome(["tcp:22", *hello.services, "x\ny"], 1 << 20, 256 * 1024).encode()

    async def scenario() -> None:
        async with welcoming(tls, welcome) as url:
            client = TunnelClient(ClientConfig(url=url, token=token, mode="tcp", services=["tcp:80"], open_timeout=5,
                                               ssl_context=client_context(tls.ca)), lambda channel: None)
            session = await client.open_session()
            await session.close()

    run(scenario(), 30)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=")]
    assert [line.split(" ", 2)[::2] for line in lines] == [
        ["event=connected", "services=tcp:80"],
        ["event=welcome_lists_unasked_services", 'count=2 services="tcp:22,x\\ny"'],
    ], lines
