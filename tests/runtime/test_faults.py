"""Faults under load, with real processes: what should survive does, byte for byte (sha256 of
256 MiB); what cannot gets a prompt, clean error. Loopback only, every wait bounded."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers.faults import MiB, Download, SourceUpstream, expected_digest, open_fds, rss_kib
from helpers.process import client_args, server_args, spawn, stop_all, wait_for_text, wait_port
from helpers.tunnel import TlsFiles, free_port

SIZE = 256 * MiB


class Tunnel:
    """One server process and its clients, each client with its own tagged upstream."""

    def __init__(self, tmp_path: Path, tls: TlsFiles, token_file: Path, *server_extra: str) -> None:
        self.tmp, self.tls, self.token_file = tmp_path, tls, token_file
        self.control, self.public = free_port(), free_port()
        self.server_extra = server_extra
        self.server = self.start_server()
        self.clients: dict[bytes, object] = {}
        self.upstreams: dict[bytes, SourceUpstream] = {}

    def start_server(self, name: str = "server"):
        process = spawn(*server_args(self.control, self.tls, self.token_file, *self.server_extra),
                        log=self.tmp / f"{name}.log")
        wait_port(self.control)
        return process

    def add_client(self, tag: bytes, *extra: str):
        upstream = self.upstreams.setdefault(tag, SourceUpstream(tag))
        process = spawn(*client_args(self.control, self.tls, self.token_file,
                                     "--upstream", f"{self.public}={'127.0.0.1'}:{upstream.port}", *extra),
                        log=self.tmp / f"client-{tag.decode()}.log")
        wait_for_text(self.tmp / f"client-{tag.decode()}.log", "event=connected")
        wait_port(self.public)
        self.clients[tag] = process
        return process

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def close(self) -> None:
        stop_all(*self.clients.values(), self.server)
        for upstream in self.upstreams.values():
            upstream.close()


@pytest.fixture
def tunnel(tmp_path: Path, tls: TlsFiles, token_file: Path):
    made: list[Tunnel] = []

    def make(*server_extra: str) -> Tunnel:
        made.append(Tunnel(tmp_path, tls, token_file, *server_extra))
        return made[-1]

    yield make
    for item in made:
        item.close()


def downloads_on_each_client(t: Tunnel, count: int = 2, size: int = SIZE) -> dict[bytes, Download]:
    """Start downloads until one runs through each client (round robin spreads them)."""
    found: dict[bytes, Download] = {}
    for seed in range(10):
        download = Download(t.public, size, seed)
        assert download.started.wait(10)
        if download.tag and download.tag not in found:
            found[download.tag] = download
        if len(found) == count:
            return found
    raise AssertionError(f"round robin never reached every client: {list(found)}")


def test_client_killed_mid_transfer_only_its_streams_fail(tunnel) -> None:
    t = tunnel()
    t.add_client(b"A")
    t.add_client(b"B")
    running = downloads_on_each_client(t)
    running[b"A"].wait_for(16 * MiB)
    killed_at = time.monotonic()
    t.clients[b"A"].send_signal(signal.SIGKILL)
    t.clients[b"A"].wait(5)
    lost = running[b"A"].wait(30)
    survivor = running[b"B"].wait(120)
    assert lost.received < SIZE and lost.finished_at - killed_at < 5, "the dead client's stream must end promptly"
    assert survivor.error == "" and survivor.received == SIZE
    assert survivor.digest == expected_digest(SIZE, survivor.seed)
    wait_for_text(t.tmp / "server.log", "event=client_disconnected")
    after = [Download(t.public, MiB, 100 + i).wait(30) for i in range(10)]  # all to B now, none fails
    assert all(d.error == "" and d.tag == b"B" and d.received == MiB for d in after)


def test_server_restart_fails_streams_cleanly_then_traffic_resumes(tunnel) -> None:
    t = tunnel()
    t.add_client(b"A")
    download = Download(t.public, SIZE, 1)
    download.wait_for(16 * MiB)
    t.server.send_signal(signal.SIGKILL)
    t.server.wait(5)
    broken = download.wait(30)
    assert broken.received < SIZE
    t.server = t.start_server("server2")
    wait_for_text(t.tmp / "client-A.log", "event=disconnected")
    wait_port(t.public, timeout=20)  # the client reconnected and advertised again
    fresh = Download(t.public, SIZE, 2).wait(120)
    assert fresh.error == "" and fresh.received == SIZE and fresh.digest == expected_digest(SIZE, 2)


def test_upstream_reset_mid_stream_reaches_the_user_and_spares_other_streams(tunnel) -> None:
    t = tunnel()
    t.add_client(b"A")
    cut = Download(t.public, SIZE, 3, reset_after=32 * MiB).wait(60)
    assert 0 < cut.received <= 32 * MiB + 1
    assert "Reset" in cut.error or cut.error == ""  # RST (or EOF if the RST raced the data)
    healthy = Download(t.public, SIZE, 4)  # runs beside other streams that get reset
    healthy.wait_for(8 * MiB)
    doomed = [Download(t.public, SIZE, 5 + i, reset_after=(i + 1) * 4 * MiB) for i in range(4)]
    assert all(d.wait(60).received < SIZE for d in doomed)
    healthy.wait(120)
    assert healthy.error == "" and healthy.received == SIZE and healthy.digest == expected_digest(SIZE, 4)


def test_network_stall_is_detected_by_keepalive_and_the_client_comes_back(tunnel, tmp_path: Path) -> None:
    """A relay between client and server stops moving bytes (both ways) for a while."""
    t = tunnel("--keepalive", "3")
    frozen = threading.Event()
    relay = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while frozen.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while True:
            try:
                conn, _ = relay.accept()
            except OSError:
                return
            if frozen.is_set():  # while "the network" is down, nothing gets through
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", t.control))
            except OSError:  # the server is gone (the test is ending): as a network would, drop the peer
                conn.close()
                continue
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    upstream = t.upstreams.setdefault(b"A", SourceUpstream(b"A"))
    client = spawn("tcp", "client", "--url", f"wss://127.0.0.1:{relay.getsockname()[1]}", "--token-file",
                   str(t.token_file), "--tls-ca", str(t.tls.ca), "--tls-server-name", "127.0.0.1", "--keepalive", "3",
                   "--upstream", f"{t.public}=127.0.0.1:{upstream.port}", log=tmp_path / "client-A.log")
    t.clients[b"A"] = client
    wait_port(t.public)
    download = Download(t.public, SIZE, 6)
    download.wait_for(8 * MiB)
    frozen.set()
    stalled_at = time.monotonic()
    wait_for_text(tmp_path / "server.log", "event=client_disconnected", timeout=10)
    detected = time.monotonic() - stalled_at
    assert detected <= 3 + 1.5, f"server took {detected:.1f}s to notice a dead client with --keepalive 3"
    assert download.wait(10).received < SIZE  # the stream on the dead tunnel ends, it does not hang
    wait_for_text(tmp_path / "client-A.log", "event=disconnected", timeout=10)
    frozen.clear()
    wait_for_text(tmp_path / "server.log", "services=tcp:", timeout=5)
    deadline = time.monotonic() + 20
    while t.log("server").count("event=client_connected") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    wait_port(t.public)
    again = Download(t.public, 64 * MiB, 7).wait(60)
    assert again.received == 64 * MiB and again.digest == expected_digest(64 * MiB, 7)
    relay.close()


def test_client_reconnect_lets_old_streams_finish(tunnel) -> None:
    """SIGHUP: the client connects anew while a 256 MiB download finishes on the old connection."""
    t = tunnel()
    client = t.add_client(b"A")
    old = Download(t.public, SIZE, 8)
    old.wait_for(16 * MiB)
    client.send_signal(signal.SIGHUP)
    wait_for_text(t.tmp / "server.log", "event=peer_draining")
    new = Download(t.public, 16 * MiB, 9).wait(60)
    assert new.received == 16 * MiB and new.digest == expected_digest(16 * MiB, 9)
    old.wait(120)
    assert old.error == "" and old.received == SIZE and old.digest == expected_digest(SIZE, 8)
    wait_for_text(t.tmp / "server.log", "event=client_disconnected")  # the old connection, once drained


def test_one_of_two_clients_dies_under_load_no_new_connection_fails_after_detection(tunnel) -> None:
    t = tunnel()
    t.add_client(b"A")
    t.add_client(b"B")
    failures_after: list[str] = []
    served: dict[bytes, int] = {b"A": 0, b"B": 0}
    detected = threading.Event()
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            new_connection = detected.is_set()  # one opened before the server noticed may still have gone to A
            download = Download(t.public, 64 * 1024, 11).wait(30)
            if download.received == 64 * 1024:
                served[download.tag] = served.get(download.tag, 0) + 1
            elif new_connection:
                failures_after.append(download.error or f"short: {download.received}")

    workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    t.clients[b"A"].send_signal(signal.SIGKILL)
    wait_for_text(t.tmp / "server.log", "event=client_disconnected")
    detected.set()
    before_b = served[b"B"]
    time.sleep(2.0)
    stop.set()
    for worker in workers:
        worker.join(35)
    assert failures_after == []
    assert served[b"A"] > 0 and served[b"B"] - before_b > 20


def test_a_reader_that_never_reads_keeps_both_processes_memory_bounded(tunnel) -> None:
    """1 GiB offered by the upstream, nobody reads it: the windows hold it back at the source."""
    t = tunnel()
    t.add_client(b"A")
    pids = {"server": t.server.pid, "client": t.clients[b"A"].pid}
    Download(t.public, MiB, 0).wait(30)  # warm up both processes
    baseline = {name: rss_kib(pid) for name, pid in pids.items()}
    sock = socket.create_connection(("127.0.0.1", t.public))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"SEND {1024 * MiB} 12\n".encode())
    peak = dict(baseline)
    for _ in range(30):  # 3 s: long enough for every buffer on the way to fill
        time.sleep(0.1)
        for name, pid in pids.items():
            peak[name] = max(peak[name], rss_kib(pid))
    growth = {name: (peak[name] - baseline[name]) / 1024 for name in pids}
    print(f"\nRSS MiB baseline={ {k: round(v / 1024, 1) for k, v in baseline.items()} } growth={growth}")
    assert all(g < 24 for g in growth.values()), growth  # one 2 MiB window plus socket buffers, not 1 GiB
    # and the stream is alive, just held back: reading now gets data
    sock.settimeout(10)
    assert len(sock.recv(65536)) > 0
    sock.close()
    assert open_fds(t.server.pid) < 64
