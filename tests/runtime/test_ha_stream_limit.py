"""Several clients serving one TCP port: a client at its own --max-streams is skipped for another one."""

from __future__ import annotations

import asyncio
from collections import Counter

from helpers.tunnel import (
    TlsFiles, control_url, free_port, port_of, run, serve, start_client, start_server, stop, wait_listening,
)
from inlets_py.runtime.client.tcp_upstreams import Upstream


def test_a_client_at_its_own_stream_limit_is_skipped_for_another(tls: TlsFiles, token: str) -> None:
    """Found by a review helper: with client A at its --max-streams (2) and client B idle, every second new user was
    reset (A refused the stream the server had opened on it; the server did not know A's limit), 10 of 20 in a run.
    The client now sends its limit in the hello and the server tries the next client, as for --max-client-streams."""

    async def scenario() -> None:
        release = asyncio.Event()

        def upstream(tag: bytes):
            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(tag + b"\n")
                await writer.drain()
                if await reader.read(1) == b"h":  # a user that holds its stream until released
                    await asyncio.wait_for(release.wait(), 20)
            return handler

        up_a, up_b = await serve(upstream(b"A")), await serve(upstream(b"B"))
        server = await start_server(tls, token)
        public = free_port()
        _, task_a = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up_a))},
                                       max_streams=2)
        _, task_b = await start_client(control_url(server), token, tls, {public: Upstream("127.0.0.1", port_of(up_b))})
        await wait_listening("127.0.0.1", public)

        async def user(hold: bool) -> tuple[bytes, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            writer.write(b"h" if hold else b"q")
            try:
                return (await asyncio.wait_for(reader.readline(), 5)).strip() or b"closed", writer
            except ConnectionResetError:
                return b"reset", writer

        held: list[asyncio.StreamWriter] = []
        try:
            holders = Counter()
            for _ in range(8):  # round robin: A ends up holding its 2, B the rest
                answer, writer = await user(True)
                holders[answer] += 1
                held.append(writer)
            assert holders == Counter({b"A": 2, b"B": 6}), holders
            served = Counter()
            for _ in range(20):
                answer, writer = await user(False)
                served[answer] += 1
                writer.close()
            assert served == Counter({b"B": 20}), served
        finally:
            release.set()
            for writer in held:
                writer.close()
            await stop(task_a, task_b)
            await server.stop()
            up_a.close()
            up_b.close()

    run(scenario())
