"""An ACME server on loopback for answers pebble never gives: an order that stays "processing".

Real HTTPS, real JWS requests from the server's ACME child process; the account is taken, the
authorization is already valid (as Let's Encrypt reuses one validated within 30 days), and the
finalization answers with ``finalize_status`` on every poll.
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


@contextmanager
def stuck_acme(tls, domain: str, finalize_status: str = "processing") -> Iterator[tuple[str, list[str]]]:
    """Yields the directory URL and the requests seen ("POST /order/1", ...)."""
    seen: list[str] = []

    class Acme(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

        def _answer(self, status: int, body: dict | None, location: str | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Replay-Nonce", base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode())
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/json")
            if location:
                self.send_header("Location", location)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _order(self, status: str) -> dict:
            base = f"https://127.0.0.1:{self.server.server_port}"
            return {"status": status, "identifiers": [{"type": "dns", "value": domain}],
                    "authorizations": [f"{base}/authz/1"], "finalize": f"{base}/finalize/1"}

        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            base = f"https://127.0.0.1:{self.server.server_port}"
            self._answer(200, {"newNonce": f"{base}/nonce", "newAccount": f"{base}/account",
                               "newOrder": f"{base}/order"})

        def do_HEAD(self) -> None:
            seen.append(f"HEAD {self.path}")
            self._answer(200, None)

        def do_POST(self) -> None:
            seen.append(f"POST {self.path}")
            self.rfile.read(int(self.headers["Content-Length"]))
            base = f"https://127.0.0.1:{self.server.server_port}"
            if self.path == "/account":
                return self._answer(201, {"status": "valid"}, f"{base}/account/1")
            if self.path == "/order":
                return self._answer(201, self._order("ready"), f"{base}/order/1")
            if self.path == "/authz/1":
                return self._answer(200, {"status": "valid", "identifier": {"type": "dns", "value": domain},
                                          "challenges": [{"type": "http-01", "url": f"{base}/chall/1",
                                                          "token": "x" * 43, "status": "valid"}]})
            self._answer(200, self._order(finalize_status))  # /finalize/1 and every poll of /order/1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Acme)
    server.socket = server_context(tls.cert, tls.key).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/directory", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
