"""A user's machine and a cloud VM, side by side: what each boot test starts.

A World is one user-side network namespace (where ``inletsctl``, the printed client and
the services it forwards to run, exactly as printed) and one VM (a booted container). The
fake DigitalOcean API listens on the user's side and boots each droplet's user-data in
the World's VM, so ``inletsctl create --provider digitalocean`` runs its real path: the
API, the boot, the wait for /healthz over pinned TLS, the summary. A fake GCE API does the
same for ``--provider gce``, the cloud whose user-data carries the server wheel itself.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from helpers.prov_cloud_recorded import Answer, RecordedAPI, Seen, gce_service_account_key
from helpers.prov_fake_do import FakeDigitalOcean
from helpers.prov_support import INLETSCTL, HelloUpstream, Result, user_env
from helpers.tunnel import make_tls
from vm import USER_ADDR, VM_ADDR, Container, Network

DO_TOKEN = "dop_v1_" + "b" * 64
GCE_PROJECT = "inlets-boot"
PEBBLE_PORT = 14000  # pebble's API; +1 management, +2 tls-alpn (unused), +3 its dnsmasq: in the user's namespace


class World:
    def __init__(self, root: Path, tag: str, workdir: Path, public_keys: tuple[str, ...] = ()) -> None:
        self.root, self.tag, self.workdir, self.public_keys = root, tag, workdir, public_keys
        workdir.mkdir(parents=True, exist_ok=True)
        self.net = Network(tag).up()
        self.vm: Container | None = None
        self.api: FakeDigitalOcean | None = None
        self.gce_api: FakeGCE | None = None
        self.state = workdir / "state"
        self._closers: list[object] = []

    # -- the VM ---------------------------------------------------------------------------
    def boot_vm(self, user_data: str) -> Container:
        assert self.vm is None, "one VM per world"
        self.vm = Container(self.root, self.net, self.tag, user_data, self.workdir / "vm", self.public_keys)
        return self.vm.start()

    # -- the fake cloud, as a Booter -------------------------------------------------------
    def cloud(self) -> FakeDigitalOcean:
        if self.api is None:
            (self.workdir / "do-token").write_text(DO_TOKEN + "\n")
            self.api = self.net.on_user_side(lambda: FakeDigitalOcean(DO_TOKEN, self.workdir / "cloud", booter=self))
            self.api.__enter__()
        return self.api

    def gce(self) -> "FakeGCE":
        """A fake GCE API on the user's side, and the service-account key ``--access-token-file`` takes."""
        if self.gce_api is None:
            self.gce_api = self.net.on_user_side(lambda: FakeGCE(self))
            (self.workdir / "gce-key.json").write_text(gce_service_account_key(GCE_PROJECT))
        return self.gce_api

    def boot(self, droplet_id: int, user_data: str) -> str:
        self.boot_vm(user_data)
        return VM_ADDR

    def stop(self, droplet_id: int) -> None:
        if self.vm is not None:
            self.vm.stop()

    # -- the user's side --------------------------------------------------------------------
    def inletsctl(self, *args: str, timeout: float = 600) -> Result:
        """``inletsctl ARGS`` on the user's side (with the fake API and this world's state folder for create/delete)."""
        argv = [str(INLETSCTL), *args]
        if args and args[0] in ("create", "delete", "list", "status"):
            argv += ["--state-dir", str(self.state)]
            if self.api is not None and "--provider" in args and "digitalocean" in args:
                argv += ["--api-url", self.api.url, "--access-token-file", str(self.workdir / "do-token")]
            if self.gce_api is not None and "--provider" in args and "gce" in args:
                argv += ["--api-url", self.gce_api.url, "--access-token-file", str(self.workdir / "gce-key.json")]
        done = subprocess.run(self.net.user_argv(*argv), capture_output=True, text=True, timeout=timeout,
                              env=user_env(), stdin=subprocess.DEVNULL)
        return Result(done.returncode, done.stdout, done.stderr)

    def run_printed(self, command: str, log_name: str) -> subprocess.Popen[bytes]:
        """The printed client command, verbatim through a shell, on the user's side."""
        with open(self.workdir / log_name, "wb") as log:
            proc = subprocess.Popen(self.net.user_argv("/bin/sh", "-c", f"exec {command}"), env=user_env(),
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self._closers.append(proc)
        return proc

    def echo_server(self, port: int) -> None:
        """A TCP echo service on the user's 127.0.0.1:``port``: what the client forwards to."""

        class Echo(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(data)

        server = self.net.on_user_side(lambda: socketserver.ThreadingTCPServer(("127.0.0.1", port), Echo))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._closers.append(server)

    def http_upstream(self, port: int) -> None:
        server = self.net.on_user_side(lambda: http.server.ThreadingHTTPServer(("127.0.0.1", port), HelloUpstream))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._closers.append(server)

    def pebble(self) -> tuple[str, Path]:
        """Pebble (Let's Encrypt's test CA) on the user's side, with a dnsmasq resolving ``*.example.test`` to the
        VM, where it validates HTTP-01 on port 80 over the veth: (its directory URL, the CA of its own HTTPS)."""
        pebble_dir = self.workdir / "pebble"
        tls = make_tls(pebble_dir / "tls", [USER_ADDR])
        config = {"listenAddress": f"{USER_ADDR}:{PEBBLE_PORT}", "managementListenAddress": f"{USER_ADDR}:{PEBBLE_PORT + 1}",
                  "certificate": str(tls.cert), "privateKey": str(tls.key), "httpPort": 80, "tlsPort": PEBBLE_PORT + 2,
                  "ocspResponderURL": "", "externalAccountBindingRequired": False}
        (pebble_dir / "pebble.json").write_text(json.dumps({"pebble": config}))
        dns = ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               f"--port={PEBBLE_PORT + 3}", "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root",
               f"--pid-file={pebble_dir / 'dnsmasq.pid'}", f"--address=/example.test/{VM_ADDR}", "--log-facility=-"]
        serve = ["pebble", "-config", str(pebble_dir / "pebble.json"), "-dnsserver", f"127.0.0.1:{PEBBLE_PORT + 3}"]
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        for argv, log in ((dns, "dnsmasq.log"), (serve, "pebble.log")):
            with open(self.workdir / log, "wb") as out:
                self._closers.append(subprocess.Popen(self.net.user_argv(*argv), stdout=out, stderr=out, env=env,
                                                      cwd=pebble_dir, stdin=subprocess.DEVNULL))
        for _ in iterate_until(15, 0.1):
            try:
                self.net.on_user_side(lambda: socket.create_connection((USER_ADDR, PEBBLE_PORT), timeout=1)).close()
                return f"https://{USER_ADDR}:{PEBBLE_PORT}/dir", tls.ca
            except OSError:
                pass
        raise AssertionError(f"pebble never listened{self.logs()}")

    def pebble_root(self) -> bytes:
        """The root pebble issues from (new on every start): what a browser trusting it would verify with."""
        context = ssl.create_default_context(cafile=str(self.workdir / "pebble/tls/ca.crt"))
        url = f"https://{USER_ADDR}:{PEBBLE_PORT + 1}/roots/0"
        return self.net.on_user_side(lambda: urllib.request.urlopen(url, context=context, timeout=5).read())

    def echo_through(self, port: int, size: int = 4 * 1024 * 1024, timeout: float = 60) -> None:
        """Random bytes to the VM's data ``port`` come back byte-exact (through the tunnel and the echo)."""
        payload = os.urandom(size)
        deadline = time.monotonic() + timeout
        while True:
            try:
                received = self.net.on_user_side(lambda: _echo(VM_ADDR, port, payload))
            except OSError as exc:
                received, error = b"", exc
            else:
                error = None
            if received == payload:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(payload)} bytes to {VM_ADDR}:{port} came back as {len(received)} "
                                     f"(sha256 {hashlib.sha256(received).hexdigest()[:12]}): {error}{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        out = ""
        for log in sorted(self.workdir.glob("*.log")):
            out += f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return out + (self.vm.tail() + self._inside() if self.vm else "")

    def _inside(self) -> str:
        """What only the VM's own logs say: runcmd's output (the wheel receiver's, pip's) and the units' journal. The
        console stops at cloud-init's summary, so a receiver that never listened (a CI run, once) left no trace."""
        assert self.vm is not None
        try:
            done = self.vm.sh("cloud-init status --long; tail -n 25 /var/log/cloud-init-output.log; "
                              "ls -l /var/lib/cloud/seed/nocloud; "
                              "grep -E 'DataSource|NoCloud|seed|WARNING|ERROR|Traceback' /var/log/cloud-init.log | tail -n 40; "
                              "journalctl --no-pager -n 25 -u 'inlets*'", timeout=30, check=False)
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:  # the VM is gone: the console must do
            return f"\n--- inside the VM: not reachable ({exc})"
        return f"\n--- inside the VM:\n{done.stdout[-12000:]}{done.stderr[-1000:]}"

    def close(self) -> None:
        for item in reversed(self._closers):
            if isinstance(item, subprocess.Popen):
                item.terminate()
                try:
                    item.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    item.kill()
            else:
                item.shutdown()  # type: ignore[attr-defined]
                item.server_close()  # type: ignore[attr-defined]
        if self.vm is not None:
            self.vm.stop()
        if self.api is not None:
            self.api.__exit__(None, None, None)
        if self.gce_api is not None:
            self.gce_api.close()
        self.net.down()


