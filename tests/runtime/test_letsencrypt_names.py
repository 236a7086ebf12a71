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


def test_a_server_name_that_is_not_ascii_is_refused_without_a_traceback(tmp_path, token_file) -> None:
    """SNI is ASCII (RFC 6066); CPython cannot decode other bytes for the SNI callback and printed "Exception
    ignored in: b'\\xc3\\xa9.test'" and a 5-line traceback to the log at every such handshake: anyone could
    fill the server's log. Now refused with the alert alone, and the site is served as before."""
    import subprocess

    from helpers.http import need
    from helpers.process import spawn, stop_all, wait_port
    from helpers.tunnel import make_tls
    from inlets_py.runtime.acme.store import CertStore

    openssl = need("openssl")
    site = make_tls(tmp_path / "site", [A_LABEL])
    issuer = f"https://127.0.0.1:{free_port()}/dir"  # never asked: the stored certificate is valid
    CertStore(tmp_path / "le", issuer).save(A_LABEL, site.cert.read_bytes(), site.key.read_bytes())
    https_port = free_port()
    server = spawn("http", "server", "--token-file", str(token_file), "--plaintext", "--control-addr", "127.0.0.1",
                   "--control-port", str(free_port()), "--data-addr", "127.0.0.1", "--port", str(free_port()),
                   "--https-port", str(https_port), "--letsencrypt-domain", A_LABEL, "--letsencrypt-issuer", issuer,
                   "--letsencrypt-path", str(tmp_path / "le"), log=tmp_path / "server.log")

    def handshake(name: str) -> str:
        return subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{https_port}", "-servername", name],
                              input="", capture_output=True, text=True, timeout=20).stdout

    try:
        wait_port(https_port)
        for _ in range(3):
            handshake("bücher.example.test")  # UTF-8 bytes on the wire, as a careless client or a scanner sends
        assert f"subject=CN = {A_LABEL}" in handshake(A_LABEL)
    finally:
        codes = stop_all(server)
    log = (tmp_path / "server.log").read_text()
    assert codes == [0] and "Traceback" not in log and "Exception ignored" not in log, log
