"""A client stopped (SIGSTOP, a suspended VM) longer than its keepalive acts on nothing the server sent before it
gave the connection up: the server has answered those users (502, a reset) or sent their requests to another client,
and a stream opened late ran a POST the user was told failed, or a PUT twice, the late one last."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from helpers.process import client_args, spawn, stop_all
from helpers.tunnel import (
    TlsFiles, control_url, free_port, polled, port_of, run, serve, start_server, wait_listening,
)


def test_a_client_stopped_past_its_keepalive_dials_no_upstream_for_what_waited(
        tmp_path: Path, tls: TlsFiles, token: str, token_file: Path) -> None:
    received: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(64))
        writer.close()

    async def scenario() -> None:
        recorder = await serve(upstream)
        server = await start_server(tls, token, keepalive=1.0)
        public = free_port()
        port = int(control_url(server).rsplit(":", 1)[1])
        client = spawn(*client_args(port, tls, token_file, "--keepalive", "1", "--upstream",
                                    f"{public}=127.0.0.1:{port_of(recorder)}"), log=tmp_path / "client.log")
        try:
            await wait_listening("127.0.0.1", public)
            assert await polled(lambda: len(received) == 1, 5)  # wait_listening's own connection, then
            received.clear()
            client.send_signal(signal.SIGSTOP)
            reader, writer = await asyncio.open_connection("127.0.0.1", public)
            writer.write(b"late")  # its OPEN and bytes wait in the stopped client's socket
            await writer.drain()
            started = time.monotonic()
            while server.control.clients and time.monotonic() - started < 10:  # the server gives the client up
                await asyncio.sleep(0.1)
            assert not server.control.clients
            try:  # the user was told: reset (or closed), nothing came
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
            client.send_signal(signal.SIGCONT)
            log = tmp_path / "client.log"
            for _ in range(100):  # it reads what waited, and says why it dropped the connection (bounded: 10 s)
                if "found=stream_open" in log.read_text():
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a dial it made would have reached the upstream by now
            assert received == [], "the resumed client dialled the upstream for a stream the server had given up"
            assert "event=keepalive_timeout" in log.read_text() and "found=stream_open" in log.read_text()
            writer.close()
        finally:
            client.send_signal(signal.SIGCONT)
            stop_all(client)
            await server.stop()
            recorder.close()

    run(scenario(), 40)
