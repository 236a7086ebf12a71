"""A user's machine and a cloud VM, side by side: what each boot test starts.

A World is one user-side network namespace (where ``inletsctl``, the printed client and
the services it forwards to run, exactly as printed) and one VM (a booted container). The
fake DigitalOcean API listens on the user's side and boots each droplet's user-data in
the World's VM, so ``inletsctl create --provider digitalocean`` runs its real path: the
API, the boot, the wait for /healthz over pinned TLS, the summary.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from helpers.prov_fake_do import FakeDigitalOcean
from helpers.prov_support import INLETSCTL, HelloUpstream, Result, user_env
from vm import VM_ADDR, Container, Network

DO_TOKEN = "dop_v1_" + "b" * 64


class World:
    def __init__(self, root: Path, tag: str, workdir: Path, public_keys: tuple[str, ...] = ()) -> None:
        self.root, self.tag, self.workdir, self.public_keys = root, tag, workdir, public_keys
        workdir.mkdir(parents=True, exist_ok=True)
        self.net = Network(tag).up()
        self.vm: Container | None = None
        self.api: FakeDigitalOcean | None = None
        self.state = workdir / "state"
        self._closers: list[object] = []

    # -- the VM ---------------------------------------------------------------------------
    def boot_vm(self, user_data: str) -> Container:
        assert self.vm is None, "one VM per world"
        self.vm = Container(self.root, self.net, self.tag, user_data, self.workdir / "vm", self.public_keys)
        return self.vm.start()

    # -- the fake cloud, as a Booter -------------------------------------------------------
    def cloud(self) -> FakeDigitalOcean:
        if self.api is None:
            (self.workdir / "do-token").write_text(DO_TOKEN + "\n")
            self.api = self.net.on_user_side(lambda: FakeDigitalOcean(DO_TOKEN, self.workdir / "cloud", booter=self))
            self.api.__enter__()
        return self.api

    def boot(self, droplet_id: int, user_data: str) -> str:
        self.boot_vm(user_data)
        return VM_ADDR

    def stop(self, droplet_id: int) -> None:
        if self.vm is not None:
            self.vm.stop()

    # -- the user's side --------------------------------------------------------------------
    def inletsctl(self, *args: str, timeout: float = 600) -> Result:
        """``inletsctl ARGS`` on the user's side (with the fake API and this world's state folder for create/delete)."""
        argv = [str(INLETSCTL), *args]
        if args and args[0] in ("create", "delete", "list", "status"):
            argv += ["--state-dir", str(self.state)]
            if self.api is not None and "--provider" in args and "digitalocean" in args:
                argv += ["--api-url", self.api.url, "--access-token-file", str(self.workdir / "do-token")]
        done = subprocess.run(self.net.user_argv(*argv), capture_output=True, text=True, timeout=timeout,
                              env=user_env(), stdin=subprocess.DEVNULL)
        return Result(done.returncode, done.stdout, done.stderr)

    def run_printed(self, command: str, log_name: str) -> subprocess.Popen[bytes]:
        """The printed client command, verbatim through a shell, on the user's side."""
        with open(self.workdir / log_name, "wb") as log:
            proc = subprocess.Popen(self.net.user_argv("/bin/sh", "-c", f"exec {command}"), env=user_env(),
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self._closers.append(proc)
        return proc

    def echo_server(self, port: int) -> None:
        """A TCP echo service on the user's 127.0.0.1:``port``: what the client forwards to."""

        class Echo(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(data)

        server = self.net.on_user_side(lambda: socketserver.ThreadingTCPServer(("127.0.0.1", port), Echo))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._closers.append(server)

    def http_upstream(self, port: int) -> None:
        server = self.net.on_user_side(lambda: http.server.ThreadingHTTPServer(("127.0.0.1", port), HelloUpstream))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._closers.append(server)

    def echo_through(self, port: int, size: int = 4 * 1024 * 1024, timeout: float = 60) -> None:
        """Random bytes to the VM's data ``port`` come back byte-exact (through the tunnel and the echo)."""
        payload = os.urandom(size)
        deadline = time.monotonic() + timeout
        while True:
            try:
                received = self.net.on_user_side(lambda: _echo(VM_ADDR, port, payload))
            except OSError as exc:
                received, error = b"", exc
            else:
                error = None
            if received == payload:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(payload)} bytes to {VM_ADDR}:{port} came back as {len(received)} "
                                     f"(sha256 {hashlib.sha256(received).hexdigest()[:12]}): {error}{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        out = ""
        for log in sorted(self.workdir.glob("*.log")):
            out += f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return out + (self.vm.tail() if self.vm else "")

    def close(self) -> None:
        for item in reversed(self._closers):
            if isinstance(item, subprocess.Popen):
                item.terminate()
                try:
                    item.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    item.kill()
            else:
                item.shutdown()  # type: ignore[attr-defined]
                item.server_close()  # type: ignore[attr-defined]
        if self.vm is not None:
            self.vm.stop()
        if self.api is not None:
            self.api.__exit__(None, None, None)
        self.net.down()


def _echo(host: str, port: int, payload: bytes) -> bytes:
    """Send while receiving (a window-limited tunnel would stall a send-everything-first echo)."""
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks: list[bytes] = []
        while data := sock.recv(1 << 20):
            chunks.append(data)
        sender.join(timeout=20)
    return b"".join(chunks)


def iterate_until(timeout: float, interval: float = 1.0) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        yield
        time.sleep(interval)
