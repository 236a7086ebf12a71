"""Where a cloud's user-data cannot hold the server wheel, the VM waits for it and create sends it.

The receiver here is the very script the user-data carries (render.receiver_script(), decoded), run on
loopback with real TLS; the sender is create's own (wait.deliver_error) and the Terraform
module's (terraform/tools/push_wheel.py). That a booted VM installs and runs what it received
is tests/boot/test_boot.py's."""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.prov_support import free_port
from helpers.tunnel import TlsFiles

from inlets_py.provisioner.errors import ProvisionError
from inlets_py.provisioner.render import receiver_script, wheel_xz_base64
from inlets_py.provisioner.wait import Delivery, deliver_error, healthz_error
from inlets_py.provisioner.wheel import build_runtime_wheel
from inlets_py.runtime.core.certs import EXIT_SERVER_NAME, generate_ca, issue_server_cert

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vm_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate naming inlets-exit-server, as every exit server has."""
    folder = tmp_path_factory.mktemp("vm-tls")
    ca = generate_ca(common_name="push test CA")
    server = issue_server_cert(ca, [EXIT_SERVER_NAME])
    (folder / "ca.crt").write_bytes(ca.cert)
    (folder / "server.crt").write_bytes(server.cert)
    (folder / "server.key").write_bytes(server.key)
    return TlsFiles(ca=folder / "ca.crt", cert=folder / "server.crt", key=folder / "server.key")


def start_receiver(tmp_path: Path, tls: TlsFiles, token: str, sha256: str, timeout: float = 60) -> tuple[subprocess.Popen, int, Path]:
    script = tmp_path / "receive-wheel.py"
    script.write_bytes(gzip.decompress(base64.b64decode(receiver_script())))  # as cloud-init's gz+b64 writes it
    (tmp_path / "token").write_text(token + "\n")
    port, out = free_port(), tmp_path / "received.whl"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--addr", "127.0.0.1", "--port", str(port), "--cert", str(tls.cert), "--key",
         str(tls.key), "--token-file", str(tmp_path / "token"), "--sha256", sha256, "--timeout", str(timeout), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 15
    while (healthz_error("127.0.0.1", port, tls.ca) or "").startswith("cannot reach"):  # not listening yet
        assert time.monotonic() < deadline and proc.poll() is None, "the receiver never listened"
        time.sleep(0.1)
    return proc, port, out


def test_the_receiver_takes_only_the_wheel_in_the_user_data_with_the_token(tmp_path: Path, vm_tls: TlsFiles) -> None:
    wheel = build_runtime_wheel()
    proc, port, out = start_receiver(tmp_path, vm_tls, "t" * 64, wheel.sha256)
    try:
        assert healthz_error("127.0.0.1", port, vm_tls.ca) == "/healthz answered 503"  # still installing
        with pytest.raises(ProvisionError, match=r"refused the runtime wheel: 401 wrong token"):
            deliver_error("127.0.0.1", port, vm_tls.ca, Delivery(wheel, "x" * 64))
        tampered = type(wheel)(wheel.filename, wheel.data + b"\0", wheel.requires)
        with pytest.raises(ProvisionError, match=r"422 the wheel's SHA-256 is not the one in the user-data"):
            deliver_error("127.0.0.1", port, vm_tls.ca, Delivery(tampered, "t" * 64))
        assert not out.exists() and proc.poll() is None
        assert deliver_error("127.0.0.1", port, vm_tls.ca, Delivery(wheel, "t" * 64)) is None
        assert proc.wait(timeout=15) == 0 and out.read_bytes() == wheel.data
    finally:
        proc.kill()
        proc.wait()


def test_a_peer_that_trickles_bytes_cannot_hold_off_the_push(tmp_path: Path, vm_tls: TlsFiles) -> None:
    """The control port faces the internet while the VM waits for its wheel. The receiver served one connection
    at a time with a 30 s timeout per recv, so a peer sending a byte every few seconds held it indefinitely: every
    push from create timed out ('The handshake operation timed out') until the wait ran out."""
    import socket
    import ssl
    import threading

    wheel = build_runtime_wheel()
    proc, port, out = start_receiver(tmp_path, vm_tls, "t" * 64, wheel.sha256)
    stop = threading.Event()
    context = ssl.create_default_context(cafile=str(vm_tls.ca))
    slow = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=EXIT_SERVER_NAME)

    def trickle() -> None:
        while not stop.wait(2):
            slow.send(b"P")

    threading.Thread(target=trickle, daemon=True).start()
    try:
        slow.send(b"P")
        started = time.monotonic()
        assert deliver_error("127.0.0.1", port, vm_tls.ca, Delivery(wheel, "t" * 64)) is None
        assert time.monotonic() - started < 10
        assert proc.wait(timeout=15) == 0 and out.read_bytes() == wheel.data
    finally:
        stop.set()
        slow.close()
        proc.kill()
        proc.wait()


def _nodelay_in(pid: int, peer: tuple) -> int | None:
    """TCP_NODELAY of process ``pid``'s socket connected to ``peer``, read on a copy of its descriptor
    (pidfd_getfd: Linux 5.6, allowed on one's own children); None when it has no such socket."""
    import ctypes
    import socket

    syscall = ctypes.CDLL(None, use_errno=True).syscall
    pidfd = os.pidfd_open(pid)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            copy = syscall(438, pidfd, int(fd), 0)  # SYS_pidfd_getfd, the same number on every architecture
            if copy < 0:
                pytest.skip(f"pidfd_getfd cannot copy the receiver's socket here: {os.strerror(ctypes.get_errno())}")
            with socket.socket(fileno=copy) as sock:
                try:
                    if sock.getpeername() == peer:
                        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                except OSError:  # the listener, or not an internet socket
                    continue
    finally:
        os.close(pidfd)
    return None


def test_the_receivers_connections_have_nodelay(tmp_path: Path, vm_tls: TlsFiles) -> None:
    """The receiver's accepted sockets had no TCP_NODELAY, which every other socket of inlets has: each TLS flight
    and answer could wait on Nagle for create's delayed ACK. Read in the receiver's process once TLS is up."""
    import socket
    import ssl

    proc, port, _ = start_receiver(tmp_path, vm_tls, "t" * 64, "0" * 64)
    context = ssl.create_default_context(cafile=str(vm_tls.ca))
    try:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname=EXIT_SERVER_NAME) as conn:  # the handshake done: so is accept's work
            assert _nodelay_in(proc.pid, conn.getsockname()) == 1
    finally:
        proc.kill()
        proc.wait()


