"""Which names --letsencrypt-domain takes, proven by a real ACME server (pebble) issuing for them and a
real TLS client verifying the served certificate by SNI."""

from __future__ import annotations

from helpers.http import Stack
from helpers.letsencrypt import dnsmasq, pebble, served_certificate, wait_until
from helpers.process import inlets
from helpers.tunnel import free_port
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import configure
from test_letsencrypt import start_server

IDN = "bücher.example.test"
A_LABEL = "xn--bcher-kva.example.test"


def test_an_internationalized_domain_is_answered_with_its_a_label_which_is_issued_for(tmp_path, tls, token) -> None:
    """It said only "'bücher.example.test' is not a DNS name" (inletsctl's --domain names the xn-- form)."""
    result = inlets("http", "server", "--plaintext", "--token", "t" * 32, "--letsencrypt-domain", IDN)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].endswith(f"give it in its ASCII (xn--) form, --letsencrypt-domain {A_LABEL}"), lines[0]
    http_port, https_port = free_port(), free_port()
    with dnsmasq(tmp_path) as dns, pebble(tmp_path / "pebble", http_port, dns) as ca:
        stack = Stack()
        try:  # the name suggested works: pebble issues for it, and a browser-like client asking for the IDN gets it
            manager = configure([A_LABEL], tmp_path / "le", issuer=ca.directory, ca_bundle=ca.api_ca, retry=1.0)
            start_server(stack, tls, token, HttpsFront(manager, https_port), http_port)
            wait_until(lambda: manager.issued == 1, 20, "the certificate")
            served = served_certificate(https_port, IDN, ca.client_context(tmp_path))  # Python's ssl sends the A-label
            assert [value for kind, value in served["cert"]["subjectAltName"] if kind == "DNS"] == [A_LABEL]
        finally:
            stack.close()
