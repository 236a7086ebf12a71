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
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, Seen, libcloud_fixture, make_plan, recorded, write_state
from helpers.prov_support import one_line_error, run_cli
from inlets_py.provisioner.providers.api_url import parse_api_url
from inlets_py.provisioner.errors import NotFound, ProvisionError
from inlets_py.provisioner.firewall import firewall_name
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


def test_a_long_name_gets_a_firewall_label_linode_takes_and_delete_removes_it(api: RecordedAPI, tmp_path: Path) -> None:
    """A firewall label is 3-32 characters (API v4 FirewallRequest): ``inlets-NAME`` of a name over 25 characters was
    refused, so no such name could be created. It is shortened with a hash now, and delete knows it by that label."""
    name = "office-tunnel-for-the-build-farm-2"
    provider(api).create(replace(make_plan(tmp_path), name=name))
    (fw,) = api.requests("POST", "/v4/networking/firewalls")
    label = fw.json["label"]
    assert 3 <= len(label) <= 32 and label.startswith("inlets-office-tunnel") and label == firewall_name(name, 32)
    assert api.requests("POST", "/v4/linode/instances")[0].json["label"] == name
    body = _inlets_firewall()
    body["data"][0]["label"] = label
    api.routes.insert(0, ("GET", re.compile(f"/v4/linode/instances/{NODE}/firewalls"), Answer(200, body)))
    node = json.loads(libcloud_fixture("linode_v4", "create_node.json")) | {"status": "running", "label": name}
    api.route("GET", f"/v4/linode/instances/{NODE}", [Answer(200, node), NOT_FOUND])
    p = provider(api)
    p.poll_interval = 0.01
    p.delete(NODE)
    assert api.requests("DELETE", "/v4/networking/firewalls/123")


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


NO_DEVICES = {"data": [], "page": 1, "pages": 1, "results": 0}


def _firewalls(**changes: object) -> dict:
    """GET /v4/networking/firewalls (X-Filter on the label): the recorded list, its firewall as create made it for the
    instance "gone", then ``changes``."""
    body = json.loads(recorded("linode", "networking_firewalls.json"))
    body["data"][0] |= {"label": "inlets-gone", "tags": ["inlets"]} | changes
    return body


