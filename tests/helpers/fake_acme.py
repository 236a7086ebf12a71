"""ACME servers on loopback for answers pebble never gives: a refusal with Retry-After, an order that stays
"processing". Real HTTPS, real JWS requests from the server's ACME child process.

``AcmeHandler`` answers what every such server does (the directory, nonces, the account); a test's subclass
answers the rest in ``on_get``/``on_post``, and ``serve`` runs it.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from inlets_py.runtime.core.tls import server_context


class AcmeHandler(BaseHTTPRequestHandler):
    seen: list[str]  # every request ("GET /directory", "POST /order/1", ...): set by ``serve``

    def log_message(self, *_args) -> None:
        pass

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.server_port}"

    def _answer(self, status: int, body: dict | str | None, headers: dict[str, str] | None = None) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body or "").encode()
        self.send_response(status)  # with a Date header, as every HTTP server sends
        self.send_header("Replay-Nonce", base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode())
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/problem+json" if status >= 400 and isinstance(body, dict)
                         else "application/json" if isinstance(body, dict) else "text/plain")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def directory(self) -> None:
        self._answer(200, {"newNonce": f"{self.base}/nonce", "newAccount": f"{self.base}/account",
                           "newOrder": f"{self.base}/order"})

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        self.on_get()

    def do_HEAD(self) -> None:
        self.seen.append(f"HEAD {self.path}")
        self._answer(200, None)

    def do_POST(self) -> None:
        self.seen.append(f"POST {self.path}")
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/account":
            return self._answer(201, {"status": "valid"}, {"Location": f"{self.base}/account/1"})
        self.on_post()

    def on_get(self) -> None:
        self.directory()

    def on_post(self) -> None:
        raise NotImplementedError


@contextmanager
def serve(handler: type[AcmeHandler], tls) -> Iterator[tuple[str, list[str]]]:
    """``handler`` over HTTPS with ``tls``: yields its directory URL and the requests it saw."""
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type(handler.__name__, (handler,), {"seen": seen}))
    server.socket = server_context(tls.cert, tls.key).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/directory", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def stuck_acme(tls, domain: str, finalize_status: str = "processing") -> Iterator[tuple[str, list[str]]]:
    """The account is taken, the authorization already valid (as Let's Encrypt reuses one validated within 30
    days), and the finalization answers ``finalize_status`` on every poll."""

    class Stuck(AcmeHandler):
        def _order(self, status: str) -> dict:
            return {"status": status, "identifiers": [{"type": "dns", "value": domain}],
                    "authorizations": [f"{self.base}/authz/1"], "finalize": f"{self.base}/finalize/1"}

        def on_post(self) -> None:
            if self.path == "/order":
                return self._answer(201, self._order("ready"), {"Location": f"{self.base}/order/1"})
            if self.path == "/authz/1":
                return self._answer(200, {"status": "valid", "identifier": {"type": "dns", "value": domain},
                                          "challenges": [{"type": "http-01", "url": f"{self.base}/chall/1",
                                                          "token": "x" * 43, "status": "valid"}]})
            self._answer(200, self._order(finalize_status))  # /finalize/1 and every poll of /order/1

    with serve(Stuck, tls) as found:
        yield found
