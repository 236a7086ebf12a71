"""HTTP tunnel test stack: a real server and clients on a background loop, and real upstreams.

Tests drive it with blocking tools (curl, sockets, http.client, websockets' sync
client) while the tunnel runs on its own event loop thread, on loopback only.
The upstream app is written with h11 (an independent HTTP implementation from the
proxy's llhttp), the websocket upstream with the websockets library.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine

import h11
from websockets.asyncio.server import serve as ws_serve

from helpers.tunnel import until_connected

from inlets_py.runtime.core.allowlist import SourceAllowList, parse_networks
from inlets_py.runtime.core.auth import TokenSet
from inlets_py.runtime.client.dialer import ClientConfig, TunnelClient
from inlets_py.runtime.server.control import ControlConfig
from inlets_py.runtime.client.http_upstreams import HttpUpstreams, parse_upstreams, upstream_tls
from inlets_py.runtime.http.options import HttpOptions
from inlets_py.runtime.http.server import HttpTunnelServer
from inlets_py.runtime.core.tls import client_context, server_context

LOOPBACK = "127.0.0.1"


def need(tool: str) -> str:
    """Path of ``tool``, or skip the test saying it is missing (never pass without it)."""
    import pytest

    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (bash scripts/install-test-tools.sh installs it)")
    return path


@dataclass
class UpstreamStats:
    connections: int = 0
    requests: list[dict] = field(default_factory=list)
    sent_continue: int = 0


class UpstreamApp:
    """A small HTTP/1.1 app (h11): echo of the request, bodies hashed, big downloads, delays."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = UpstreamStats()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        conn = h11.Connection(h11.SERVER)
        drop_next = False  # after /arm-drop: close on the next request without answering it
        try:
            while True:
                event = await self._next(conn, reader)
                if isinstance(event, (h11.ConnectionClosed, type(None))):
                    return
                if not isinstance(event, h11.Request) or drop_next:
                    return
                drop_next = event.target == b"/arm-drop"
                await self._respond(conn, event, reader, writer)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, h11.LocalProtocolError):
            return
        finally:
            writer.close()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(256 * 1024))
                continue
            return event

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    self.stats.sent_continue += 1
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                conn.receive_data(await reader.read(256 * 1024))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            else:
                return

    async def _respond(self, conn, request: h11.Request, reader, writer) -> None:
        target = request.target.decode()
        path, _, query = target.partition("?")
        headers = [(n.decode(), v.decode()) for n, v in request.headers]
        record = {"method": request.method.decode(), "target": target, "headers": headers}
        self.stats.requests.append(record)
        status, extra, body = 200, [], b""
        if path == "/sha256":
            digest, size = hashlib.sha256(), 0
            async for data in self._body(conn, reader, writer):
                digest.update(data)
                size += len(data)
            body = json.dumps({"sha256": digest.hexdigest(), "size": size}).encode()
        else:
            async for _ in self._body(conn, reader, writer):
                pass
        if path == "/big":
            size = int(query.partition("=")[2])
            block = hashlib.sha256(b"block").digest() * 2048  # 64 KiB
            writer.write(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(size))])))
            sent = 0
            while sent < size:
                piece = block[: size - sent]
                writer.write(conn.send(h11.Data(data=piece)))
                sent += len(piece)
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        if path == "/slow":
            await asyncio.sleep(float(query.partition("=")[2]))
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        if path == "/chunked":
            writer.write(conn.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])))
            for i in range(3):
                writer.write(conn.send(h11.Data(data=f"part{i};".encode())))
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        if not body:
            body = json.dumps({"upstream": self.name, **record}).encode()
        headers_out = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("X-Upstream", self.name)] + extra
        writer.write(conn.send(h11.Response(status_code=status, headers=headers_out)))
        if request.method != b"HEAD":
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


