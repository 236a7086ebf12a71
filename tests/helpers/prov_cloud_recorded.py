"""A loopback HTTP server that answers cloud API requests with recorded real responses.

Routes map (method, path regex) to answers read from recorded files: libcloud's own
test fixtures (recorded from the real APIs, shipped in the installed libcloud package)
or files under tests/provisioner/recorded/ (copied, with their source, from the
providers' own SDK test suites). Every request is kept with its parsed body so the
tests assert what the provisioner sent. An unrouted request answers 599 and is kept,
so a test fails on any request it did not expect.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import libcloud

LIBCLOUD_FIXTURES = Path(libcloud.__file__).parent / "test" / "compute" / "fixtures"
RECORDED = Path(__file__).resolve().parents[1] / "provisioner" / "recorded"

Body = bytes | str | dict | list | None


def libcloud_fixture(driver: str, name: str) -> bytes:
    """A response body libcloud's test suite recorded for ``driver``."""
    path = LIBCLOUD_FIXTURES / driver / name
    if not path.exists():
        raise FileNotFoundError(f"libcloud fixture missing: {path} (libcloud too old or tests stripped?)")
    return path.read_bytes()


def recorded(provider: str, name: str) -> bytes:
    return (RECORDED / provider / name).read_bytes()


@dataclass
class Answer:
    status: int
    body: Body = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None


Responder = Answer | list[Answer] | Callable[[Seen], Answer]


class _QuietServer(ThreadingHTTPServer):
    """A caller that left before its answer (its timeout, by design in the timeout tests) is not an error: the
    default printed a traceback to sys.stderr, which a later test's in-process CLI run captured as its own."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RecordedAPI:
    """Serve recorded answers on 127.0.0.1; ``routes`` are tried in order."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Responder]] = []
        self.seen: list[Seen] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urllib.parse.urlsplit(self.path)
                seen = Seen(self.command, url.path, urllib.parse.parse_qs(url.query), dict(self.headers), raw)
                api.seen.append(seen)
                answer = api._answer(seen)
                body = answer.body
                if isinstance(body, (dict, list)):
                    body = json.dumps(body)
                data = body.encode() if isinstance(body, str) else (body or b"")
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json"} | answer.headers
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def route(self, method: str, path: str, responder: Responder) -> None:
        """Answer ``method`` requests whose path fully matches ``path``; a list is played in order (last repeats)."""
        self.routes.append((method, re.compile(path), responder))

    def _answer(self, seen: Seen) -> Answer:
        for method, pattern, responder in self.routes:
            if method == seen.method and pattern.fullmatch(seen.path):
                if isinstance(responder, list):
                    return responder.pop(0) if len(responder) > 1 else responder[0]
                if isinstance(responder, Answer):
                    return responder
                return responder(seen)
        return Answer(599, {"error": f"no recorded answer for {seen.method} {seen.path}"})

    def requests(self, method: str, path: str = ".*") -> list[Seen]:
        pattern = re.compile(path)
        return [s for s in self.seen if s.method == method and pattern.fullmatch(s.path)]

    def unrouted(self) -> list[str]:
        return [f"{s.method} {s.path}" for s in self.seen if not any(
            m == s.method and p.fullmatch(s.path) for m, p, _ in self.routes)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def make_plan(tmp_path: Path, mode: str = "tcp", ports: str | None = "22,80,443", **kwargs: Any) -> "Plan":
    """A real plan: real spec, real secrets, the real rendered user-data."""
    import datetime

    from inlets_py.provisioner.material import generate
    from inlets_py.provisioner.providers.base import Plan
    from inlets_py.provisioner.render import UserDataOptions, user_data
    from inlets_py.provisioner.spec import build_spec

    spec = build_spec(mode, ports if mode == "tcp" else None, ["example.com"] if mode == "http" else [])
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    text = user_data(spec, generate("rec-check"), UserDataOptions("rec-check", "inlets-py==0.1.0", None, expires))
    return Plan("rec-check", spec, text, tmp_path, expires_at=expires, **kwargs)


def write_state(root: Path, name: str, provider: str, host_id: str | None) -> None:
    """The local state ``create`` leaves for a cloud exit server once the provider answered with ``host_id``
    (None: create never got as far as an id), written by the provisioner's own ServerState (0700, 0600)."""
    from inlets_py.provisioner.state import ServerState

    state = ServerState(root, name)
    state.reserve()
    state.save({"name": name, "provider": provider, "mode": "tcp", "ports": [80, 443], "domains": [], "http_port": None,
                "control_port": 8123, "created_at": "2030-01-01T00:00:00Z", "letsencrypt": False, "expires_at": None,
                "region": None, "size": None, "id": host_id, "ip": None})


if False:  # for type checkers only
    from inlets_py.provisioner.providers.base import Plan


def cassette(provider: str, name: str) -> list[tuple[str, str, Answer]]:
    """(method, path, answer) for every interaction of a VCR cassette under recorded/PROVIDER/."""
    import yaml

    doc = yaml.safe_load((RECORDED / provider / name).read_text())
    out = []
    for item in doc["interactions"]:
        request, response = item["request"], item["response"]
        path = urllib.parse.urlsplit(request["uri"]).path
        body = (response.get("body") or {}).get("string") or ""
        headers = {k: v[0] for k, v in (response.get("headers") or {}).items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")}
        out.append((request["method"], path, Answer(int(response["status"]["code"]), body, headers)))
    return out


def gce_service_account_key(project: str) -> str:
    """A GCE service-account key of its own: libcloud signs its token request with it for real."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return json.dumps({"type": "service_account", "project_id": project, "private_key": pem.decode(),
                       "client_email": f"inlets@{project}.iam.gserviceaccount.com"})
