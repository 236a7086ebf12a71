"""A hostile tunnel server towards a real client: it may refuse the client, never steer it elsewhere."""

from __future__ import annotations

import asyncio

import pytest
from helpers.tunnel import port_of, run, serve

from inlets_py.runtime.client.dialer import ClientConfig, FatalClientError, TunnelClient


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
