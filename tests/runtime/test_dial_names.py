"""Dialling a name with several addresses, the first of which drops SYNs (a dead AAAA or A record, ``localhost`` as
::1 where only 127.0.0.1 listens): the next one is tried after a quarter second (Happy Eyeballs), for upstreams and for
the server alike. The loops tried them in turn, each until the dial timed out: every stream to such an upstream was
reset after 10 s, and a client never reached such a server.

The resolver cannot be told a name here without root (/etc/hosts is the machine's): the loop's ``getaddrinfo`` answers
for one test name, as a hosts file would; every socket is real."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from helpers.tunnel import echo_server, make_tls, port_of, run, start_client, start_server, stop

from inlets_py.runtime.client.dialer import ClientConfig, TunnelClient
from inlets_py.runtime.client.tcp_upstreams import TcpUpstreams, Upstream
from inlets_py.runtime.core import bridge
from inlets_py.runtime.core.allowlist import parse_target_rules
from inlets_py.runtime.core.mux import Multiplexer
from inlets_py.runtime.core.session import Session
from inlets_py.runtime.server.forwarding import ForwardingPolicy

NAME = "twin.test"
#: The client's upstreams: tcp:80 goes to NAME (the port is the resolver's, below).
UPSTREAMS = TcpUpstreams({"tcp:80": Upstream(NAME, 1)})


def stream(target: str = "tcp:80") -> object:
    """A stream of a Session that never runs (no wire needed): what ``dial`` bridges."""
    session = Session(SimpleNamespace(closing=False), Multiplexer(client=True), name="test")  # type: ignore[arg-type]
    return session.open_stream(target, None)  # type: ignore[arg-type]  # dial attaches its bridge


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def resolve(name: str, *addresses: tuple[str, int]) -> None:
    """From now on the running loop resolves ``name`` to ``addresses``, in that order (the port asked is ignored)."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != name:
            return await real(host, port, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 address) for address in addresses]

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


@contextmanager
def blackhole() -> Iterator[tuple[str, int]]:
    """An address whose SYNs are dropped: a listener never accepting, its queue full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    try:
        yield listener.getsockname()
    finally:
        for sock in fillers + [listener]:
            sock.close()



def _seconds_to_bridge(open_stream, channel, caplog: pytest.LogCaptureFixture) -> float:  # type: ignore[no-untyped-def]
    """Seconds from ``open_stream(channel)`` to a connected upstream, with NAME resolving to a blackholed address
    first and an echo server second."""
    async def scenario(dead: tuple[str, int]) -> float:
        loop = asyncio.get_running_loop()
        server = await echo_server()
        resolve(NAME, dead, ("127.0.0.1", port_of(server)))
        started = loop.time()
        open_stream(channel)
        handler = channel.handler
        await until(lambda: handler.transport is not None or not channel.is_open)
        took = loop.time() - started
        assert handler.transport is not None, caplog.text
        handler.transport.close()
        server.close()
        return took

    with blackhole() as dead, caplog.at_level(logging.INFO, logger="inlets.bridge"):
        return asyncio.run(scenario(dead))


def test_an_upstream_name_whose_first_address_drops_syns_is_reached_on_the_next(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 3.0)
    assert _seconds_to_bridge(lambda channel: UPSTREAMS.on_stream(channel), stream(), caplog) < 1.5  # type: ignore[arg-type]


def test_a_forwarded_name_whose_first_address_drops_syns_is_reached_on_the_next(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The server's side of ``--local PORT:NAME:PORT``: it dialled the dead address until the dial timed out (10 s),
    then reset the stream, never trying the next address."""
    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 3.0)
    target = f"forward:{NAME}:80"
    policy = ForwardingPolicy(True, parse_target_rules(f"{NAME}:80"))
    assert _seconds_to_bridge(lambda channel: policy.on_stream(channel, frozenset({target})), stream(target),  # type: ignore[arg-type]
                              caplog) < 1.5


def test_a_name_whose_every_address_refuses_is_said_in_words(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        resolve(NAME, ("127.0.0.1", 9), ("127.0.0.1", 7))  # nobody listens there (discard, echo)
        channel = stream()
        UPSTREAMS.on_stream(channel)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="inlets.bridge"):
        asyncio.run(scenario())
    assert f'upstream={NAME}:1 error="Connection refused"' in caplog.text


def test_a_name_whose_addresses_fail_differently_says_each_failure_and_where(caplog: pytest.LogCaptureFixture) -> None:
    """Refused on one address, unreachable on another: aiohappyeyeballs raises one OSError without errno ("Multiple
    exceptions: ..."), which the log said as "dial failed". Now each failure's words with its addresses, at most
    ``SHOWN`` of them each. ff02::1 (multicast) is refused by the kernel at connect: no packet leaves."""
    refusing = [("127.0.0.1", port) for port in (1, 2, 3, 4, 5)]  # nobody listens there

    async def scenario() -> None:
        resolve(NAME, *refusing, ("ff02::1", 80, 0, 0))
        channel = stream()
        UPSTREAMS.on_stream(channel)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="inlets.bridge"):
        asyncio.run(scenario())
    assert (f'upstream={NAME}:1 error="Connection refused on 127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3, 127.0.0.1:4 and '
            '1 more; Network is unreachable on [ff02::1]:80"') in caplog.text, caplog.text


