"""Every request the DigitalOcean provider makes is one DigitalOcean's own OpenAPI spec accepts.

Stoplight Prism serves the spec (found through $INLETS_API_SPECS, by default
../shared/api-specs beside the checkout, as CI has it) as a validating mock; a
recording proxy between libcloud and Prism keeps each request with Prism's verdict
(its ``sl-violations`` header), so a request that breaks the spec fails the test.
"""

from __future__ import annotations

import datetime
import http.client
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from helpers.api_specs import SPEC_FILE, SPECS_DEFAULT, SPECS_ENV, find_spec
from helpers.prov_support import free_port
from inlets_py.provisioner.errors import ProvisionError
from inlets_py.provisioner.providers.base import Plan
from inlets_py.provisioner.providers.digitalocean import DigitalOceanProvider
from inlets_py.provisioner.material import generate
from inlets_py.provisioner.render import UserDataOptions, user_data
from inlets_py.provisioner.spec import build_spec

ROOT = Path(__file__).resolve().parents[2]
PRISM = ROOT / "tools" / "node_modules" / ".bin" / "prism"


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    spec, missing = find_spec()
    if spec is None:
        pytest.skip(missing)
    if not PRISM.exists() or shutil.which("node") is None:
        pytest.skip(f"Prism not installed at {PRISM} (scripts/install-test-tools.sh installs it with npm)")
    port = free_port()
    log = open(tmp_path_factory.mktemp("prism") / "prism.log", "wb")
    proc = subprocess.Popen([str(PRISM), "mock", "-h", "127.0.0.1", "-p", str(port), str(spec)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prism exited with {proc.returncode}; see {log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/account", headers={"Authorization": "Bearer x"})
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("prism did not start within 90 s")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Recorder:
    """A loopback reverse proxy that records (method, path, status, Prism's violations)."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[tuple[str, str, int, list[dict]]] = []
        host, port = upstream.split(":")
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                violations = json.loads(response.getheader("sl-violations") or "[]")
                recorder.seen.append((self.command, self.path, response.status, violations))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def recorder(prism: str) -> Iterator[Recorder]:
    rec = Recorder(prism)
    yield rec
    rec.close()


def _plan(tmp_path: Path, **kwargs: object) -> Plan:
    spec = build_spec("tcp", "80,443,22", [])
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    text = user_data(spec, generate("prism-check"), UserDataOptions("prism-check", "inlets-py==0.1.0", None, expires))
    return Plan("prism-check", spec, text, tmp_path, expires_at=expires, **kwargs)  # type: ignore[arg-type]


def test_every_lifecycle_request_matches_the_spec(recorder: Recorder, tmp_path: Path) -> None:
    provider = DigitalOceanProvider("dop_v1_" + "0" * 64, recorder.url)
    host = provider.create(_plan(tmp_path, region="nyc3", size="s-1vcpu-1gb", ssh_key="3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"))
    assert host.id.isdigit()
    current = provider.status(host.id)
    assert current.ip and current.status  # Prism answers with the spec's example droplet
    listed = provider.list()
    assert listed and all(h.id for h in listed)
    provider.delete(host.id)
    methods = [(m, p.split("?")[0]) for m, p, _, _ in recorder.seen]
    assert ("POST", "/v2/droplets") in methods and ("DELETE", f"/v2/droplets/{host.id}") in methods
    assert any("tag_name=inlets" in p for _, p, _, _ in recorder.seen)
    for method, path, status, violations in recorder.seen:
        assert not violations, f"{method} {path} breaks DigitalOcean's spec: {violations}"
        assert 200 <= status < 300, (method, path, status)


def test_every_load_balancer_request_matches_the_spec(recorder: Recorder, tmp_path: Path) -> None:
    """``create --replicas``: the balancer's create, read, list and delete are ones DigitalOcean accepts."""
    provider = DigitalOceanProvider("dop_v1_" + "0" * 64, recorder.url)
    balancer = provider.create_balancer("prism-ha", build_spec("tcp", "80,443", [], lb_proxy_protocol="v1"),
                                        ["3164444", "3164445"], "nyc3")
    assert balancer.id
    current = provider.balancer_status(balancer.id)
    assert current.ip and current.status  # Prism answers with the spec's example balancer
    assert provider.balancers()
    provider.delete_balancer(balancer.id)
    methods = [(m, p.split("?")[0]) for m, p, _, _ in recorder.seen]
    assert ("POST", "/v2/load_balancers") in methods and ("DELETE", f"/v2/load_balancers/{balancer.id}") in methods
    for method, path, status, violations in recorder.seen:
        assert not violations, f"{method} {path} breaks DigitalOcean's spec: {violations}"
        assert 200 <= status < 300, (method, path, status)


def test_the_check_can_fail_a_request_off_the_spec(recorder: Recorder) -> None:
    """A control: a droplet create without size and image is refused by the spec, and seen."""
    provider = DigitalOceanProvider("dop_v1_" + "0" * 64, recorder.url)
    with pytest.raises(ProvisionError):
        with provider._api("creating a bad droplet"):
            provider._driver.connection.request("/v2/droplets", data=json.dumps({"name": "x"}), method="POST")
    ((method, _, status, violations),) = recorder.seen
    assert method == "POST" and status == 422 and violations


def test_the_spec_location_is_a_setting_and_its_absence_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SPECS_ENV, str(tmp_path))
    spec, missing = find_spec()
    assert spec is None
    assert missing.startswith(f"DigitalOcean's OpenAPI spec is not at {tmp_path / SPEC_FILE}: set $INLETS_API_SPECS ")
    assert "(default ../shared/api-specs, beside the checkout)" in missing
    assert "https://github.com/digitalocean/openapi" in missing and "specification/" in missing
    (tmp_path / SPEC_FILE).parent.mkdir()
    (tmp_path / SPEC_FILE).write_text("openapi: 3.0.0\n")
    assert find_spec() == (tmp_path / SPEC_FILE, "")
    monkeypatch.delenv(SPECS_ENV)  # unset: the default, beside the checkout
    expected = ROOT / SPECS_DEFAULT / SPEC_FILE
    found, reason = find_spec()
    assert (found, reason) == (expected, "") if expected.exists() else (found is None and str(expected) in reason)
