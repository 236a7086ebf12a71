"""A port in use, said as the TCP data port's is: where, why, and what to do; never asyncio's
wrapper with its Python tuple, nor uvloop's "could not bind to local_addr (...)"."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from helpers.process import client_args, inlets, server_args, spawn, wait_port
from helpers.tunnel import TlsFiles, free_port


def test_a_udp_data_port_in_use_is_one_line_saying_what_to_do(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        try:
            wait_port(control)
            result = inlets(*client_args(control, tls, token_file, "--upstream", "127.0.0.1", "--udp-ports", str(taken)))
        finally:
            server.terminate()
            server.wait(10)
    assert result.returncode == 1
    assert result.stderr == (f"inlets: error: the server refused this client: server cannot listen on 127.0.0.1:{taken}: "
                             "port in use there; free it or give the server another --data-addr\n")


def test_a_local_forward_port_in_use_is_one_line_saying_what_to_do(tls: TlsFiles, token_file: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = inlets(*client_args(free_port(), tls, token_file, "--local", f"{taken}:127.0.0.1:5432"))
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines()[-1] == (
        f"inlets: error: cannot listen on 127.0.0.1:{taken} for --local: Address already in use: "
        "another program uses it: stop it, or pick another LOCAL_PORT")
    assert "('127.0.0.1'" not in result.stderr and "Traceback" not in result.stderr


def test_a_server_port_in_use_names_the_port_and_the_flag_that_moves_it(tls: TlsFiles, token_file: Path) -> None:
    """It said 'cannot listen (control 127.0.0.1:P, data 127.0.0.1:Q): Address already in use', leaving the user
    to find which of the two was taken."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        common = ("--token-file", str(token_file), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
                  "--control-addr", "127.0.0.1")
        data_taken = inlets("http", "server", *common, "--control-port", str(free_port()), "--data-addr", "127.0.0.1",
                            "--port", str(taken))
        control_taken = inlets("tcp", "server", *common, "--control-port", str(taken))
    for result, role, flag in ((data_taken, "data", "--port"), (control_taken, "control", "--control-port")):
        assert result.returncode == 1, result
        assert result.stderr.strip().splitlines()[-1] == (
            f"inlets: error: cannot listen on 127.0.0.1:{taken} ({role} port): Address already in use: "
            f"another program uses it: stop it, or give another {flag}"), result.stderr


def test_an_address_not_of_this_machine_names_the_flag_that_sets_it(tls: TlsFiles, token_file: Path) -> None:
    """--control-addr 192.0.2.1 (no interface has it) ended in 'Cannot assign requested address' alone."""
    common = ("--token-file", str(token_file), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    control = inlets("tcp", "server", *common, "--control-addr", "192.0.2.1", "--control-port", str(free_port()))
    data = inlets("http", "server", *common, "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
                  "--data-addr", "192.0.2.1", "--port", str(free_port()))
    for result, role, flag in ((control, "control", "--control-addr"), (data, "data", "--data-addr")):
        assert result.returncode == 1, result
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("inlets: error: cannot listen on 192.0.2.1:") and f"({role} port)" in line, line
        assert line.endswith(f"Cannot assign requested address: it is not an address of this machine: give one of "
                             f"its own in {flag}, or leave it out for every interface"), line


@pytest.mark.parametrize("address, said", [
    ("fe80::1", "a link-local address needs its interface: give fe80::1%IFACE (eth0, say) in"),
    ("::ffff:127.0.0.1", "an IPv4-mapped address cannot be listened on: give 127.0.0.1 in"),
])
def test_an_address_the_kernel_cannot_bind_says_what_to_give(tls: TlsFiles, token_file: Path, address: str,
                                                            said: str) -> None:
    """Found by a probe: a link-local address without its interface, or an IPv4-mapped one, ended in the kernel's
    bare 'Invalid argument', with no next step."""
    common = ("--token-file", str(token_file), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    control = inlets("tcp", "server", *common, "--control-addr", address, "--control-port", str(free_port()))
    data = inlets("http", "server", *common, "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
                  "--data-addr", address, "--port", str(free_port()))
    for result, flag in ((control, "--control-addr"), (data, "--data-addr")):
        assert result.returncode == 1, result
        line = result.stderr.strip().splitlines()[-1]
        assert line.endswith(f"Invalid argument: {said} {flag}"), line


def test_a_tcp_servers_data_addr_not_of_this_machine_is_found_at_start(tls: TlsFiles, token_file: Path) -> None:
    """The TCP server opens its data ports when clients ask: it started with such a --data-addr, and only each
    client learnt of it, in its refusal; the HTTP server's own check says it at start."""
    common = ("--token-file", str(token_file), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    result = inlets("tcp", "server", *common, "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
                    "--data-addr", "192.0.2.1")
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines()[-1] == (
        "inlets: error: cannot listen on 192.0.2.1 (data port): Cannot assign requested address: it is not an "
        "address of this machine: give one of its own in --data-addr, or leave it out for every interface"), result
