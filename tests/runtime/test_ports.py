"""Ports are 1 to 5 ASCII digits, 1-65535, wherever they are read ("²".isdigit() is true; int("٣") is 3)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from helpers.process import ROOT, inlets, one_line_error
from helpers.tunnel import TlsFiles, control_url, run, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from inlets_py.runtime.core.handshake import Hello
from inlets_py.runtime.core.ports import parse_port, parse_port_list, url_port
from inlets_py.runtime.server.proxy_protocol import ProxyProtocolError, parse
from inlets_py.runtime.core.tls import client_context

NOT_PORTS = ["²", "٣", "８０", " 80", "80 ", "+80", "8_0", "0x50", "", "0", "65536", "123456", "80\n"]


@pytest.mark.parametrize("text", NOT_PORTS)
def test_only_ascii_digits_make_a_port(text: str) -> None:
    assert parse_port(text) is None
    if text.strip() == text:  # lists allow spaces around entries; URLs lose a newline when split
        with pytest.raises(ValueError):
            parse_port_list(f"443,{text or 'x'}")
        with pytest.raises(ValueError):
            url_port(urlsplit(f"wss://host:{text or 'x'}/"), 443)


def test_ports_that_are_ports() -> None:
    assert [parse_port(t) for t in ("1", "80", "08080", "65535")] == [1, 80, 8080, 65535]
    assert parse_port("0", lowest=0) == 0
    assert parse_port_list(" 80, 443,,") == [80, 443]
    assert url_port(urlsplit("wss://user:pw@[::1]:8123/x"), 443) == 8123
    assert url_port(urlsplit("wss://[::1]/x"), 443) == 443
    assert url_port(urlsplit("wss://host/"), 443) == 443


@pytest.mark.parametrize("url", ["https://h:443:1/d", "wss://h::8123/", "wss://[::1]:80:81/"])
def test_a_port_with_a_second_colon_is_no_port(url: str) -> None:
    """A probe's finding: --letsencrypt-issuer https://h:443:1/d was taken, with port 1 (the part after the last
    colon); urllib's .port refuses it."""
    with pytest.raises(ValueError):
        url_port(urlsplit(url), 443)


def test_proxy_protocol_v1_ports_are_ascii_digits() -> None:
    header = parse(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n", "v1")
    assert header is not None and header.source == ("192.0.2.1", 1234)
    for port in ("+80", "8_0", "70000"):
        with pytest.raises(ProxyProtocolError):
            parse(f"PROXY TCP4 192.0.2.1 192.0.2.2 {port} 80\r\n".encode(), "v1")


@pytest.mark.parametrize("service", ["tcp:²", "udp:٣", "tcp:+80", "tcp:8_0"])
def test_a_hello_with_unicode_digits_is_refused_with_a_reason(tls: TlsFiles, token: str, service: str) -> None:
    async def scenario() -> None:
        server = await start_server(tls, token)
        ws = await connect(control_url(server) + "/connect", ssl=client_context(tls.ca),
                           additional_headers={"Authorization": f"Bearer {token}"})
        await ws.send(Hello("tcp", [service], "x", 1 << 20).encode())
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
        assert closed.value.rcvd.reason == f"not a TCP or UDP service: {service!r}"
        await server.stop()

    run(scenario())


CLIENT = ["tcp", "client", "--url", "wss://h:1", "--token", "x"]
SERVER = ["tcp", "server", "--token", "x", "--plaintext"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([*CLIENT, "--upstream", "127.0.0.1", "--ports", "²"], "--ports entry must be a port between 1 and 65535"),
        ([*CLIENT, "--upstream", "127.0.0.1", "--udp-ports", "٣"], "--udp-ports entry must be a port"),
        ([*CLIENT, "--upstream", "²=127.0.0.1:22"], "public port must be a port"),
        ([*CLIENT, "--upstream", "22=127.0.0.1:٣"], "upstream port must be a port"),
        ([*CLIENT, "--local", "²:127.0.0.1:5432"], "--local must be LOCAL_PORT:HOST:REMOTE_PORT"),
        ([*CLIENT, "--local", "5432:127.0.0.1:٣"], "--local must be LOCAL_PORT:HOST:REMOTE_PORT"),
        (["tcp", "client", "--url", "wss://h:²", "--token", "x", "--upstream", "22=h:22"], "--url 'wss://h:²': '²' is not a port"),
        ([*SERVER, "--allow-ports", "²"], "--allow-ports must be a comma-separated list of ports: '²'"),
        ([*SERVER, "--allow-ports", "80,٣"], "--allow-ports must be a comma-separated list of ports: '٣'"),
        ([*SERVER, "--allow-ports", "²", "--generate", "k8s_yaml"], "--allow-ports must be a comma-separated list of ports: '²' is not a port"),
        ([*SERVER, "--control-port", "8123", "--allow-ports", "٣", "--generate", "k8s_yaml"], "--allow-ports must be a comma-separated list of ports: '٣'"),
        ([*SERVER, "--client-forwarding", "--client-forwarding-allow", "127.0.0.1:²"], "bad port in '127.0.0.1:²'"),
        (["status", "--url", "wss://h:²", "--token", "x"], "bad port in 'wss://h:²'"),
        ([*SERVER, "--control-port", "٣٤١٤١"], "Invalid value for '--control-port': '٣٤١٤١' is not a port: give 1-65535"),
        ([*SERVER, "--control-port", "+8123"], "'+8123' is not a port"),
        ([*SERVER, "--control-port", " 8124"], "' 8124' is not a port"),
        ([*SERVER, "--control-port", "81_24"], "'81_24' is not a port"),
        (["http", "server", "--token", "x", "--plaintext", "--port", "٨٠"], "Invalid value for '--port': '٨٠' is not a port"),
        (["http", "server", "--token", "x", "--plaintext", "--https-port", "²"], "'--https-port': '²' is not a port"),
    ],
)
def test_unicode_digits_on_the_command_line_get_one_line(args: list[str], message: str) -> None:
    one_line_error(inlets(*args, env={"INLETS_TOKEN": ""}), message)


