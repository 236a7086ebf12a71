"""Long transfers for fault tests: position-dependent data, checked by sha256, never held whole.

An upstream thread serves each connection: it reads a one-line request
``SEND <bytes> <seed> [<reset after bytes>]\\n`` (or ``SINK\\n``), then streams or swallows; a tag byte first
tells the test which upstream (so which client) the connection reached. ``BlockingOnWrap`` stands in for
another interpreter's socket class.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field

BLOCK = 1 << 20
MiB = 1 << 20


def blocks(size: int, seed: int):
    """The same stream of bytes for a (size, seed), 1 MiB at a time; each block numbered."""
    base = random.Random(seed).randbytes(BLOCK)
    sent = 0
    index = 0
    while sent < size:
        block = index.to_bytes(8, "big") + base[8:]
        take = min(BLOCK, size - sent)
        yield block[:take]
        sent += take
        index += 1


def expected_digest(size: int, seed: int) -> str:
    digest = hashlib.sha256()
    for block in blocks(size, seed):
        digest.update(block)
    return digest.hexdigest()


@dataclass
class SourceUpstream:
    """A loopback TCP server that streams on request, with a tag byte first."""

    tag: bytes = b"A"
    connections: int = 0
    listener: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        try:
            line = b""
            while not line.endswith(b"\n") and len(line) < 100:
                chunk = conn.recv(100 - len(line))
                if not chunk:
                    return
                line += chunk
            words = line.split()
            conn.sendall(self.tag)
            if words[:1] == [b"SEND"]:
                size, seed = int(words[1]), int(words[2])
                reset_after = int(words[3]) if len(words) > 3 else None  # then abort with a TCP RST
                sent = 0
                for block in blocks(size, seed):
                    if reset_after is not None and sent + len(block) > reset_after:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        return
                    conn.sendall(block)
                    sent += len(block)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)
            elif words[:1] == [b"SINK"]:
                digest = hashlib.sha256()
                while data := conn.recv(BLOCK):
                    digest.update(data)
                conn.sendall(digest.hexdigest().encode())
        except OSError:
            pass
        finally:
            conn.close()


@dataclass
class Download:
    """One download through the tunnel, in a thread: its tag, byte count, digest or error."""

    port: int
    size: int
    seed: int
    reset_after: int | None = None  # ask the upstream to reset the connection after this many bytes
    tag: bytes = b""
    received: int = 0
    digest: str = ""
    error: str = ""
    finished_at: float = 0.0
    thread: threading.Thread = field(init=False)
    started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        digest = hashlib.sha256()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                reset = f" {self.reset_after}" if self.reset_after is not None else ""
                sock.sendall(f"SEND {self.size} {self.seed}{reset}\n".encode())
                self.tag = sock.recv(1)
                self.started.set()
                buffer = bytearray(BLOCK)
                while True:
                    count = sock.recv_into(buffer)
                    if not count:
                        break
                    digest.update(memoryview(buffer)[:count])
                    self.received += count
        except OSError as exc:
            self.error = f"{exc.__class__.__name__}: {exc}"
        finally:
            self.started.set()
            self.digest = digest.hexdigest()
            self.finished_at = time.monotonic()

    def wait(self, timeout: float = 120) -> "Download":
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"download still running after {timeout}s ({self.received} bytes)"
        return self

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.received < count and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class BlockingOnWrap(socket.socket):
    """A socket class as PyPy's: a socket object made over a descriptor makes that descriptor blocking."""

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
        super().__init__(family, type, proto, fileno)
        if fileno is not None:
            os.set_blocking(fileno, True)
