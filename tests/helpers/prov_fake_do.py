"""A stateful fake of the DigitalOcean v2 droplet and load balancer API on loopback, for lifecycle tests.

Prism proves each request is one DigitalOcean accepts but keeps no state; this fake
keeps droplets, answers 401/404/422 the way DigitalOcean does, and, when asked,
"boots" a droplet by running the server command from its rendered user-data: the
ExecStart of the systemd unit, with the secret files it wrote, on a loopback
address of its own (its "public IP"). That checks the provisioner's lifecycle, not the
user-data: with a ``booter`` (tests/boot) a droplet boots the user-data for real instead,
in a container with cloud-init and systemd.

A load balancer, once active, really forwards: it listens on a loopback address of its own
for each forwarding rule and sends each connection, with a PROXY v1 header when
``enable_proxy_protocol`` is set, to the next droplet that accepts a connection on the
target port (its health check, done at connect time).
"""

from __future__ import annotations

import base64
import datetime
import gzip
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import yaml

from helpers.process import terminate
from inlets_py.provisioner.render import RECEIVER_SCRIPT

#: The access token the fake takes in the tests of tests/provisioner (its conftest writes the token file).
DO_TOKEN = "dop_v1_" + "e" * 64
VALID_REGIONS = {"lon1", "nyc3", "sfo3", "ams3", "fra1"}
VALID_SIZES = {"s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb"}
VALID_IMAGES = {"ubuntu-24-04-x64", "ubuntu-22-04-x64"}
UNIT_PATH = "/etc/systemd/system/inlets.service"
VM_INLETS = "/opt/inlets/venv/bin/inlets"
_ip_counter = itertools.count(2)


def _new_ip() -> str:
    """A loopback address of its own for a droplet or balancer: 127.X.Y.Z, X from the process id."""
    n = next(_ip_counter)
    return f"127.{(os.getpid() >> 8) % 200 + 20}.{n // 250}.{n % 250 + 2}"


def inlets_binary() -> str:
    script = Path(sys.executable).with_name("inlets")
    assert script.exists(), f"inlets console script missing beside {sys.executable}"
    return str(script)


class Booter(Protocol):
    def boot(self, droplet_id: int, user_data: str) -> str:
        """Start booting ``user_data``; the droplet's public IP."""
        ...

    def stop(self, droplet_id: int) -> None: ...


