"""``inlets status``'s blocking dial through an HTTP or SOCKS5 proxy, against a scripted proxy on loopback."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading

import pytest

from runtime.client.proxy_dial import dial
from runtime.core.probe import ProbeError


def scripted_proxy(answer: bytes) -> tuple[int, list[bytes], threading.Thread]:
    """A one-connection proxy: records the CONNECT request, sends ``answer``, closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    seen: list[bytes] = []

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                seen.append(head)
                try:
                    conn.sendall(answer)
                except OSError:
                    pass  # the client gave up reading, as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], seen, thread


@pytest.mark.parametrize("password, given", [("p%41ss:w/rd@x", "p%2541ss%3Aw%2Frd%40x"), ("50%off", "50%25off")])
def test_a_password_with_percent_signs_is_sent_as_given(password: str, given: str) -> None:
    """parse_proxy decodes the URL's user and password once; the dial decoded them again, so a password
    holding "%41" (from --proxy-password-file, $INLETS_PROXY_PASSWORD, or percent-encoded in --proxy) went
    out as "A": the proxy refused credentials that the tunnel client itself sends correctly."""
    port, seen, thread = scripted_proxy(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ProbeError, match="HTTP 403"):
        dial(f"http://alice:{given}@127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5)
    thread.join(10)
    header = next(line for line in seen[0].split(b"\r\n") if line.startswith(b"Proxy-Authorization: Basic "))
    assert base64.b64decode(header.split()[-1]).decode() == f"alice:{password}"


def test_an_endless_answer_head_is_the_proxys_fault_not_the_servers() -> None:
    """A head past 16 KiB was cut there and its status line taken as the answer: "200" then led to a TLS
    handshake over the rest of the head, reported as the server's port speaking no TLS."""
    junk = b"HTTP/1.1 200 Connection established\r\n" + b"X-Junk: " + b"a" * 40_000 + b"\r\n"
    port, _, thread = scripted_proxy(junk)
    with pytest.raises(ProbeError) as raised:
        dial(f"http://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5)
    thread.join(10)
    assert f"proxy http://127.0.0.1:{port} sent an answer to CONNECT 127.0.0.1:8123 longer than 16 KiB" in str(raised.value)


def test_the_proxys_reason_phrase_reaches_the_terminal_without_control_characters() -> None:
    """`inlets status` printed a refusal's reason phrase as the proxy sent it, terminal escapes included. A C0
    control (ESC, BEL) is no reason phrase at all, for the client too; C1's CSI (0x9b) is a byte one may carry."""
    port, _, thread = scripted_proxy(b"HTTP/1.1 403 Nope\x9b2J\x9b31m\x85 " + b"x" * 500 + b"\r\n\r\n")
    with pytest.raises(ProbeError) as raised:
        dial(f"http://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5)
    thread.join(10)
    message = str(raised.value)
    assert "HTTP 403 Nope?2J?31m? xxx" in message and message.isprintable(), message
    assert len(message) < 400, message
    port, _, thread = scripted_proxy(b"HTTP/1.1 403 Nope\x1b[2J\x07\r\n\r\n")
    with pytest.raises(ProbeError, match="sent no valid HTTP answer to CONNECT"):
        dial(f"http://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5)
    thread.join(10)


def test_an_ipv6_target_is_named_in_brackets() -> None:
    """"refused CONNECT ::1:8123": which part is the port? The request says [::1]:8123, and so does the error."""
    port, seen, thread = scripted_proxy(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    with pytest.raises(ProbeError) as raised:
        dial(f"http://127.0.0.1:{port}", "::1", 8123, timeout=5)
    thread.join(10)
    assert seen[0].startswith(b"CONNECT [::1]:8123 HTTP/1.1\r\nHost: [::1]:8123\r\n"), seen
    assert "refused CONNECT [::1]:8123: HTTP 403" in str(raised.value), raised.value


def test_a_proxy_dripping_its_answer_is_given_the_timeout_once_not_per_line() -> None:
    """Each read waited up to the timeout and the head may be 16 KiB, so a proxy sending a header line now and then
    held `inlets status --timeout 5` for 51 s (measured: a line every 50 ms); one every 4 s, for 18 hours. Here it
    drips 40 lines over 4 s and then grants the tunnel: the dial gives up at its 0.5 s instead of taking it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                try:
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n")
                    for number in range(40):
                        threading.Event().wait(0.1)
                        conn.sendall(b"X-Drip-%d: y\r\n" % number)
                    conn.sendall(b"\r\n")
                except OSError:
                    pass  # the client gave up reading, as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    with pytest.raises(ProbeError) as raised:
        dial(f"http://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=0.5).close()
    thread.join(10)
    assert str(raised.value).startswith(f"proxy http://127.0.0.1:{port} gave no complete answer to CONNECT "
                                        "127.0.0.1:8123 within 0.5s"), raised.value


def scripted_socks5(steps: list[bytes], pause: float = 0.0) -> tuple[int, threading.Thread]:
    """A one-connection SOCKS5 proxy: reads the greeting, sends ``steps[0]``, then for each later step reads the
    client's next message and sends it; each step a byte at a time, ``pause`` seconds apart."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                try:
                    for step in steps:
                        conn.recv(512)
                        for byte in step:
                            threading.Event().wait(pause)
                            conn.sendall(bytes([byte]))
                    conn.recv(512)  # until the client closes
                except OSError:
                    pass  # the client gave up, as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_a_socks_proxy_dripping_its_reply_is_given_the_timeout_once_not_per_read() -> None:
    """python-socks gave each read the whole timeout, so a SOCKS5 proxy sending its reply a byte at a time held
    `inlets status --timeout 5` for 156 s (a 262-byte reply, 0.3 s a byte). Here 12 bytes come 0.1 s apart: a
    tunnel granted after 1.2 s, which the dial must not wait for with its 0.5 s."""
    port, thread = scripted_socks5([b"\x05\x00", b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00"], pause=0.1)
    with pytest.raises(ProbeError) as raised:
        dial(f"socks5://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=0.5).close()
    thread.join(10)
    assert str(raised.value) == (f"proxy socks5://127.0.0.1:{port} gave no complete SOCKS answer for 127.0.0.1:8123 "
                                 "within 0.5s: check that the proxy is up and can reach 127.0.0.1:8123"), raised.value


def test_a_socks_proxy_granting_the_tunnel_in_time_gives_a_socket_with_the_timeout() -> None:
    """The deadline ends only an exchange still going: a grant in time is a socket whose waits are bounded."""
    port, thread = scripted_socks5([b"\x05\x00", b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00"])
    with dial(f"socks5://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5) as sock:
        assert sock.gettimeout() == 5
    thread.join(10)


@pytest.mark.parametrize("steps, user, says", [
    ([b"\x05\x00", b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00"], "", "cannot reach 127.0.0.1:8123: Host unreachable "
     "(the proxy cannot reach that host: check that the server is up and that --url names an address the proxy can "
     "reach)"),
    ([b"\x05\x00", b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"], "", "cannot reach 127.0.0.1:8123: Network "
     "unreachable (the proxy has no route to that network: check that --url names an address the proxy can reach)"),
    ([b"\x05\xff"], "", "refused the connection to 127.0.0.1:8123: No acceptable authentication methods were offered "
     "(proxy credentials missing: give --proxy socks5://USER@HOST:PORT with --proxy-password-file FILE or "
     "$INLETS_PROXY_PASSWORD)"),
    ([b"\x05\xff"], "alice:pw@", "refused the connection to 127.0.0.1:8123: No acceptable authentication methods were "
     "offered (the proxy accepts neither no authentication nor a user and password, the only methods inlets speaks: "
     "ask its administrators for a user and password it takes)"),
])
def test_a_socks5_refusal_says_what_to_do(steps: list[bytes], user: str, says: str) -> None:
    """'refused the connection to HOST:PORT: Host unreachable' said nothing to do; a 0xFF to a client that offered a
    user and password was read as the credentials refused, though the proxy takes no user and password at all."""
    port, thread = scripted_socks5(steps)
    with pytest.raises(ProbeError) as raised:
        dial(f"socks5://{user}127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5).close()
    thread.join(10)
    user_shown = user.partition(":")[0] + "@" if user else ""
    assert str(raised.value) == f"proxy socks5://{user_shown}127.0.0.1:{port} {says}", raised.value


@pytest.mark.parametrize("kind", ["http", "socks5"])
def test_the_socket_to_the_proxy_has_nodelay(kind: str) -> None:
    """The blocking dial's socket (`inlets status --proxy`, inletsctl's waits and wheel push) had no TCP_NODELAY,
    which every other socket of inlets has: each request's tail waited on Nagle for the proxy's delayed ACK."""
    if kind == "http":
        port, _, thread = scripted_proxy(b"HTTP/1.1 200 Connection established\r\n\r\n")
    else:
        port, thread = scripted_socks5([b"\x05\x00", b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00"])
    with dial(f"{kind}://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    thread.join(10)


def test_an_https_proxy_that_speaks_plain_http_is_said_so_without_openssls_words() -> None:
    """TLS with an https:// proxy that failed was said in OpenSSL's words: "[SSL: WRONG_VERSION_NUMBER] wrong
    version number (_ssl.c:1006)"."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    conn.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    with pytest.raises(ProbeError) as raised:
        dial(f"https://127.0.0.1:{port}", "127.0.0.1", 8123, timeout=5)
    thread.join(10)
    assert str(raised.value) == (f"proxy https://127.0.0.1:{port} does not speak TLS: for a proxy that takes plain "
                                 "HTTP, give it as http://"), raised.value
