"""Whose error a 5xx was: the upstream's own answer, or one the proxy made (no client, an upstream it could not
reach, one that stayed silent). Both count in http_dataplane_requests_total by the code the user got; the proxy's
own count in http_dataplane_proxy_responses_total too, so an alert on the tunnel does not fire for the app's 502s."""

from __future__ import annotations

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
