"""A hostile tunnel server towards a real client: it may refuse the client, never steer it elsewhere."""

from __future__ import annotations

import asyncio

import pytest
from helpers.tunnel import control_url, port_of, run, serve, start_server

from inlets_py.runtime.client.dialer import ClientConfig, FatalClientError, TunnelClient
from inlets_py.runtime.core.tls import client_context


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