class FakeDigitalOcean:
    def __init__(self, token: str, workdir: Path, boot: bool = False, active: bool = True, gone_after_polls: int = 0,
                 booter: Booter | None = None):
        self.token = token
        self.workdir = workdir
        self.boot = boot  # run the user-data's server when the droplet becomes active
        self.booter = booter  # or boot the user-data itself
        self.active = active  # False: droplets stay "new" forever
        self.gone_after_polls = gone_after_polls  # GETs that still show a deleted droplet as "off"
        # a create that makes the droplet but whose answer goes wrong: held back this many seconds, then
        # replaced by this answer; every later request answered by ``broken_after_create`` (the API fell over)
        self.create_delay = 0.0
        self.create_late = False  # the delay comes before the droplet is made: not listed until it ends
        self.create_answer: tuple[int, Any] | None = None
        self.broken_after_create: tuple[int, Any] | None = None
        self.rate_limited_reads = 0  # the next GETs of one droplet are answered 429, as DigitalOcean's rate limit does
        # the next GETs of one droplet answered (status, headers) in turn: a 503, a 429 with Retry-After, ...
        self.failed_reads: list[tuple[int, dict[str, str]]] = []
        self.read_times: list[float] = []  # when each GET of one droplet came (time.monotonic())
        self._created = False
        self.droplets: dict[int, dict[str, Any]] = {}
        self.balancers: dict[str, dict[str, Any]] = {}
        self.forwarders: dict[str, list[Forwarder]] = {}
        self.user_data: dict[int, str] = {}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.booted: dict[int, list[str]] = {}  # the command each droplet "booted"
        self._deleting: dict[int, int] = {}
        self._ids = itertools.count(300_000_000 + (os.getpid() % 1000) * 1000)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # shutdown() waits for serve_forever's next look at its flag: every 0.05 s, not the default 0.5 s that
        # each test using a fake spent in its teardown
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeDigitalOcean":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        for proc in list(self.processes.values()):  # a pushed droplet's server may start meanwhile
            _stop(proc)
        for forwarders in self.forwarders.values():
            for forwarder in forwarders:
                forwarder.close()

    # ----------------------------------------------------------------- state

    def add_droplet(self, name: str, tags: list[str], status: str = "active") -> dict[str, Any]:
        """A droplet made outside inletsctl (or by another machine)."""
        with self._lock:
            return self._new_droplet({"name": name, "region": "lon1", "size": "s-1vcpu-1gb",
                                      "image": "ubuntu-24-04-x64", "tags": tags}, status)

    def _new_droplet(self, body: dict[str, Any], status: str) -> dict[str, Any]:
        droplet_id = next(self._ids)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        droplet = {
            "id": droplet_id, "name": body["name"], "memory": 1024, "vcpus": 1, "disk": 25, "locked": False,
            "status": status, "created_at": now, "features": [], "backup_ids": [], "snapshot_ids": [],
            "image": {"id": 1, "name": "24.04 (LTS) x64", "distribution": "Ubuntu", "slug": body["image"],
                      "public": True, "regions": sorted(VALID_REGIONS), "min_disk_size": 7, "created_at": now},
            "size": {"slug": body["size"], "memory": 1024, "vcpus": 1, "disk": 25, "transfer": 1.0,
                     "price_monthly": 6.0, "price_hourly": 0.00893, "regions": sorted(VALID_REGIONS)},
            "size_slug": body["size"], "networks": {"v4": [], "v6": []},
            "region": {"slug": body["region"], "name": body["region"], "features": [], "available": True, "sizes": []},
            "tags": list(body.get("tags") or []), "vpc_uuid": "",
        }
        if status == "active":
            self._assign_ip(droplet)
        self.droplets[droplet_id] = droplet
        return droplet

    def _assign_ip(self, droplet: dict[str, Any], ip: str | None = None) -> None:
        ip = ip or _new_ip()
        droplet["networks"]["v4"] = [
            {"ip_address": ip, "netmask": "255.0.0.0", "gateway": "127.0.0.1", "type": "public"},
            {"ip_address": "10.110.0.2", "netmask": "255.255.240.0", "gateway": "10.110.0.1", "type": "private"},
        ]

    def ip_of(self, droplet_id: int) -> str:
        return next(n["ip_address"] for n in self.droplets[droplet_id]["networks"]["v4"] if n["type"] == "public")

    def _advance(self, droplet: dict[str, Any]) -> None:
        """A droplet asked about after creation is booted (when the fake is set to boot them)."""
        if droplet["status"] == "new" and self.active and self.booter is not None:
            droplet["status"] = "active"
            self._assign_ip(droplet, self.booter.boot(droplet["id"], self.user_data[droplet["id"]]))
        elif droplet["status"] == "new" and self.active:
            droplet["status"] = "active"
            self._assign_ip(droplet)
            if self.boot:
                self.processes[droplet["id"]] = self._boot(droplet)

    def _boot(self, droplet: dict[str, Any]) -> subprocess.Popen[bytes]:
        """Run what the user-data's systemd unit runs, with its files, on the droplet's IP.

        Where the wheel did not fit the user-data, its receiver runs first (on the droplet's IP)
        and the rest of the boot waits, in a thread, for ``create`` to send the wheel."""
        doc = yaml.safe_load(self.user_data[droplet["id"]])
        root = self.workdir / f"droplet-{droplet['id']}"
        written: dict[str, str] = {}
        unit = None
        for item in doc["write_files"]:
            data = item.get("content", "")
            encoding = item.get("encoding", "text")
            raw = base64.b64decode(data) if "b64" in encoding else data.encode()
            raw = gzip.decompress(raw) if encoding.startswith("gz") else raw
            if item["path"] == UNIT_PATH:
                unit = raw.decode()
            target = root / item["path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
            os.chmod(target, int(item.get("permissions", "0644"), 8))
            written[item["path"]] = str(target)
        assert unit is not None, "user-data installs no inlets.service"
        exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        argv = shlex.split(exec_start.removeprefix("ExecStart="))
        assert argv[0] == VM_INLETS, argv
        ip = self.ip_of(droplet["id"])

        def here(arg: str) -> str:  # a VM path, inside this droplet's folder
            return written.get(arg) or (str(root / arg.lstrip("/")) if arg.startswith("/opt/inlets/") else arg)

        for command in doc["runcmd"]:  # run the user-data's own Python steps (unpacking the wheel)
            if isinstance(command, list) and command[:2] == ["python3", "-c"]:
                subprocess.run([sys.executable, "-c", command[2], *map(here, command[3:])],
                               check=True, timeout=60, capture_output=True)
        receive = next((c for c in doc["runcmd"] if isinstance(c, list) and c[:2] == ["python3", RECEIVER_SCRIPT]), None)
        if receive is None:
            return self._start(droplet["id"], doc, argv, here, root, ip)
        receiver = subprocess.Popen([sys.executable, *map(here, receive[1:]), "--addr", ip, "--timeout", "120"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=open(root / "receiver.log", "ab"), start_new_session=True)

        def then_start() -> None:
            if receiver.wait() == 0:
                self.processes[droplet["id"]] = self._start(droplet["id"], doc, argv, here, root, ip)

        threading.Thread(target=then_start, daemon=True).start()
        return receiver

    def _start(self, droplet_id: int, doc: dict, argv: list[str], here, root: Path, ip: str) -> subprocess.Popen[bytes]:
        """Install the wheel the droplet has now (or stand in for a package spec) and start the server."""
        env = dict(os.environ)
        pip = next(c for c in doc["runcmd"] if isinstance(c, list) and c[0].endswith("/pip"))
        if Path(here(pip[-1])).is_file():  # an embedded wheel: install it and run the runtime from it
            site = root / "opt" / "inlets" / "site"
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                            "--target", str(site), here(pip[-1])], check=True, timeout=60, capture_output=True)
            env["PYTHONPATH"] = str(site)
            inlets = [sys.executable, "-c", "import sys; from inlets_py.runtime.cli.main import main; sys.exit(main())"]
        else:  # a package spec: this installation's inlets stands in for the published package
            inlets = [inlets_binary()]
        argv = inlets + [here(arg) if arg.startswith("/") else arg for arg in argv[1:]]
        argv += ["--control-addr", ip, "--data-addr", ip]  # the droplet's only "interface"
        self.booted[droplet_id] = argv
        log = open(root / "server.log", "ab")
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                env=env, cwd=root)

    # ----------------------------------------------------------------- HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (create_delay)
                    self.close_connection = True

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urllib.parse.urlsplit(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                body = json.loads(raw) if raw else None
                fake.requests.append((method, url.path, body))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._send(401, {"id": "Unauthorized", "message": "Unable to authenticate you"})
                if fake._created and fake.broken_after_create is not None:
                    return self._send(*fake.broken_after_create)
                if method == "GET" and url.path.count("/") == 3:
                    fake.read_times.append(time.monotonic())
                    if fake.rate_limited_reads > 0:
                        fake.rate_limited_reads -= 1
                        return self._send(429, {"id": "too_many_requests", "message": "API Rate limit exceeded."})
                    if fake.failed_reads:
                        status, headers = fake.failed_reads.pop(0)
                        return self._send(status, {"id": "failed", "message": HTTPStatus(status).phrase}, headers)
                if (method, url.path) == ("POST", "/v2/droplets") and fake.create_late:
                    time.sleep(fake.create_delay)
                with fake._lock:
                    status, answer = fake._route(method, url.path, query, body)
                if (method, url.path, status) == ("POST", "/v2/droplets", 202) and not fake.create_late:
                    fake._created = True
                    time.sleep(fake.create_delay)  # outside the lock: the droplet is listed meanwhile
                    status, answer = fake.create_answer or (status, answer)
                self._send(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        not_found = (404, {"id": "not_found", "message": "The resource you were accessing could not be found."})
        if parts[:2] == ["v2", "load_balancers"]:
            return self._balancer_route(method, parts[2:], query, body) or not_found
        if parts[:2] != ["v2", "droplets"]:
            return not_found
        if len(parts) == 2 and method == "POST":
            return self._create(body or {})
        if len(parts) == 2 and method == "GET":
            tag = query.get("tag_name")
            found = [d for d in self.droplets.values() if tag is None or tag in d["tags"]]
            per_page, page = int(query.get("per_page", 20)), int(query.get("page", 1))
            chunk = found[(page - 1) * per_page : page * per_page]
            pages = {"next": f"https://api.digitalocean.com/v2/droplets?page={page + 1}"} if page * per_page < len(found) else {}
            return 200, {"droplets": chunk, "links": {"pages": pages}, "meta": {"total": len(found)}}
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) not in self.droplets:
            return not_found
        droplet_id = int(parts[2])
        droplet = self.droplets[droplet_id]
        if method == "GET":
            if droplet_id in self._deleting:
                if self._deleting[droplet_id] <= 0:
                    del self.droplets[droplet_id]
                    return not_found
                self._deleting[droplet_id] -= 1
                return 200, {"droplet": droplet}
            self._advance(droplet)
            return 200, {"droplet": droplet}
        if method == "DELETE":
            if droplet_id in self._deleting:
                return not_found
            droplet["status"] = "off"
            self._deleting[droplet_id] = self.gone_after_polls
            if droplet_id in self.processes:
                _stop(self.processes.pop(droplet_id))
            if self.booter is not None:
                self.booter.stop(droplet_id)
            if self.gone_after_polls == 0:
                del self.droplets[droplet_id]
            return 204, None
        return 405, {"id": "method_not_allowed", "message": "method not allowed"}

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        def unprocessable(message: str) -> tuple[int, Any]:
            return 422, {"id": "unprocessable_entity", "message": message}

        if not isinstance(body.get("name"), str) or not body["name"]:
            return unprocessable("Name is required.")
        if body.get("region") not in VALID_REGIONS:
            return unprocessable("You specified an invalid region for Droplet creation.")
        if body.get("size") not in VALID_SIZES:
            return unprocessable("You specified an invalid size for Droplet creation.")
        if body.get("image") not in VALID_IMAGES:
            return unprocessable("You specified an invalid image for Droplet creation.")
        if len((body.get("user_data") or "").encode()) > 64 * 1024:
            return unprocessable("user_data is too long (maximum is 64 KiB).")
        droplet = self._new_droplet(body, "new")
        self.user_data[droplet["id"]] = body.get("user_data") or ""
        return 202, {"droplet": droplet, "links": {"actions": []}}


    # ----------------------------------------------------------------- load balancers

    def _balancer_route(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any] | None:
        if not rest and method == "POST":
            return self._create_balancer(body or {})
        if not rest and method == "GET":
            per_page, page = int(query.get("per_page", 20)), int(query.get("page", 1))
            found = list(self.balancers.values())
            chunk = found[(page - 1) * per_page : page * per_page]
            pages = {"next": "https://api.digitalocean.com/v2/load_balancers?page=2"} if page * per_page < len(found) else {}
            return 200, {"load_balancers": chunk, "links": {"pages": pages}, "meta": {"total": len(found)}}
        if len(rest) != 1 or rest[0] not in self.balancers:
            return None
        balancer = self.balancers[rest[0]]
        if method == "GET":
            if balancer["status"] == "new" and self.active:
                balancer["status"], balancer["ip"] = "active", _new_ip()
                if self.boot:
                    self.forwarders[balancer["id"]] = [Forwarder(self, balancer, rule) for rule in balancer["forwarding_rules"]]
            return 200, {"load_balancer": balancer}
        if method == "DELETE":
            del self.balancers[rest[0]]
            for forwarder in self.forwarders.pop(rest[0], []):
                forwarder.close()
            return 204, None
        return 405, {"id": "method_not_allowed", "message": "method not allowed"}

    def _create_balancer(self, body: dict[str, Any]) -> tuple[int, Any]:
        def unprocessable(message: str) -> tuple[int, Any]:
            return 422, {"id": "unprocessable_entity", "message": message}

        if not isinstance(body.get("name"), str) or not body["name"]:
            return unprocessable("Name is required.")
        if body.get("region") not in VALID_REGIONS:
            return unprocessable("You specified an invalid region for the load balancer.")
        ids = body.get("droplet_ids")
        if not isinstance(ids, list) or not ids or any(i not in self.droplets for i in ids):
            return unprocessable("droplet_ids must name existing droplets.")
        rules = body.get("forwarding_rules")
        if not isinstance(rules, list) or not rules:
            return unprocessable("At least one forwarding rule is required.")
        for rule in rules:
            if rule.get("entry_protocol") != "tcp" or rule.get("target_protocol") != "tcp" or not all(
                isinstance(rule.get(k), int) and 1 <= rule[k] <= 65535 for k in ("entry_port", "target_port")
            ):
                return unprocessable(f"invalid forwarding rule {rule!r} (this fake forwards tcp only)")
        check = body.get("health_check") or {}
        if check.get("protocol") != "tcp" or check.get("port") not in [r["target_port"] for r in rules]:
            return unprocessable("health_check must be tcp on a target port.")
        if not 3 <= check.get("check_interval_seconds", 10) <= 300 or not 2 <= check.get("unhealthy_threshold", 5) <= 10:
            return unprocessable("health_check interval must be 3-300 s and unhealthy_threshold 2-10.")
        balancer_id = f"4de7ac8b-495b-4884-9a69-{next(self._ids):012d}"
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        balancer = {
            "id": balancer_id, "name": body["name"], "ip": "", "status": "new", "created_at": now,
            "algorithm": "round_robin", "forwarding_rules": rules, "health_check": check,
            "sticky_sessions": {"type": "none"}, "region": {"slug": body["region"], "name": body["region"]},
            "droplet_ids": list(ids), "enable_proxy_protocol": bool(body.get("enable_proxy_protocol")),
            "redirect_http_to_https": False, "enable_backend_keepalive": False, "size_unit": 1,
        }
        self.balancers[balancer_id] = balancer
        return 202, {"load_balancer": balancer}


class Forwarder:
    """One forwarding rule of an active fake balancer: a TCP listener relaying to the droplets."""

    def __init__(self, fake: FakeDigitalOcean, balancer: dict[str, Any], rule: dict[str, Any]) -> None:
        self._fake, self._balancer, self._rule = fake, balancer, rule
        self._next = itertools.count()
        self._listener = socket.create_server((balancer["ip"], rule["entry_port"]))
        self._listener.settimeout(0.5)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _backend(self) -> socket.socket | None:
        """The next droplet, round robin, that accepts a connection on the target port."""
        ids = [i for i in self._balancer["droplet_ids"] if i in self._fake.droplets]
        start = next(self._next)
        for k in range(len(ids)):
            try:
                return socket.create_connection((self._fake.ip_of(ids[(start + k) % len(ids)]), self._rule["target_port"]),
                                                timeout=2)
            except (OSError, StopIteration):
                continue
        return None

    def _relay(self, client: socket.socket) -> None:
        backend = self._backend()
        if backend is None:
            client.close()
            return
        if self._balancer["enable_proxy_protocol"]:
            (src, sport), (dst, dport) = client.getpeername(), client.getsockname()
            backend.sendall(f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode())
        for sock in (client, backend):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(60)

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        upstream = threading.Thread(target=pipe, args=(client, backend), daemon=True)
        upstream.start()
        pipe(backend, client)
        upstream.join(timeout=60)
        client.close()
        backend.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        terminate(proc)