class Stack:
    """Event loop thread holding the tunnel server, clients and upstreams of one test module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tasks: list[asyncio.Future] = []
        self.closers: list[Any] = []

    def run(self, coro: Coroutine, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def shutdown() -> None:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for closer in reversed(self.closers):
                await closer()
            # Handlers still running (say, an upstream sleeping through a 504 test) are cancelled
            # here: left to the garbage collector on a stopped loop, they would raise in finalisers.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.run(shutdown(), 15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    # ---------------------------------------------------------------- parts

    def upstream(self, name: str, ssl=None) -> tuple[UpstreamApp, int]:
        app = UpstreamApp(name)
        return app, self.serve(app.handle, ssl)

    def serve(self, handler, ssl=None) -> int:
        """An asyncio server on loopback for ``handler(reader, writer)`` (say, an upstream that misbehaves); its port."""

        writers: set[asyncio.StreamWriter] = set()

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                await handler(reader, writer)
            finally:
                writers.discard(writer)

        async def start():
            server = await asyncio.start_server(tracked, LOOPBACK, 0, ssl=ssl)
            self.closers.append(_closer(server, writers))
            return server.sockets[0].getsockname()[1]

        return self.run(start())

    def websocket_echo(self) -> int:
        async def echo(ws) -> None:
            async for message in ws:
                await ws.send(message)

        async def start():
            server = await ws_serve(echo, LOOPBACK, 0)
            self.closers.append(_closer(server))
            return server.sockets[0].getsockname()[1]

        return self.run(start())

    def server(self, tls, token: str, max_client_streams: int | None = None, trusted_proxies: str = "",
               **kwargs) -> HttpTunnelServer:
        """``trusted_proxies``: --trusted-proxies, as the flag takes it (``127.0.0.1``)."""
        async def start():
            limit = {} if max_client_streams is None else {"max_streams": max_client_streams}
            trusted = SourceAllowList(parse_networks(trusted_proxies)) if trusted_proxies else None
            config = ControlConfig(tokens=TokenSet([token]), host=LOOPBACK, port=0,
                                   ssl_context=server_context(tls.cert, tls.key), trusted_proxies=trusted, **limit)
            server = HttpTunnelServer(config, port=0, data_addr=LOOPBACK, **kwargs)
            await server.start()
            self.closers.append(server.stop)
            return server

        return self.run(start())

    def client(self, server: HttpTunnelServer, tls, token: str, upstreams: list[str],
               options: HttpOptions | None = None, upstream_ca=None, rewrite_host: bool = False,
               upstream_insecure: bool = False, max_streams: int | None = None) -> tuple:
        async def start():
            host, port = server.control.addresses[0][:2]
            handler = HttpUpstreams(parse_upstreams(upstreams), upstream_tls(upstream_ca, upstream_insecure))
            opts = options or HttpOptions()
            if rewrite_host:
                opts.rewrite_host = {s: h.encode() for s, h in handler.host_headers().items()}
            config = ClientConfig(url=f"wss://{host}:{port}", token=token, mode="http", services=handler.services,
                                  ssl_context=client_context(tls.ca), backoff_initial=0.1, backoff_max=0.5,
                                  extra=opts.to_extra())
            if max_streams is not None:
                config.max_streams = max_streams
            client = TunnelClient(config, handler.on_stream)
            task = asyncio.ensure_future(client.run_forever())
            self.tasks.append(task)
            await until_connected(client, task)
            return client, task

        return self.run(start())

    def stop_client(self, task: asyncio.Future) -> None:
        async def stop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self.run(stop())


def _closer(server, writers: set[asyncio.StreamWriter] | None = None):
    """Closes ``server`` and the connections its handlers still hold (``writers``): since Python 3.12.1
    ``wait_closed`` waits for every connection the server accepted, and an upstream that never ends one (a deaf
    one) held the stack's shutdown until its timeout."""
    async def close() -> None:
        server.close()
        for writer in list(writers or ()):
            writer.close()
        await server.wait_closed()

    return close


def raw_request(port: int, data: bytes, timeout: float = 5.0, source: str | None = None) -> bytes:
    """Send raw bytes (from ``source``, a loopback address), read until the server closes (or timeout)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
    return b"".join(chunks)


def answer_after_fin(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data``, close our side, read until the server closes or resets; a server that does neither within
    ``timeout`` fails the caller (``socket.timeout``), not passes for one that closed with nothing to say."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def received(sock: socket.socket, so_far: bytes, size: int = 65536) -> bytes:
    """The next bytes from ``sock``: the socket's timeout bounds a stall, and a close fails at once (a loop of
    empty reads would spin until pytest's timeout)."""
    chunk = sock.recv(size)
    assert chunk, f"the connection closed in the middle of an answer, after {so_far[:200]!r}"
    return chunk


def read_answer(sock: socket.socket) -> bytes:
    """One response with a Content-Length, read from a kept-alive connection."""
    return read_answers(sock, 1)[0]


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` responses with a Content-Length, each cut at its length: answers to pipelined requests may come in
    one read, where reading them one by one took the second's bytes into the first."""
    answers: list[bytes] = []
    data = b""
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            data += received(sock, data)
        head, _, rest = data.partition(b"\r\n\r\n")
        lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        assert len(lengths) == 1, f"the answer's framing is lost: {head!r}"
        end = len(head) + 4 + int(lengths[0])
        while len(data) < end:
            data += received(sock, data)
        answers.append(data[:end])
        data = data[end:]
    assert not data, f"bytes after the last answer: {data[:200]!r}"
    return answers


def http_server_argv(folder: Path, control: int, data: int, token_file: Path, *extra: str) -> list[str]:
    """``inlets http server``'s arguments as the CLI tests run it: loopback only, auto TLS in ``folder/tls`` (the
    CA a client pins: ``folder/tls/ca.crt``)."""
    return ["http", "server", "--port", str(data), "--data-addr", LOOPBACK, "--control-addr", LOOPBACK,
            "--control-port", str(control), "--auto-tls", "--auto-tls-path", str(folder / "tls"),
            "--auto-tls-san", LOOPBACK, "--token-file", str(token_file), *extra]


def answers_each(reply: Callable[[bytes], bytes]):
    """An upstream (``Stack.serve``) answering each request head with ``reply(head)``, kept alive until the peer
    closes: the scripted answers of the framing tests, each written once."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                writer.write(reply(head))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handle
