"""What a client's failed connect says when nothing answers in time, for a server given by address (what inletsctl
prints). Both cases said "timed out during opening handshake": a cloud firewall dropping port 8123 (the commonest
first-run failure) and a port that accepts but never speaks TLS (a paused server, a wrong port) read alike, and
neither line said what to check."""

from __future__ import annotations

import asyncio

import pytest

from helpers.tunnel import blackhole, run, serve

from inlets_py.runtime.client.dialer import ClientConfig, TunnelClient


def _said(port: int) -> str:
    """The error one connect attempt to 127.0.0.1:``port`` raised, within a 1 s open timeout."""
    async def scenario() -> str:
        config = ClientConfig(url=f"wss://127.0.0.1:{port}", token="t", mode="tcp", services=["tcp:80"],
                              open_timeout=1.0)
        with pytest.raises(TimeoutError) as caught:
            await TunnelClient(config, lambda channel: None).open_session()
        return str(caught.value)

    return run(scenario(), timeout=30)  # type: ignore[return-value]


def test_an_address_dropping_syns_says_nothing_answered_and_what_to_check() -> None:
    port, kept = blackhole()
    try:
        said = _said(port)
    finally:
        for sock in kept:
            sock.close()
    assert said.startswith(f"nothing answered at 127.0.0.1:{port} within 1s"), said
    assert "firewall" in said, said


def test_a_port_that_accepts_but_never_speaks_says_so() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never a byte back: no TLS ServerHello

    async def scenario() -> str:
        server = await serve(silent)
        port = server.sockets[0].getsockname()[1]
        config = ClientConfig(url=f"wss://127.0.0.1:{port}", token="t", mode="tcp", services=["tcp:80"],
                              open_timeout=1.0)
        try:
            with pytest.raises(TimeoutError) as caught:
                await TunnelClient(config, lambda channel: None).open_session()
        finally:
            server.close()
        return str(caught.value)

    said = run(scenario(), timeout=30)
    assert said.startswith("127.0.0.1:") and "accepted the connection but" in str(said), said
    assert "control port" in str(said), said
