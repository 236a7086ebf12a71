"""The least a Python process can do on a tunnel's path: a plain TCP relay, for the benches' py-relay row.

Two of these in a row (``_paths.py_relay``: the first listens where users connect and dials the
second, which dials the target) do what a tunnel's server and client must do at the least, each
read passed on with one write, in the same interpreter and event loop as the tunnel (uvloop, which
sets TCP_NODELAY on every socket), and nothing else: no TLS, no websocket, no multiplexing, no
HTTP. What they spend is a reference for what any two-process Python design spends before its own
work (a floor for the per-connection and per-message cost; a multiplexer can still beat it on the
one shared connection, where it batches many streams into one send).

Each accepted connection gets its own outgoing connection; a half-close is passed on, and a side
whose peer's socket is full stops being read (the transports' flow control), so nothing queues
without bound.

    python _relay.py LISTEN=DIAL [LISTEN=DIAL ...]    # ports on 127.0.0.1; prints READY once all accept
"""

from __future__ import annotations

import asyncio
import signal
import sys

LOOPBACK = "127.0.0.1"


class Side(asyncio.Protocol):
    """One socket of a relayed pair: what it reads goes to ``peer``'s socket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.early: list[bytes] = []  # read before the outgoing connection is up (bounded: reading pauses)
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is None or self.peer.transport is None:
            self.early_eof = True
        elif self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True  # keep the other direction open until the peer half-closes too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Accepted(Side):
    """A user's connection: dials the next hop, then relays both ways."""

    def __init__(self, dial_port: int) -> None:
        super().__init__()
        self.dial_port = dial_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        outgoing = Side()
        outgoing.peer = self
        try:
            await asyncio.get_running_loop().create_connection(lambda: outgoing, LOOPBACK, self.dial_port)
        except OSError:
            self.transport.abort()  # type: ignore[union-attr]
            return
        if self.transport.is_closing():  # type: ignore[union-attr]  # the user left meanwhile
            outgoing.transport.close()  # type: ignore[union-attr]
            return
        self.peer = outgoing
        if self.early:
            outgoing.transport.write(b"".join(self.early))  # type: ignore[union-attr]
            self.early = []
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.early_eof:
            outgoing.transport.write_eof()  # type: ignore[union-attr]


async def main(pairs: list[tuple[int, int]]) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    servers = [await loop.create_server(lambda dial=dial: Accepted(dial), LOOPBACK, listen, backlog=1024)  # type: ignore[misc]
               for listen, dial in pairs]
    print("READY", flush=True)
    await stop
    for server in servers:
        server.close()


def _pair(text: str) -> tuple[int, int]:
    listen, _, dial = text.partition("=")
    return int(listen), int(dial)


if __name__ == "__main__":
    pairs = [_pair(arg) for arg in sys.argv[1:]]
    try:
        import uvloop
    except ImportError:  # the tunnel runs on uvloop when installed: so does its reference
        asyncio.run(main(pairs))
    else:
        uvloop.run(main(pairs))
