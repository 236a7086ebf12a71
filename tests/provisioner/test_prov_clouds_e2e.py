"""``inletsctl create --provider vultr`` end to end: libcloud's Vultr driver talks to a loopback
server with the recorded Vultr answers; when the new instance is first read, the "VM" boots
by running what its rendered user-data runs (the DigitalOcean fake's boot, reused) on a
loopback address, which replaces the recorded ``main_ip``: the one field changed so that
the wait, the pinned-TLS /healthz, the printed client command and delete all run for real.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, Seen, libcloud_fixture, recorded
from helpers.prov_fake_do import FakeDigitalOcean, _stop
from helpers.prov_support import free_port, get_through, http_upstream, run_client, run_inletsctl

GROUP = "cb676a46-66fd-4dfb-b839-443f2e6c0b60"


class BootingVultr:
    """Recorded Vultr answers; the instance boots the user-data it was created with."""

    def __init__(self, workdir: Path) -> None:
        self.api = RecordedAPI()
        self.booter = FakeDigitalOcean("unused", workdir)  # only its _boot() is used: no server started
        self.deleted = False
        self._lock = threading.Lock()
        api = self.api
        api.route("POST", "/v2/firewalls", Answer(201, recorded("vultr", "firewall_group_create.json")))
        api.route("POST", f"/v2/firewalls/{GROUP}/rules", Answer(201, recorded("vultr", "firewall_rule_create.json")))
        api.route("DELETE", f"/v2/firewalls/{GROUP}", Answer(204))
        api.route("GET", f"/v2/firewalls/{GROUP}", self._group)
        api.route("POST", "/v2/instances", Answer(202, libcloud_fixture("vultr_v2", "create_node.json")))
        api.route("GET", "/v2/instances/123", self._instance)
        api.route("GET", "/v2/instances", lambda seen: Answer(200, {"instances": [self._body()] if self._up() else [],
                                                                     "meta": {"total": 1, "links": {"next": "", "prev": ""}}}))
        api.route("DELETE", "/v2/instances/123", self._delete)

    def _group(self, seen: Seen) -> Answer:
        """The recorded group, described as create asked (delete removes only a group inletsctl made)."""
        body = json.loads(recorded("vultr", "firewall_group_create.json"))
        (made,) = self.api.requests("POST", "/v2/firewalls")
        body["firewall_group"]["description"] = made.json["description"]
        return Answer(200, body)

    def _up(self) -> bool:
        return 123 in self.booter.droplets and not self.deleted

    def _body(self) -> dict[str, Any]:
        body = json.loads(libcloud_fixture("vultr_v2", "ex_get_node.json"))["instance"]
        body.update(main_ip=self.booter.ip_of(123), label="vultr-e2e", firewall_group_id=GROUP)
        return body

    def _instance(self, seen: Seen) -> Answer:
        with self._lock:
            if self.deleted:
                return Answer(404, {"error": "invalid instance ID", "status": 404})
            if 123 not in self.booter.processes:
                (create,) = self.api.requests("POST", "/v2/instances")
                droplet = {"id": 123, "networks": {"v4": []}}
                self.booter.droplets[123] = droplet
                self.booter._assign_ip(droplet)
                self.booter.user_data[123] = base64.b64decode(create.json["user_data"]).decode()
                self.booter.processes[123] = self.booter._boot(droplet)
            return Answer(200, {"instance": self._body()})

    def _delete(self, seen: Seen) -> Answer:
        with self._lock:
            self.deleted = True
            for proc in self.booter.processes.values():
                _stop(proc)
        return Answer(204)

    def close(self) -> None:
        self.api.close()
        self.booter._server.server_close()
        for proc in self.booter.processes.values():
            _stop(proc)


@pytest.fixture
def vultr(tmp_path: Path) -> Iterator[BootingVultr]:
    cloud = BootingVultr(tmp_path / "cloud")
    yield cloud
    cloud.close()


def test_create_list_client_traffic_and_delete(vultr: BootingVultr, tmp_path: Path) -> None:
    state, port, control = tmp_path / "state", free_port(), free_port()
    env = {"VULTR_API_KEY": "K" * 36, "VULTR_API_URL": vultr.api.url}
    created = run_inletsctl("create", "vultr-e2e", "--provider", "vultr", "--ports", str(port), "--control-port", str(control),
                            "--json", "--timeout", "40", "--state-dir", str(state), env=env)
    assert created.code == 0, created.err
    summary = created.json()
    ip = vultr.booter.ip_of(123)
    assert (summary["id"], summary["ip"], summary["provider"]) == ("123", ip, "vultr")
    assert summary["firewall"] == "firewall group opening only the tunnel's ports"
    rules = sorted(int(r.json["port"]) for r in vultr.api.requests("POST", f"/v2/firewalls/{GROUP}/rules"))
    assert rules == sorted([port, port, control, control])  # v4 and v6 each
    with http_upstream(port), run_client(summary["client_command"], tmp_path / "client.log"):
        logs = (tmp_path / "client.log", tmp_path / "cloud" / "droplet-123" / "server.log")
        assert get_through(f"http://{ip}:{port}/via-vultr", logs=logs) == "hello from the upstream, path=/via-vultr"
    listed = run_inletsctl("list", "--provider", "vultr", "--json", "--state-dir", str(state), env=env)
    (row,) = listed.json()["servers"]
    assert (row["name"], row["where"], row["ip"]) == ("vultr-e2e", "both", ip)
    deleted = run_inletsctl("delete", "vultr-e2e", "--state-dir", str(state), env=env)
    assert deleted.code == 0, deleted.err
    assert vultr.api.requests("DELETE", f"/v2/firewalls/{GROUP}") and not (state / "vultr-e2e").exists()
    assert vultr.api.unrouted() == []
