"""Open files: a server started under a shell's soft limit takes its hard one, so that one client's many data
ports cannot leave other clients' users without a descriptor (their connections were closed unlogged)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import subprocess
from pathlib import Path

from helpers.process import INLETS, ROOT, server_args, wait_port
from helpers.tunnel import TlsFiles, free_port
from websockets.asyncio.client import connect

from inlets_py.runtime.core.handshake import Hello
from inlets_py.runtime.core.tls import client_context

SOFT = 64  # a shell's 1,024, scaled down: the server uses a dozen descriptors of its own


def _soft_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _hard_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, SOFT))


def _start(tmp_path: Path, tls: TlsFiles, token_file: Path, limit) -> tuple[subprocess.Popen, int, Path]:  # noqa: ANN001
    control = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([*INLETS, *server_args(control, tls, token_file)], stdout=handle,
                                  stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=limit)
    wait_port(control)
    return server, control, log


def _limits(pid: int) -> tuple[str, str]:
    line = next(ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines() if ln.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return soft, hard


async def _advertise(control: int, tls: TlsFiles, token: str, ports: list[int]) -> str:
    async with connect(f"wss://127.0.0.1:{control}/connect", ssl=client_context(tls.ca), compression=None,
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(Hello("tcp", [f"tcp:{port}" for port in ports], "many-ports", 1 << 20).encode())
        try:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
        except Exception:  # noqa: BLE001 - refused: the close reason says why
            return f"refused: {ws.close_reason}"


def test_a_server_under_a_low_soft_limit_opens_more_ports_than_it(tmp_path: Path, tls: TlsFiles, token: str,
                                                                    token_file: Path) -> None:
    server, control, log = _start(tmp_path, tls, token_file, _soft_limit)
    try:
        soft, hard = _limits(server.pid)
        assert soft == hard, (soft, hard)
        ports = [free_port() for _ in range(SOFT + 16)]
        assert asyncio.run(_advertise(control, tls, token, ports)) == "welcome", log.read_text()[-600:]
    finally:
        server.terminate()
        server.wait(15)


def test_ports_past_the_hard_limit_are_refused_not_welcomed_unreachable(tmp_path: Path, tls: TlsFiles, token: str,
                                                                         token_file: Path) -> None:
    """create_server skipped the address whose socket() failed (EMFILE) and listened nowhere: the client was
    welcomed to ports where users were refused, and the log said event=listening for each."""
    server, control, log = _start(tmp_path, tls, token_file, _hard_limit)
    try:
        ports = [free_port() for _ in range(SOFT + 16)]
        answer = asyncio.run(_advertise(control, tls, token, ports))
        assert answer.startswith("refused: server cannot listen on 127.0.0.1:") and "Too many open files" in answer, answer
        assert asyncio.run(_advertise(control, tls, token, ports[:3])) == "welcome"  # the ports it did open, freed
    finally:
        server.terminate()
        server.wait(15)


def test_users_dropped_for_want_of_descriptors_are_logged(tmp_path: Path, tls: TlsFiles, token: str,
                                                          token_file: Path) -> None:
    """Out of descriptors, uvloop's listener closes waiting users without a word: 53 of 100 were dropped, no line."""
    server, control, log = _start(tmp_path, tls, token_file, _hard_limit)
    public = free_port()

    async def users() -> None:
        async with connect(f"wss://127.0.0.1:{control}/connect", ssl=client_context(tls.ca), compression=None,
                           additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(Hello("tcp", [f"tcp:{public}"], "silent", 1 << 20).encode())
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            held = []  # each user waits on a stream this client never answers: the server keeps their sockets
            for _ in range(SOFT + 16):
                try:
                    held.append(await asyncio.open_connection("127.0.0.1", public))
                except OSError:
                    pass
            for _ in range(60):
                if "event=out_of_descriptors" in log.read_text():
                    break
                await asyncio.sleep(0.05)
            for _, writer in held:
                writer.close()
            ws.transport.abort()  # not the closing handshake, which waits out its timeout here

    try:
        asyncio.run(users())
        text = log.read_text()
        assert "event=out_of_descriptors" in text and "ulimit -n" in text, text[-600:]
    finally:
        server.terminate()
        server.wait(15)


def test_no_dev_null_is_not_said_to_be_a_lack_of_descriptors(monkeypatch, caplog) -> None:
    """Found by a review helper: in a mount namespace without /dev/null (a bare chroot), a listener's watcher logged
    'event=out_of_descriptors error="No such file or directory" next="raise the open-files limit"' each minute: only
    EMFILE and ENFILE say descriptors ran out."""
    from inlets_py.runtime.core.listen import listen

    monkeypatch.setattr(os, "devnull", "/nonexistent/null")  # what a root without /dev sees
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        server = await listen(asyncio.Protocol, "127.0.0.1", free_port())
        await asyncio.sleep(1.2)  # the watcher's first probe and one more
        server.close()

    asyncio.run(scenario())
    assert not [r.getMessage() for r in caplog.records if "out_of_descriptors" in r.getMessage()]
