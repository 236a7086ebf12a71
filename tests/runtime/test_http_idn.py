"""An internationalised site name: browsers send its A-label in Host, and the client serves it by that name."""

from __future__ import annotations

from helpers.http import LOOPBACK, Stack, raw_request


def test_an_idn_upstream_name_serves_the_host_browsers_send(tls, token) -> None:
    """``--upstream bücher.de=URL`` was refused as "invalid host name", though the server takes the same name
    in --letsencrypt-domain and --auto-tls-san; the site could only be served by typing its xn-- form."""
    stack = Stack()
    try:
        app, up = stack.upstream("IDN")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"BÜCHER.de.=http://{LOOPBACK}:{up}"])
        served = server.registry.services()
        answer = raw_request(server.data_port, b"GET /idn HTTP/1.1\r\nHost: xn--bcher-kva.de\r\nConnection: close\r\n\r\n")
    finally:
        stack.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert served == ["http:xn--bcher-kva.de"]
