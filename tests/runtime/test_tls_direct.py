"""The control plane's TLS objects call OpenSSL's methods straight (``tls.DirectSSLObject``).

Real TLS connections on loopback, on both event loops and both of their read paths (the loop
copying records out, and the loop decrypting into a protocol's own buffer): the bytes arrive
whole and in order, and the peer's close is seen, as with the library's own ``SSLObject``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from pathlib import Path

import pytest

from helpers.tunnel import make_tls
from inlets_py.runtime.core.tls import DirectSSLObject, client_context, server_context

PAYLOAD = os.urandom(3 * 1024 * 1024 + 4321)  # many records, the last one short


class Echo(asyncio.Protocol):
    """Sends back what it reads; half-closes when the peer does."""

    def __init__(self, seen: list[object]) -> None:
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.seen.append(transport.get_extra_info("ssl_object"))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        self.transport.close()
        return False


class CopiedReader(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


class BufferedReader(asyncio.BufferedProtocol):
    """The loop decrypts into this buffer: ``read(size, buffer)`` on the TLS object."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.room = bytearray(64 * 1024)
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.room)

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.room[:nbytes]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


async def _round_trip(contexts: tuple[ssl.SSLContext, ssl.SSLContext], reader: type) -> tuple[bytes, list[object], object]:
    loop = asyncio.get_running_loop()
    seen: list[object] = []
    server = await loop.create_server(lambda: Echo(seen), "127.0.0.1", 0, ssl=contexts[0])
    port = server.sockets[0].getsockname()[1]
    try:
        transport, protocol = await loop.create_connection(reader, "127.0.0.1", port, ssl=contexts[1],
                                                           server_hostname="127.0.0.1")
        seen.append(transport.get_extra_info("ssl_object"))
        for at in range(0, len(PAYLOAD), 100_000):
            transport.write(PAYLOAD[at : at + 100_000])
        for _ in range(2000):  # 20 s at most
            if len(protocol.received) >= len(PAYLOAD) or protocol.done.done():
                break
            await asyncio.sleep(0.01)
        transport.close()
        result = await asyncio.wait_for(protocol.done, 10)
        return bytes(protocol.received), seen, result
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("reader", [CopiedReader, BufferedReader], ids=["copied", "buffered"])
def test_tls_bytes_arrive_whole_through_the_direct_ssl_object(loop_name: str, reader: type, tmp_path: Path) -> None:
    files = make_tls(tmp_path, ["127.0.0.1"])
    contexts = (server_context(files.cert, files.key), client_context(files.ca))
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed: only asyncio's TLS layer is checked")
        received, seen, result = uvloop.run(_round_trip(contexts, reader))
    else:
        received, seen, result = asyncio.run(_round_trip(contexts, reader))
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(PAYLOAD).hexdigest()
    assert result is None  # a clean close, not an error
    assert len(seen) == 2
    for ssl_object in seen:  # the server's and the client's: the C object's methods, no wrapper between
        assert type(ssl_object) is DirectSSLObject
        assert ssl_object.read == ssl_object._sslobj.read  # type: ignore[attr-defined]
        assert ssl_object.write == ssl_object._sslobj.write  # type: ignore[attr-defined]
        assert ssl_object.pending == ssl_object._sslobj.pending  # type: ignore[attr-defined]