class FakeGCE(RecordedAPI):
    """The Compute API calls ``create --provider gce`` makes, answered as Google does (operations done at once):
    the instance's ``user-data`` metadata boots in the World's VM, whose address is its external IP."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.instances: dict[str, dict[str, object]] = {}
        self.user_data: dict[str, str] = {}
        base = f"/compute/v1/projects/{GCE_PROJECT}"
        self.route("POST", "/o/oauth2/token", Answer(200, {"access_token": "ya29.boot", "token_type": "Bearer",
                                                           "expires_in": 3600}))
        self.route("GET", f"{base}/aggregated/instances", lambda seen: Answer(200, {"items": {
            "zones/europe-west2-a": {"instances": list(self.instances.values())}}}))
        self.route("POST", f"{base}/global/firewalls", lambda seen: self._done(seen, "insert"))
        self.route("GET", f"{base}/global/firewalls/[^/]+", lambda seen: Answer(200, {
            "kind": "compute#firewall", "id": "4241", "name": seen.path.rsplit("/", 1)[1], "network": f"{base}/global/networks/default",
            "allowed": [], "sourceRanges": [], "targetTags": [], "selfLink": f"https://www.googleapis.com{seen.path}"}))
        self.route("GET", f"{base}/global/networks/default", Answer(200, {
            "kind": "compute#network", "id": "4240", "name": "default", "autoCreateSubnetworks": True,
            "selfLink": f"https://www.googleapis.com{base}/global/networks/default"}))
        self.route("GET", f"{base}/zones", Answer(200, {"kind": "compute#zoneList", "items": [{
            "kind": "compute#zone", "id": "2290", "name": "europe-west2-a", "status": "UP",
            "selfLink": f"https://www.googleapis.com{base}/zones/europe-west2-a"}]}))
        self.route("POST", f"{base}/zones/[^/]+/instances", self._insert)
        self.route("GET", f"{base}/zones/[^/]+/instances/[^/]+", self._get)
        self.route("GET", f"{base}/global/operations/[^/]+", lambda seen: self._done(seen, "insert"))

    def _done(self, seen: Seen, kind: str) -> Answer:
        link = f"https://www.googleapis.com/compute/v1/projects/{GCE_PROJECT}/global/operations/operation-{kind}"
        return Answer(200, {"kind": "compute#operation", "name": f"operation-{kind}", "operationType": kind,
                            "status": "DONE", "progress": 100, "selfLink": link})

    def _insert(self, seen: Seen) -> Answer:
        body = seen.json
        zone = seen.path.split("/zones/")[1].split("/")[0]
        self.user_data[body["name"]] = next(i["value"] for i in body["metadata"]["items"] if i["key"] == "user-data")
        self.world.boot_vm(self.user_data[body["name"]])
        self.instances[body["name"]] = {
            "kind": "compute#instance", "name": body["name"], "id": "4242", "status": "RUNNING",
            "zone": f"https://www.googleapis.com/compute/v1/projects/{GCE_PROJECT}/zones/{zone}",
            "machineType": body["machineType"], "labels": body.get("labels", {}), "tags": {**body.get("tags", {}), "fingerprint": "42WmSpB8rSM="},
            "creationTimestamp": "2030-01-01T00:00:00.000-00:00", "metadata": body["metadata"], "disks": [],
            "networkInterfaces": [{"network": body["networkInterfaces"][0]["network"], "networkIP": "10.154.0.2",
                                   "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "natIP": VM_ADDR}]}],
            "selfLink": f"https://www.googleapis.com{seen.path}/{body['name']}",
        }
        return self._done(seen, "insert")

    def _get(self, seen: Seen) -> Answer:
        name = seen.path.rsplit("/", 1)[1]
        if name not in self.instances:
            return Answer(404, {"error": {"code": 404, "message": f"The resource '{name}' was not found"}})
        return Answer(200, self.instances[name])


def _echo(host: str, port: int, payload: bytes) -> bytes:
    """Send while receiving (a window-limited tunnel would stall a send-everything-first echo)."""
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks: list[bytes] = []
        while data := sock.recv(1 << 20):
            chunks.append(data)
        sender.join(timeout=20)
    return b"".join(chunks)


def iterate_until(timeout: float, interval: float = 1.0) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        yield
        time.sleep(interval)
