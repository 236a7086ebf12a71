"""The service every path leads to: a sink and a source (throughput), an echo (latency, idle streams).

Runs as its own process so that the load generator and the service do not share a GIL
or an event loop; uvloop and a preallocated receive buffer keep it off the critical path.

Sink protocol: the client streams bytes; every ``ACK_UNIT`` bytes received the sink
writes the cumulative count as 8 bytes big-endian. The client sends a whole number of
units and stops its clock when the last count comes back, so throughput is measured
at the receiver without relying on half-close.

Source protocol: the client writes a byte count as 8 bytes big-endian; the source
writes that many bytes, as fast as the connection takes them, then waits for the
client to close. Through a tunnel this carries data the other way from the sink:
the tunnel client sends it to the server (masked websocket frames) instead of
receiving it (unmasked frames).

Prints ``READY <sink_port> <echo_port> <source_port>`` once the listeners accept.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys

ACK_UNIT = 4 * 1024 * 1024
_RECV_BUF = 1024 * 1024


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Sink(asyncio.BufferedProtocol):
    """Counts bytes into one reused buffer (no per-read allocation) and acknowledges per unit."""

    def __init__(self) -> None:
        self.buf = memoryview(bytearray(_RECV_BUF))
        self.received = 0
        self.next_ack = ACK_UNIT
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        while self.received >= self.next_ack:
            assert self.transport is not None
            self.transport.write(struct.pack("!Q", self.next_ack))
            self.next_ack += ACK_UNIT

    def eof_received(self) -> bool:
        return False


class Source(asyncio.Protocol):
    """Writes the requested number of bytes from one reused buffer, pausing with the transport."""

    _CHUNK = memoryview(bytes(range(256)) * (_RECV_BUF // 256))

    def __init__(self) -> None:
        self.request = b""
        self.left = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if len(self.request) >= 8:
            return  # one request per connection; anything after it is ignored
        self.request += data[: 8 - len(self.request)]
        if len(self.request) == 8:
            self.left = struct.unpack("!Q", self.request)[0]
            self._fill()

    def _fill(self) -> None:
        assert self.transport is not None
        while self.left > 0 and not self.paused and not self.transport.is_closing():
            n = min(self.left, len(self._CHUNK))
            self.left -= n
            self.transport.write(self._CHUNK[:n])

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._fill()

    def eof_received(self) -> bool:
        return False


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return False


async def main(host: str, sink_port: int, echo_port: int, source_port: int) -> None:
    loop = asyncio.get_running_loop()
    sink = await loop.create_server(Sink, host, sink_port, backlog=4096, reuse_address=True)
    echo = await loop.create_server(Echo, host, echo_port, backlog=4096, reuse_address=True)
    source = await loop.create_server(Source, host, source_port, backlog=4096, reuse_address=True)
    ports = [s.sockets[0].getsockname()[1] for s in (sink, echo, source)]
    print(f"READY {ports[0]} {ports[1]} {ports[2]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in (sink, echo, source):
        server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--sink-port", type=int, default=0)
    ap.add_argument("--echo-port", type=int, default=0)
    ap.add_argument("--source-port", type=int, default=0)
    args = ap.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(main(args.host, args.sink_port, args.echo_port, args.source_port))
    except KeyboardInterrupt:
        sys.exit(0)
