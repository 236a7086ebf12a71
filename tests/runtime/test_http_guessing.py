"""A protected site's password is guessed no faster than the control port's token: 429 after 10 wrong a minute."""

from __future__ import annotations

import base64
import re

from helpers.http import LOOPBACK, Stack, raw_request
from inlets_py.runtime.http.options import HttpOptions


def _status(port: int, *headers: str) -> bytes:
    """The status code of one request for the protected name."""
    head = "".join(f"{h}\r\n" for h in ("GET / HTTP/1.1", "Host: guarded.test", "Connection: close", *headers))
    return raw_request(port, (head + "\r\n").encode()).split(b" ", 2)[1]


def _basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_wrong_site_passwords_from_one_source_get_429_the_right_one_too(tls, token) -> None:
    """Every wrong password was a 401, at 10,000 a second over one connection, unlogged; then the right one
    passed while wrong ones got 429, which told a guesser which was right at 3,000 guesses a second."""
    stack = Stack()
    try:
        _, up = stack.upstream("G")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"guarded.test=http://{LOOPBACK}:{up}"],
                     HttpOptions.build(basic_auth=("alice", "right-password")))
        port = server.data_port
        wrong = [_status(port, _basic("alice", f"guess-{i}")) for i in range(12)]
        without = _status(port)  # a browser's first request: a challenge, not a guess
        right = _status(port, _basic("alice", "right-password"))
        still = _status(port, _basic("alice", "guess-again"))
        head = "GET / HTTP/1.1\r\nHost: guarded.test\r\nConnection: close\r\n" + _basic("alice", "x") + "\r\n\r\n"
        limited = raw_request(port, head.encode())  # says when to come back (RFC 6585), within the minute
        retry_after = re.search(rb"\r\nRetry-After: (\d+)\r\n", limited)
        stack.loop.call_soon_threadsafe(server.guards.failures._sources.clear)  # the minute is over
        after = _status(port, _basic("alice", "right-password"))
    finally:
        stack.close()
    assert wrong == [b"401"] * 10 + [b"429"] * 2
    assert (without, right, still) == (b"401", b"429", b"429")
    assert after == b"200"
    assert limited.startswith(b"HTTP/1.1 429 ") and retry_after and 1 <= int(retry_after[1]) <= 60, limited
