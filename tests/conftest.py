"""Shared fixtures: TLS material and a token, generated once per test session."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from helpers.tunnel import TlsFiles, free_port, make_tls

# The suite runs as a user with this installation's commands on PATH (an activated venv), so the commands inletsctl
# prints name them bare (provisioner/output.command_word); test_prov_cli_output.py runs inletsctl without them.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

# A suite started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and so would
# every command it starts: the Ctrl-C tests' inletsctl and inlets then ran on through their SIGINT (4 ssh and 1 local
# test failed so). A handled signal is reset to its default at exec, an ignored one is not: handle it here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def token() -> str:
    return "test-token-0123456789abcdef0123456789abcdef"


@pytest.fixture
def token_file(tmp_path, token: str):
    """The session's token in a 0600 file, as ``--token-file`` takes it."""
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def echo_port():
    """A threaded TCP echo server on loopback, for tests that run the tunnel as processes."""
    import socketserver
    import threading

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except ConnectionResetError:  # tests that reset their users (failover): not the echo's error to print
                pass

    # a port of this worker's own slice, not bind(0)'s: tests serve the echo's port number again on 127.0.0.2
    # (a data port), where an ephemeral number may be taken by another worker's connection (seen once in CI:
    # "server cannot listen on 127.0.0.2:39661: port in use there")
    server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), Echo)
    server.daemon_threads = True
    # shutdown() waits for serve_forever's next look at its flag: 0.05 s, not the default 0.5 s in each test's teardown
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