@pytest.mark.parametrize("changes, devices, deleted", [
    ({}, NO_DEVICES, True),
    ({}, json.loads(recorded("linode", "networking_firewalls_123_devices.json")), False),
    ({"tags": []}, NO_DEVICES, False),
], ids=["made-for-it", "still-attached-to-another-instance", "not-tagged-inlets"])
def test_delete_of_an_instance_already_gone_deletes_the_firewall_made_for_it(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        changes: dict, devices: dict, deleted: bool) -> None:
    """An instance deleted in the console left its Cloud Firewall inlets-NAME for good: delete found the firewall
    through the instance, and a bare-number id leads nowhere once the instance is gone. delete now looks it up by the
    name in local state, and deletes it only when it is create's (tagged inlets) and attached to nothing."""
    monkeypatch.setenv("LINODE_TOKEN", "T" * 64)
    write_state(tmp_path, "gone", "linode", NODE)
    api.route("GET", f"/v4/linode/instances/{NODE}", NOT_FOUND)
    api.route("GET", "/v4/networking/firewalls", Answer(200, _firewalls(**changes)))
    api.route("GET", "/v4/networking/firewalls/123/devices", Answer(200, devices))
    result = run_cli(capsys, "delete", "gone", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    said = "deleted its firewall inlets-gone; " if deleted else ""
    assert result.out.strip() == f"gone was already gone on linode; {said}removed its local state"
    (listed,) = api.requests("GET", "/v4/networking/firewalls")
    assert json.loads(listed.headers["X-Filter"]) == {"label": "inlets-gone"}
    assert bool(api.requests("DELETE", "/v4/networking/firewalls/123")) is deleted
    assert not (tmp_path / "gone").exists() and api.unrouted() == []


def test_delete_after_a_create_cut_short_by_an_outage_deletes_its_firewall(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API went down after create made the firewall: the instance create, the firewall's removal and the check
    for an instance made all the same all failed, so the state stayed without an id. delete then found no instance
    of that name and removed the state, leaving the firewall; it now deletes that firewall too."""
    monkeypatch.setenv("LINODE_TOKEN", "T" * 64)
    outage = {"on": True}
    down = Answer(503, {"errors": [{"reason": "Service Unavailable"}]})
    none = {"data": [], "page": 1, "pages": 1, "results": 0}

    def during_outage(answer: Answer) -> object:
        return lambda seen: down if outage["on"] and api.requests("POST", "/v4/linode/instances") else answer

    api.routes.insert(0, ("GET", re.compile("/v4/linode/instances"), during_outage(Answer(200, none))))
    api.routes.insert(0, ("POST", re.compile("/v4/linode/instances"), down))
    api.routes.insert(0, ("DELETE", re.compile("/v4/networking/firewalls/123"), during_outage(Answer(200, {}))))
    api.route("GET", "/v4/networking/firewalls", Answer(200, _firewalls(label="inlets-cut")))
    api.route("GET", "/v4/networking/firewalls/123/devices", Answer(200, NO_DEVICES))
    where = ("--api-url", api.url, "--state-dir", str(tmp_path))
    made = run_cli(capsys, "create", "cut", "--provider", "linode", "--runtime-spec", "inlets-py==0.1.0", *where)
    one_line_error(made, "Service Unavailable", "could not be checked", "inletsctl delete cut")
    assert len(api.requests("DELETE", "/v4/networking/firewalls/123")) == 1 and (tmp_path / "cut" / "server.json").exists()
    outage["on"] = False
    result = run_cli(capsys, "delete", "cut", *where)
    assert result.code == 0, result.err
    assert result.out.startswith("linode has no exit server named cut; deleted its firewall inlets-cut; removed its local state")
    assert len(api.requests("DELETE", "/v4/networking/firewalls/123")) == 2 and not (tmp_path / "cut").exists()


def test_a_firewall_that_cannot_be_deleted_keeps_the_state_for_the_next_delete(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The firewall's DELETE failed (a 500) after the instance was gone: delete said "deleted", exit 0, and removed
    the state, leaving the firewall, whose label (unique per account) then made the next create of the name fail."""
    monkeypatch.setenv("LINODE_TOKEN", "T" * 64)
    write_state(tmp_path, "tunnel", "linode", NODE)
    node = json.loads(libcloud_fixture("linode_v4", "create_node.json")) | {"status": "running", "label": "tunnel"}
    api.route("GET", f"/v4/linode/instances/{NODE}", [Answer(200, node), NOT_FOUND])
    api.routes.insert(0, ("DELETE", re.compile("/v4/networking/firewalls/123"),
                          [Answer(500, {"errors": [{"reason": "Internal error"}]}), Answer(200, {})]))
    mine = _inlets_firewall()
    mine["data"][0]["label"] = "inlets-tunnel"
    api.routes.insert(0, ("GET", re.compile(f"/v4/linode/instances/{NODE}/firewalls"), Answer(200, mine)))
    api.route("GET", "/v4/networking/firewalls", Answer(200, _firewalls(label="inlets-tunnel")))
    api.route("GET", "/v4/networking/firewalls/123/devices", Answer(200, {"data": [], "page": 1, "pages": 1}))
    where = ("--api-url", api.url, "--state-dir", str(tmp_path))
    failed = run_cli(capsys, "delete", "tunnel", *where)
    one_line_error(failed, "deleting firewall inlets-tunnel", "Internal error")
    assert (tmp_path / "tunnel" / "server.json").exists()
    again = run_cli(capsys, "delete", "tunnel", *where)
    assert again.code == 0 and "deleted its firewall inlets-tunnel" in again.out, again
    assert len(api.requests("DELETE", "/v4/networking/firewalls/123")) == 2 and not (tmp_path / "tunnel").exists()


def test_list_pages_500_at_a_time_past_the_first_500(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libcloud's driver set page_size=25 on every request, over the 500 asked for: 20 pages of 25, and `inletsctl list`
    showed 500 of an account's 530 exit servers, without a word."""
    monkeypatch.setenv("LINODE_TOKEN", "T" * 64)
    node = json.loads(libcloud_fixture("linode_v4", "list_nodes.json"))["data"][0]
    total = 530

    def paged(seen: Seen) -> Answer:
        page, size = int(seen.query["page"][0]), min(int(seen.query["page_size"][0]), 500)
        data = [node | {"id": 1000 + i, "label": f"edge-{i}", "tags": ["inlets"]}
                for i in range((page - 1) * size, min(total, page * size))]
        return Answer(200, {"data": data, "page": page, "pages": -(-total // size), "results": total})

    api.routes.insert(0, ("GET", re.compile("/v4/linode/instances"), paged))
    result = run_cli(capsys, "list", "--provider", "linode", "--json", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    assert len(json.loads(result.out)["servers"]) == total
    assert [s.query["page_size"] for s in api.requests("GET", "/v4/linode/instances")] == [["500"], ["500"]]
