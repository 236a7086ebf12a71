"""Load generators: bulk streams (either way), sequential short connections, idle streams.

Plain blocking sockets in threads: sendall/recv release the GIL, and 1 MiB writes keep
the per-call overhead far below what any tunnel costs, so the generator is not the
bottleneck (the direct loopback column shows its ceiling). Every loop is bounded in
count and in time.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from _target import ACK_UNIT
from _util import LOOPBACK, BenchError, connect, percentile

CHUNK = 1024 * 1024
_PAYLOAD = memoryview(bytes(range(256)) * (CHUNK // 256))


@dataclass
class Throughput:
    gbits: float
    bytes: int
    seconds: float


def _send_to_sink(sock: socket.socket, cap: int, deadline: float) -> int:
    """Write up to ``cap`` bytes until ``deadline``; return once the sink has acknowledged them all."""
    sent = 0
    while sent < cap and time.monotonic() < deadline:
        sock.sendall(_PAYLOAD)
        sent += CHUNK
    while sent % ACK_UNIT:  # whole units, so the sink's last ack is exactly `sent`
        sock.sendall(_PAYLOAD)
        sent += CHUNK
    acked, pending = 0, b""
    while acked < sent:
        data = sock.recv(65536)
        if not data:
            raise BenchError(f"sink connection closed after {acked} of {sent} bytes were acknowledged")
        pending += data
        whole = len(pending) - len(pending) % 8
        if whole:
            acked = struct.unpack("!Q", pending[whole - 8:whole])[0]
            pending = pending[whole:]
    return sent


def _receive_from_source(sock: socket.socket, cap: int, deadline: float) -> int:
    """Ask the source for ``cap`` bytes and count them in; stop early at the deadline."""
    sock.sendall(struct.pack("!Q", cap))
    buf = memoryview(bytearray(CHUNK))
    got = 0
    while got < cap and time.monotonic() < deadline:
        n = sock.recv_into(buf)
        if not n:
            raise BenchError(f"source connection closed after {got} of {cap} bytes")
        got += n
    return got


def _stream(transfer: Callable[[socket.socket, int, float], int], port: int, cap: int, start: threading.Barrier,
            deadline_box: list[float], out: list, idx: int, timeout: float, host: str = LOOPBACK) -> None:
    """One connection of a throughput run: connect, wait for the others, ``transfer``; result or error in ``out``."""
    sock: socket.socket | None = None
    try:
        sock = connect(port, host=host)
        sock.settimeout(timeout)
        start.wait(timeout=30)
        moved = transfer(sock, cap, deadline_box[0])
        out[idx] = (moved, time.monotonic())
    except BaseException as exc:  # noqa: BLE001 - reported by the caller
        out[idx] = exc
        try:
            start.abort()
        except Exception:  # noqa: BLE001
            pass
    finally:
        if sock is not None:
            sock.close()


def throughput(port: int, streams: int, max_bytes: int, max_seconds: float, receive: bool = False,
               hosts: tuple[str, ...] = (LOOPBACK,)) -> Throughput:
    """Aggregate goodput of ``streams`` parallel transfers, bounded by bytes and by time.

    ``receive=False``: the generator writes to the sink; the clock runs from the moment
    all streams are connected until the sink has acknowledged the last byte of the
    slowest stream. ``receive=True``: the generator reads from the source; the clock
    stops when the slowest stream has received its bytes (or at the time bound, with
    the bytes received by then). Stream i goes to ``hosts[i % len(hosts)]`` (servers side by side).
    """
    out: list = [None] * streams
    box = [0.0]
    t0_box = [0.0]

    def release() -> None:
        t0_box[0] = time.monotonic()
        box[0] = t0_box[0] + max_seconds

    start = threading.Barrier(streams, action=release)
    threads = [
        threading.Thread(target=_stream, daemon=True,
                         args=(_receive_from_source if receive else _send_to_sink, port, max_bytes // streams,
                               start, box, out, i, max_seconds + 30, hosts[i % len(hosts)]))
        for i in range(streams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 60)
    errors = [r for r in out if isinstance(r, BaseException) and not isinstance(r, threading.BrokenBarrierError)]
    if errors or any(r is None or isinstance(r, BaseException) for r in out):
        raise BenchError(f"throughput with {streams} stream(s) failed: {errors[0] if errors else 'stream hung'!r}")
    total = sum(r[0] for r in out)
    seconds = max(r[1] for r in out) - t0_box[0]
    return Throughput(total * 8 / seconds / 1e9, total, seconds)


@dataclass
class ShortConns:
    count: int
    failures: int
    total_s: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""
    samples_ms: list[float] = field(default_factory=list)


def short_connections(port: int, count: int, max_seconds: float, payload: int = 32) -> ShortConns:
    """Connect, write ``payload`` bytes, read the echo, close; one after another.

    Each sample is connect + round trip, which through a tunnel includes opening the
    stream and dialling the upstream: what a client of the tunnelled service waits for.
    """
    msg = b"x" * payload
    samples: list[float] = []
    failures, first_error = 0, ""
    t_start = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            failures += count - len(samples) - failures
            first_error = first_error or f"stopped at the {max_seconds:.0f}s bound"
            break
        t = time.perf_counter()
        try:
            with connect(port, timeout=10) as sock:
                sock.sendall(msg)
                got = 0
                while got < payload:
                    data = sock.recv(payload - got)
                    if not data:
                        raise BenchError(f"closed after {got} of {payload} echoed bytes")
                    got += len(data)
        except (OSError, BenchError) as exc:
            failures += 1
            first_error = first_error or repr(exc)
            continue
        samples.append(time.perf_counter() - t)
    total = time.perf_counter() - t_start
    return ShortConns(count, failures, total, percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3,
                      first_error, [s * 1e3 for s in samples])


def open_idle(port: int, count: int, max_seconds: float) -> list[socket.socket]:
    """Open ``count`` streams, each proven end to end by a one-byte echo, and leave them open."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + max_seconds
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                raise BenchError(f"only {i} of {count} idle streams opened within {max_seconds:.0f}s")
            sock = connect(port, timeout=10)
            socks.append(sock)
            sock.sendall(b"i")
            if sock.recv(1) != b"i":
                raise BenchError(f"idle stream {i}: no echo")
    except (OSError, BenchError) as exc:
        close_all(socks)
        raise BenchError(f"opening idle streams failed after {len(socks)}: {exc!r}") from exc
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass
    socks.clear()