def test_a_name_refused_on_one_address_and_blackholed_on_another_says_both(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a review helper (a name in /etc/hosts of a network namespace, one address refusing, one dropping
    SYNs): the dial ended "dial timed out" after 10 s, and the refusal, which says the upstream is down there, was
    lost. The timeout now says the failures that came before it."""
    monkeypatch.setattr(bridge, "DIAL_TIMEOUT", 1.0)

    async def scenario(dead: tuple[str, int]) -> None:
        resolve(NAME, ("127.0.0.1", 9), dead)  # nobody listens on 9
        channel = stream()
        UPSTREAMS.on_stream(channel)  # type: ignore[arg-type]
        await until(lambda: not channel.is_open)  # type: ignore[attr-defined]

    with blackhole() as dead, caplog.at_level(logging.INFO, logger="inlets.bridge"):
        asyncio.run(scenario(dead))
    assert f'upstream={NAME}:1 error="dial timed out; Connection refused on 127.0.0.1:9"' in caplog.text, caplog.text


def test_a_server_name_whose_first_address_drops_syns_is_connected_on_the_next(tmp_path: Path) -> None:
    """The client timed out on the dead address at every attempt (--open-timeout, 15 s), never trying the other."""
    tls = make_tls(tmp_path)

    async def scenario(dead: tuple[str, int]) -> float:
        loop = asyncio.get_running_loop()
        server = await start_server(tls, "secret-token")
        resolve(NAME, dead, server.control.addresses[0][:2])
        started = loop.time()
        client, task = await start_client(f"wss://{NAME}:{server.control.addresses[0][1]}", "secret-token", tls,
                                          {8080: Upstream("127.0.0.1", 8080)}, server_name="127.0.0.1",
                                          open_timeout=2.0)
        took = loop.time() - started
        await stop(task)
        await server.stop()
        return took

    with blackhole() as dead:
        took = run(scenario(dead), timeout=30)
    assert took < 1.5


def test_a_server_name_refused_on_one_address_and_blackholed_on_another_says_both() -> None:
    """Found by a review helper: `inlets tcp client --url wss://NAME:PORT`, NAME refusing on one address and dropping
    SYNs on the other: each attempt logged "no address of NAME answered within 15s", the refusal lost."""
    async def scenario(dead: tuple[str, int]) -> str:
        resolve(NAME, ("127.0.0.1", 9), dead)
        config = ClientConfig(url=f"wss://{NAME}:{dead[1]}", token="t", mode="tcp", services=["tcp:80"],
                              open_timeout=1.0)
        with pytest.raises(TimeoutError) as caught:
            await TunnelClient(config, lambda channel: None).open_session()
        return str(caught.value)

    with blackhole() as dead:
        said = run(scenario(dead), timeout=30)
    assert said == f"no address of {NAME} answered within 1s; Connection refused on 127.0.0.1:9", said


def test_an_https_upstream_named_with_a_final_dot_is_verified_and_sent_as_sni_without_it(tmp_path: Path,
                                                                                       caplog: pytest.LogCaptureFixture
                                                                                       ) -> None:
    """Found by a review helper: ``--upstream https://api.example.com.`` (the fully qualified form) was refused,
    "Hostname mismatch, certificate is not valid for 'api.example.com.'", and SNI carried the dot, which RFC 6066 3
    forbids (1 of 1 dials failed); the dot is dropped for the check and SNI, as for the server's own name."""
    from inlets_py.runtime.client.http_upstreams import HttpUpstream, HttpUpstreams, upstream_tls

    tls = make_tls(tmp_path, ["api.example.test"])
    sent: list[str | None] = []
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(tls.cert, tls.key)
    served.sni_callback = lambda _sock, name, _context: sent.append(name)  # type: ignore[assignment,func-returns-value]

    async def scenario() -> bool:
        server = await asyncio.start_server(lambda _r, w: None, "127.0.0.1", 0, ssl=served)
        resolve("api.example.test.", ("127.0.0.1", port_of(server)))
        upstreams = HttpUpstreams({"http:*": HttpUpstream("https", "api.example.test.", port_of(server))},
                                  upstream_tls(tls.ca))
        channel = stream("http:*")
        upstreams.on_stream(channel)  # type: ignore[arg-type]
        handler = channel.handler  # type: ignore[attr-defined]
        await until(lambda: handler.transport is not None or not channel.is_open)  # type: ignore[attr-defined]
        connected = handler.transport is not None
        if connected:
            handler.transport.close()
        server.close()
        return connected

    with caplog.at_level(logging.INFO, logger="inlets.http"):
        assert asyncio.run(scenario()), caplog.text
    assert sent == ["api.example.test"]