def test_a_receiver_nobody_sends_to_ends_with_an_error(tmp_path: Path, vm_tls: TlsFiles) -> None:
    proc, _, out = start_receiver(tmp_path, vm_tls, "t" * 64, "0" * 64, timeout=2)
    assert proc.wait(timeout=30) == 1 and not out.exists()
    assert "no wheel arrived within 2s" in proc.stderr.read()


def test_the_terraform_tool_sends_the_modules_wheel(tmp_path: Path, vm_tls: TlsFiles) -> None:
    """terraform/tools/push_wheel.py, as the aws-exit-server module runs it (settings in the environment)."""
    wheel = build_runtime_wheel("http")
    proc, port, out = start_receiver(tmp_path, vm_tls, "t" * 64, wheel.sha256)
    try:
        env = dict(os.environ, INLETS_HOST="127.0.0.1", INLETS_PORT=str(port), INLETS_TOKEN="t" * 64,
                   INLETS_CA_CERT=vm_tls.ca.read_text(), INLETS_WHEEL_XZ_BASE64=wheel_xz_base64(wheel),
                   INLETS_TIMEOUT="30")
        pushed = subprocess.run([sys.executable, str(ROOT / "terraform/tools/push_wheel.py")], env=env,
                                capture_output=True, text=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        assert proc.wait(timeout=15) == 0 and out.read_bytes() == wheel.data
    finally:
        proc.kill()
        proc.wait()


def test_peers_without_the_token_are_given_no_memory_for_their_bodies(tmp_path: Path, vm_tls: TlsFiles) -> None:
    """The receiver kept every body before it looked at the token: 32 peers on the internet sending 16 MiB each
    without it made it hold 512 MiB, more than a small VM has (the OOM killer then ends the receiver, and the VM
    never gets its server)."""
    import socket
    import ssl
    import threading

    proc, port, out = start_receiver(tmp_path, vm_tls, "t" * 64, "0" * 64)
    context = ssl.create_default_context(cafile=str(vm_tls.ca))
    length, sent = 16 * 1024 * 1024, threading.Semaphore(0)
    peers = [context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=EXIT_SERVER_NAME)
             for _ in range(4)]  # wheel_receiver.MAX_PER_PEER

    def send(peer: ssl.SSLSocket) -> None:
        peer.sendall(f"PUT /inlets/runtime-wheel HTTP/1.1\r\nAuthorization: Bearer {'x' * 64}\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        for _ in range(length // 65536 - 1):  # all but the last piece: the receiver is still reading
            peer.sendall(b"A" * 65536)
        sent.release()

    def rss_mib() -> int:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) // 1024

    try:
        before = rss_mib()
        for peer in peers:
            threading.Thread(target=send, args=(peer,), daemon=True).start()
        for _ in peers:
            assert sent.acquire(timeout=60)
        time.sleep(0.5)
        assert rss_mib() - before < 32  # 4 x 16 MiB were kept
        assert proc.poll() is None and not out.exists()
    finally:
        for peer in peers:
            peer.close()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sources", [1, 10])
def test_peers_holding_every_connection_cannot_keep_the_push_out(tmp_path: Path, vm_tls: TlsFiles, sources: int) -> None:
    """One peer holding MAX_CONNECTIONS idle TCP connections (no TLS, no byte; each reopened when closed) kept every
    push of create out until its wait ended; then (MAX_PER_PEER) 8 peers of 4 still did: with 10 addresses, every
    push within 10 s was closed unanswered. At the cap the oldest connection not yet authorised now makes room."""
    import socket
    import threading

    wheel = build_runtime_wheel()
    proc, port, out = start_receiver(tmp_path, vm_tls, "t" * 64, wheel.sha256)
    stop, idle = threading.Event(), []

    def hold(source: str) -> None:  # from 127.0.0.2 and on: other peers than create's
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            except OSError:  # the receiver ended
                return
            idle.append(sock)
            try:
                sock.recv(1)  # until the receiver closes it
            except OSError:
                pass

    for n in range(40):
        threading.Thread(target=hold, args=(f"127.0.0.{2 + n % sources}",), daemon=True).start()
    try:
        time.sleep(1)
        deadline, error = time.monotonic() + 10, "never tried"
        while time.monotonic() < deadline:
            error = deliver_error("127.0.0.1", port, vm_tls.ca, Delivery(wheel, "t" * 64))
            if error is None:
                break
            time.sleep(0.5)
        assert error is None
        assert proc.wait(timeout=15) == 0 and out.read_bytes() == wheel.data
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        proc.kill()
        proc.wait()
