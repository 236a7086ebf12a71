"""How `GET /metrics` is sent: the format the scraper's Accept asks for, gzipped when it takes gzip."""

from __future__ import annotations

import gzip
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from helpers.http import LOOPBACK, Stack, raw_request

#: What Prometheus (2.42 to 3.x) sends at every scrape, unless its scrape_protocols say otherwise.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def fetch(control: tuple, tls, token: str, method: str = "GET", **headers: str) -> tuple[dict[str, str], bytes]:
    """The answer's headers and its body as sent (urllib does not undo a Content-Encoding)."""
    request = urllib.request.Request(f"https://{control[0]}:{control[1]}/metrics", method=method,
                                     headers={"Authorization": f"Bearer {token}", **headers})
    context = ssl.create_default_context(cafile=str(tls.ca))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return dict(response.headers), response.read()


def requests_counted(families) -> dict[tuple, float]:
    """{(code, host, method): count} of the data plane's request counter."""
    return {(s.labels["code"], s.labels["host"], s.labels["method"]): s.value
            for family in families if family.name == "http_dataplane_requests" for s in family.samples
            if s.name == "http_dataplane_requests_total"}


def test_a_scrape_gets_the_format_its_accept_asks_for_and_gzip_when_it_takes_it(tls, token):
    """The Accept header was not read: Prometheus, asking OpenMetrics first, got the text format (no ``# EOF``
    to show a scrape cut short), and every scrape went uncompressed (21.5 MB for 10,500 HTTP series; 0.6 MB
    gzipped), though Prometheus always sends Accept-Encoding: gzip."""
    stack = Stack()
    try:
        _, up = stack.upstream("M")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"m.test=http://{LOOPBACK}:{up}"])
        for _ in range(2):
            assert raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: m.test\r\nConnection: close\r\n\r\n"
                               ).startswith(b"HTTP/1.1 200")
        control = server.control.addresses[0]

        headers, body = fetch(control, tls, token, Accept=PROMETHEUS_ACCEPT)
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0;"), headers
        assert body.endswith(b"# EOF\n")
        families = list(openmetrics_families(body.decode()))  # the strict parser: it refuses the text format
        assert requests_counted(families) == {("200", "m.test", "GET"): 2}
        histogram = next(f for f in families if f.name == "http_dataplane_request_duration_seconds")
        assert histogram.type == "histogram"
        kept = {f.name for f in families}  # the names kept for upstream inlets' dashboards
        assert {"http_controlplane_connected_gauge"} <= kept

        headers, body = fetch(control, tls, token)  # a plain scrape (curl): the text format, as before
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
        assert "Content-Encoding" not in headers
        assert requests_counted(text_families(body.decode())) == {("200", "m.test", "GET"): 2}

        headers, body = fetch(control, tls, token, **{"Accept-Encoding": "gzip", "Accept": PROMETHEUS_ACCEPT})
        assert headers.get("Content-Encoding") == "gzip", headers
        assert int(headers["Content-Length"]) == len(body)
        assert requests_counted(openmetrics_families(gzip.decompress(body).decode())) == {("200", "m.test", "GET"): 2}

        headers, body = fetch(control, tls, token, **{"Accept-Encoding": "gzip;q=0"})  # refused by its weight
        assert "Content-Encoding" not in headers and body.startswith(b"# HELP")

        headers, body = fetch(control, tls, token, method="HEAD", **{"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip" and body == b"", headers

        # an Accept the library cannot read (its version no number) gets the text format, not a 500
        headers, body = fetch(control, tls, token, Accept="application/openmetrics-text;version=x")
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
        assert requests_counted(text_families(body.decode())) == {("200", "m.test", "GET"): 2}
    finally:
        stack.close()


def test_a_scrape_without_the_right_token_is_told_the_scheme_and_nothing_else(tls, token):
    """The control port's 401 named no scheme (RFC 9110: a 401 must send WWW-Authenticate; the data plane's did)."""
    stack = Stack()
    try:
        control = stack.server(tls, token).control.addresses[0]
        for sent in (None, "wrong-token"):
            request = urllib.request.Request(f"https://{control[0]}:{control[1]}/metrics",
                                             headers={"Authorization": f"Bearer {sent}"} if sent else {})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(tls.ca)), timeout=10)
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="inlets"'
            assert refused.value.read() == b"unauthorized: missing or wrong bearer token\n"  # the same either way
    finally:
        stack.close()


def test_promtool_finds_nothing_but_the_names_kept_for_upstream_inlets(tls, token):
    """Prometheus' own linter on a real scrape of an HTTP tunnel that served requests finds only the ``_gauge`` name
    upstream inlets' dashboards read (kept on purpose). The OpenMetrics form is checked by the strict parser above."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing (Debian's prometheus; scripts/install-test-tools.sh installs it as root)")
    stack = Stack()
    try:
        _, up = stack.upstream("P")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"p.test=http://{LOOPBACK}:{up}"])
        assert raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n"
                           ).startswith(b"HTTP/1.1 200")
        control = server.control.addresses[0]
        _, body = fetch(control, tls, token)  # the text format: promtool 2.42 reads OpenMetrics as it (no HELP seen)
        assert b"http_dataplane_requests_total" in body
        checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert checked.stderr.decode().splitlines() == [
            "http_controlplane_connected_gauge metric name should not include type 'gauge'"], checked.stderr
    finally:
        stack.close()