def _inletsctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from inlets_py.provisioner.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("ports", ["²", "٣", "80,٣"])
def test_inletsctl_create_ports_are_ascii_digits(tmp_path, ports: str) -> None:
    try:
        result = _inletsctl("create", "--ports", ports, "--state-dir", str(tmp_path))
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [
            f"inletsctl: error: invalid port {ports.split(',')[-1]!r} in --ports {ports!r}: ports are 1-65535"]
    finally:  # had it taken "٣" for port 3, the exit server it started must not outlive the test
        for created in tmp_path.glob("*/server.json"):
            _inletsctl("delete", created.parent.name, "--state-dir", str(tmp_path))
    assert not list(tmp_path.glob("*/server.json"))


@pytest.mark.parametrize("flag", [
    ["--control-port", "٣٤١٢٤"], ["--control-port", "+34125"], ["--control-port", "34_125"], ["--control-port", " 8124"],
    ["--mode", "http", "--http-port", "٨٠"], ["--provider", "ssh", "--host", "root@127.0.0.1", "--port", "٣٤٠٠١"],
], ids=lambda flag: " ".join(flag))
def test_inletsctl_port_flags_are_ascii_digits(tmp_path, flag: list[str]) -> None:
    """The same parser as inlets' port flags, not int(): each gets one line naming the flag and the rule."""
    try:
        result = _inletsctl("create", *flag, "--state-dir", str(tmp_path))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert f"Invalid value for '{flag[-2]}" in line and f"{flag[-1]!r} is not a port: give 1-65535" in line, line
    finally:
        for created in tmp_path.glob("*/server.json"):
            _inletsctl("delete", created.parent.name, "--state-dir", str(tmp_path))
    assert not list(tmp_path.glob("*/server.json"))


@pytest.mark.parametrize("provider", ["digitalocean", "vultr"])
def test_inletsctl_api_url_ports_are_ascii_digits(tmp_path, provider: str) -> None:
    result = _inletsctl("create", "--provider", provider, "--access-token", "x", "--api-url", "http://127.0.0.1:²",
                        "--state-dir", str(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"inletsctl: error: invalid {provider} API URL 'http://127.0.0.1:²' "
                                                  f"(--api-url or ${provider.upper()}_API_URL): '²' is not a port between 1 and 65535"]
