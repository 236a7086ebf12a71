"""Fuzzing the HTTP front: whatever bytes a user sends, the parser returns events or an
HttpError carrying a 4xx; nothing else escapes, and what it holds stays bounded."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers.http import LOOPBACK, Stack, answer_after_fin

from inlets_py.runtime.http.messages import HttpError, RequestHead
from inlets_py.runtime.http.parser import MAX_HEADER_BYTES
from inlets_py.runtime.http.request_reader import RequestReader

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"G\x00T", b""]
NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Expect", b"X-A", b"Ho st", b""]
VALUES = [b"example.test", b"5", b"-1", b"chunked", b"gzip, chunked", b"chunked, identity", b"keep-alive",
          b"100-continue", b"\r\n", b"a" * 300, b"18446744073709551616", b""]

heads = st.builds(
    lambda method, target, version, headers, body: method + b" " + target + b" HTTP/" + version + b"\r\n"
    + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body,
    st.sampled_from(METHODS),
    st.sampled_from([b"/", b"/a?b=c", b"*", b"http://x/", b"/\x7f", b"/" + b"p" * 9000]),
    st.sampled_from([b"1.1", b"1.0", b"2.0", b"9"]),
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8),
    st.binary(max_size=64),
)


def _check(chunks: list[bytes]) -> None:
    reader = RequestReader()
    try:
        for chunk in chunks:
            for event in reader.feed(chunk):
                if isinstance(event, RequestHead):
                    assert event.method and event.version in (b"1.0", b"1.1")
                    assert not (event.chunked and event.content_length is not None)  # never ambiguous
    except HttpError as exc:  # 501: a transfer coding other than chunked (RFC 9112 6.1); 505: another HTTP version
        assert (400 <= exc.status < 500 or exc.status in (501, 505)) and str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads, st.integers(1, 50))
def test_structured_requests_only_parse_or_refuse_with_a_4xx(request: bytes, cut: int) -> None:
    _check([request[i : i + cut] for i in range(0, len(request), cut)])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_bytes_only_parse_or_refuse_with_a_4xx(chunks: list[bytes]) -> None:
    _check(chunks)


def test_an_endless_header_section_is_refused_not_buffered() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")
    with pytest.raises(HttpError) as refused:
        for _ in range(MAX_HEADER_BYTES // 1000 + 10):
            reader.feed(b"X-Pad: " + b"p" * 990 + b"\r\n")
    assert refused.value.status == 431


@pytest.fixture(scope="module")
def stack():
    stack = Stack()
    yield stack
    stack.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=heads)
def test_the_live_server_answers_every_request_with_a_status_line(stack, tls, token, request: bytes) -> None:
    """Through a real server and tunnel: a status line (2xx-5xx) or a close, never a hang."""
    if not hasattr(test_the_live_server_answers_every_request_with_a_status_line, "server"):
        app, port = stack.upstream("app")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"http://{LOOPBACK}:{port}"])
        test_the_live_server_answers_every_request_with_a_status_line.server = server
    server = test_the_live_server_answers_every_request_with_a_status_line.server
    answer = answer_after_fin(server.data_port, request, 5)
    assert answer == b"" or answer.startswith((b"HTTP/1.1 1", b"HTTP/1.1 2", b"HTTP/1.1 3", b"HTTP/1.1 4",
                                               b"HTTP/1.1 5", b"HTTP/1.0 ")), answer[:100]
