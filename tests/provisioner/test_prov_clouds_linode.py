"""Linode: libcloud's Linode v4 driver makes real HTTP requests to a loopback server that
answers with recorded real responses: libcloud's own Linode v4 fixtures (instances) and
the Cloud Firewall answers from Linode's official Python SDK test fixtures (linode_api4,
tests/provisioner/recorded/linode). Linode's OpenAPI document is not shipped by any
registry package, so Prism is not used here.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, libcloud_fixture, make_plan, recorded
from inlets_py.provisioner.providers.cloud_api import parse_api_url
from inlets_py.provisioner.errors import NotFound, ProvisionError
from inlets_py.provisioner.providers.linode import LinodeProvider

NODE = "45501392"  # the id in libcloud's recorded create_node.json
NOT_FOUND = Answer(404, {"errors": [{"reason": "Not found"}]})


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    server.route("POST", "/v4/networking/firewalls", Answer(200, recorded("linode", "networking_firewalls_123.json")))
    server.route("POST", "/v4/networking/firewalls/123/devices",
                 Answer(200, recorded("linode", "networking_firewalls_123_devices_123.json")))
    server.route("DELETE", "/v4/networking/firewalls/123", Answer(200, {}))
    server.route("POST", "/v4/linode/instances", Answer(200, libcloud_fixture("linode_v4", "create_node.json")))
    server.route("GET", "/v4/linode/instances", Answer(200, libcloud_fixture("linode_v4", "list_nodes.json")))
    server.route("GET", f"/v4/linode/instances/{NODE}/firewalls", Answer(200, _inlets_firewall()))
    server.route("DELETE", f"/v4/linode/instances/{NODE}", Answer(200, {}))
    yield server
    server.close()


def _inlets_firewall() -> dict:
    body = json.loads(recorded("linode", "linode_instances_123_firewalls.json"))
    body["data"][0]["label"] = "inlets-TestNode"  # made for the recorded instance (the recorded one was labelled by another tool)
    return body


def provider(api: RecordedAPI) -> LinodeProvider:
    return LinodeProvider("T" * 64, parse_api_url("linode", api.url, "LINODE_API_URL"))


def test_create_sends_user_data_tags_and_exact_firewall(api: RecordedAPI, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ports="22,80,443", ssh_key="ssh-ed25519 AAAAC3Nza example")
    host = provider(api).create(plan)
    assert host.id == NODE
    (create,) = api.requests("POST", "/v4/linode/instances")
    body = create.json
    assert base64.b64decode(body["metadata"]["user_data"]).decode() == plan.user_data
    assert body["tags"] == ["inlets", "inlets-mode:tcp", "inlets-expires:1893553445"]
    assert body["region"] == "eu-west" and body["type"] == "g6-nanode-1" and body["image"] == "linode/ubuntu24.04"
    assert body["label"] == "rec-check" and body["authorized_keys"] == ["ssh-ed25519 AAAAC3Nza example"]
    assert len(body["root_pass"]) >= 32
    (fw,) = api.requests("POST", "/v4/networking/firewalls")
    rules = fw.json["rules"]
    assert rules["inbound_policy"] == "DROP" and len(rules["inbound"]) == 1
    assert rules["inbound"][0]["ports"] == "22,80,443,8123" and rules["inbound"][0]["protocol"] == "TCP"
    assert rules["inbound"][0]["addresses"] == {"ipv4": ["0.0.0.0/0"], "ipv6": ["::/0"]}
    (attach,) = api.requests("POST", "/v4/networking/firewalls/123/devices")
    assert attach.json == {"type": "linode", "id": int(NODE)}
    assert create.headers["Authorization"] == "Bearer " + "T" * 64
    assert api.unrouted() == []


def test_http_mode_opens_80_443_and_control(api: RecordedAPI, tmp_path: Path) -> None:
    provider(api).create(make_plan(tmp_path, mode="http"))
    assert api.requests("POST", "/v4/networking/firewalls")[0].json["rules"]["inbound"][0]["ports"] == "80,443,8123"


def test_status_list_by_tag_and_delete_removes_the_firewall(api: RecordedAPI) -> None:
    node = json.loads(libcloud_fixture("linode_v4", "create_node.json")) | {"status": "running"}
    api.route("GET", f"/v4/linode/instances/{NODE}", [Answer(200, node), Answer(200, node), NOT_FOUND])
    p = provider(api)
    host = p.status(NODE)
    assert host.status == "active" and host.ip == "45.32.179.25"  # the private 192.168/16 address is skipped
    assert p.list()
    assert json.loads(api.requests("GET", "/v4/linode/instances")[0].headers["X-Filter"]) == {"tags": "inlets"}
    p.poll_interval = 0.01
    p.delete(NODE)
    assert api.requests("DELETE", f"/v4/linode/instances/{NODE}") and api.requests("DELETE", "/v4/networking/firewalls/123")
    with pytest.raises(NotFound):
        p.status(NODE)


def test_a_refused_create_removes_its_firewall_with_one_line(api: RecordedAPI, tmp_path: Path) -> None:
    api.routes.insert(0, ("POST", re.compile("/v4/linode/instances"),
                          Answer(400, {"errors": [{"reason": "A valid plan type by that ID was not found", "field": "type"}]})))
    with pytest.raises(ProvisionError, match="type: A valid plan type") as info:
        provider(api).create(make_plan(tmp_path, size="g6-nope"))
    assert "\n" not in str(info.value)
    assert api.requests("DELETE", "/v4/networking/firewalls/123")


def test_delete_leaves_a_shared_firewall_whose_name_merely_starts_with_inlets(api: RecordedAPI) -> None:
    """Every attached firewall labelled ``inlets-*`` was deleted: one the user shares between instances
    ("inlets-office-ssh", not made by inletsctl) went too, unprotecting the others. Only ``inlets-LABEL`` goes now."""
    body = _inlets_firewall()
    body["data"].append(body["data"][0] | {"id": 456, "label": "inlets-office-ssh"})
    api.routes.insert(0, ("GET", re.compile(f"/v4/linode/instances/{NODE}/firewalls"), Answer(200, body)))
    api.route("DELETE", "/v4/networking/firewalls/456", Answer(200, {}))
    node = json.loads(libcloud_fixture("linode_v4", "create_node.json")) | {"status": "running"}
    api.route("GET", f"/v4/linode/instances/{NODE}", [Answer(200, node), NOT_FOUND])
    p = provider(api)
    p.poll_interval = 0.01
    p.delete(NODE)
    assert api.requests("DELETE", "/v4/networking/firewalls/123") and not api.requests("DELETE", "/v4/networking/firewalls/456")
