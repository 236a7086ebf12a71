"""Whose error a 5xx was: the upstream's own answer, or one the proxy made (no client, an upstream it could not
reach, one that stayed silent). Both count in http_dataplane_requests_total by the code the user got; the proxy's
own count in http_dataplane_proxy_responses_total too, so an alert on the tunnel does not fire for the app's 502s."""

from __future__ import annotations

import socket
import time

from helpers.http import LOOPBACK, Stack, raw_request
from helpers.tunnel import free_port
from test_metrics import samples, scrape

TOTAL, OWN = "http_dataplane_requests_total", "http_dataplane_proxy_responses_total"


def _by(found: dict, name: str) -> dict[tuple[str, str], float]:
    """{(code, host): value} of one family, summed over methods."""
    out: dict[tuple[str, str], float] = {}
    for (sample, labels), value in found.items():
        if sample == name:
            key = (dict(labels)["code"], dict(labels)["host"])
            out[key] = out.get(key, 0) + value
    return out


def test_the_proxys_own_errors_are_told_apart_from_the_upstreams(tls, token):
    stack = Stack()
    try:
        _, up = stack.upstream("E")
        server = stack.server(tls, token, upstream_timeout=0.5)
        stack.client(server, tls, token, [f"app.test=http://{LOOPBACK}:{up}",
                                          f"dead.test=http://{LOOPBACK}:{free_port()}"])  # nothing listens there
        port = server.data_port

        def get(host: str, path: str) -> bytes:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            return raw_request(port, request, timeout=10)[:12]

        for path, times in (("/status/502", 3), ("/status/504", 2), ("/status/503", 1), ("/", 4)):
            for _ in range(times):
                assert get("app.test", path) == f"HTTP/1.1 {path[8:] or 200}".encode()
        assert get("app.test", "/slow?s=3") == b"HTTP/1.1 504"  # the proxy's: silent past --upstream-timeout
        for _ in range(2):
            assert get("dead.test", "/") == b"HTTP/1.1 502"  # the proxy's: the client cannot reach the upstream
        assert get("nobody.test", "/") == b"HTTP/1.1 503"  # the proxy's: no client serves it

        found = samples(scrape(server.control.addresses[0], tls, token)[1])
        assert _by(found, TOTAL) == {("502", "app.test"): 3, ("504", "app.test"): 3, ("503", "app.test"): 1,
                                     ("200", "app.test"): 4, ("502", "dead.test"): 2, ("503", "_other"): 1}
        assert _by(found, OWN) == {("504", "app.test"): 1, ("502", "dead.test"): 2, ("503", "_other"): 1}
    finally:
        stack.close()


def test_a_user_who_left_before_a_silent_upstream_timed_out_counts_499_not_a_tunnel_504(tls, token):
    """Found by a review helper: a user who closed its connection (curl --max-time) before an upstream slower than
    --upstream-timeout answered was counted a 504 of the proxy's own, as if the tunnel had failed a user still there."""
    stack = Stack()
    try:
        _, up = stack.upstream("E")
        server = stack.server(tls, token, upstream_timeout=2.0)  # past the 1 s a half-closed user is given (FIN_GRACE)
        stack.client(server, tls, token, [f"app.test=http://{LOOPBACK}:{up}"])
        control = server.control.addresses[0]
        for _ in range(2):
            with socket.create_connection((LOOPBACK, server.data_port), timeout=10) as user:
                user.sendall(b"GET /slow?s=5 HTTP/1.1\r\nHost: app.test\r\n\r\n")  # an upstream that ignores a FIN
        found: dict = {}
        for _ in range(100):  # bounded: 100 x 0.1 s; the exchange ends at the upstream timeout
            found = samples(scrape(control, tls, token)[1])
            if sum(_by(found, TOTAL).values()) >= 2:
                break
            time.sleep(0.1)
        assert _by(found, TOTAL) == {("499", "app.test"): 2}
        assert _by(found, OWN) == {}
    finally:
        stack.close()
