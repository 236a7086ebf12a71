"""Hetzner: the official hcloud SDK makes real HTTP requests to a loopback server answering
with the example responses of hcloud-python's own unit-test fixtures (Hetzner's
documented examples, tests/provisioner/recorded/hetzner). Hetzner's OpenAPI document is
published only on its website (no registry package ships it), so Prism is not used here.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, make_plan, recorded, write_state
from helpers.prov_support import one_line_error, run_cli
from inlets_py.provisioner.errors import NotFound, ProvisionError, Transient
from inlets_py.provisioner.providers.hetzner import HetznerProvider

NOT_FOUND = Answer(404, {"error": {"code": "not_found", "message": "server with ID '1' not found", "details": {}}})


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    server.route("POST", "/v1/firewalls", Answer(201, recorded("hetzner", "firewalls_create.json")))
    server.route("POST", "/v1/servers", Answer(201, recorded("hetzner", "servers_create.json")))
    server.route("GET", "/v1/servers", Answer(200, recorded("hetzner", "servers_list.json")))
    server.route("DELETE", "/v1/servers/1", Answer(200, recorded("hetzner", "action_running.json")))
    server.route("GET", "/v1/firewalls/38", Answer(200, _inlets_firewall()))
    server.route("DELETE", "/v1/firewalls/38", Answer(204))
    yield server
    server.close()


def _inlets_firewall() -> dict:
    body = json.loads(recorded("hetzner", "firewalls_get.json"))
    body["firewall"]["name"] = "inlets-my-server"  # made for the example server (the example one was named by another tool)
    return body


def provider(api: RecordedAPI) -> HetznerProvider:
    return HetznerProvider("H" * 64, api.url + "/v1")


def test_create_sends_user_data_labels_and_exact_firewall(api: RecordedAPI, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ports="22,80,443", ssh_key="my-key")
    host = provider(api).create(plan)
    assert host.id == "1"
    (create,) = api.requests("POST", "/v1/servers")
    body = create.json
    assert body["user_data"] == plan.user_data
    assert body["labels"] == {"inlets": "true", "inlets-mode": "tcp", "inlets-expires": "1893553445"}
    assert body["server_type"] == "cx22" and body["image"] == "ubuntu-24.04" and body["location"] == "nbg1"
    assert body["firewalls"] == [{"firewall": 38}] and body["ssh_keys"] == ["my-key"]
    (fw,) = api.requests("POST", "/v1/firewalls")
    rules = fw.json["rules"]
    assert sorted(int(r["port"]) for r in rules) == [22, 80, 443, 8123]
    assert all(r["direction"] == "in" and r["protocol"] == "tcp" and r["source_ips"] == ["0.0.0.0/0", "::/0"] for r in rules)
    assert fw.json["name"] == "inlets-rec-check"
    assert create.headers["Authorization"] == "Bearer " + "H" * 64
    assert api.unrouted() == []


def test_http_mode_opens_80_443_and_control(api: RecordedAPI, tmp_path: Path) -> None:
    provider(api).create(make_plan(tmp_path, mode="http"))
    assert sorted(r["port"] for r in api.requests("POST", "/v1/firewalls")[0].json["rules"]) == ["443", "80", "8123"]


LONG = "eu-west-build-farm-tunnel-for-the-nightly-integration-runs"  # 58: replicas LONG-1, LONG-2 have 60


def test_replicas_of_a_long_name_get_a_firewall_each(api: RecordedAPI, tmp_path: Path) -> None:
    """``inlets-NAME`` cut at 63 named both replicas' firewalls alike: Hetzner, whose firewall names are unique per
    project, refused the second create. Its firewall names take 128 characters: ``inlets-NAME`` fits whole."""
    for name in (f"{LONG}-1", f"{LONG}-2"):
        provider(api).create(replace(make_plan(tmp_path), name=name))
    assert [r.json["name"] for r in api.requests("POST", "/v1/firewalls")] == [f"inlets-{LONG}-1", f"inlets-{LONG}-2"]


@pytest.mark.parametrize("firewall, deleted", [(f"inlets-{LONG}-2", True), (f"inlets-{LONG}-1"[:63], False)],
                         ids=["its-own", "a-sibling-s-cut-short"])
def test_delete_of_a_long_name_removes_its_own_firewall_only(api: RecordedAPI, firewall: str, deleted: bool) -> None:
    """made_for compared names cut at 63, so a server LONG-2 in the firewall of LONG-1 (cut: ``inlets-LONG-``) took
    it along, still in use by LONG-1; and its own, named whole now, must go with it."""
    server = json.loads(recorded("hetzner", "servers_get.json"))
    server["server"]["name"] = f"{LONG}-2"
    api.route("GET", "/v1/servers/1", [Answer(200, server), NOT_FOUND])
    body = _inlets_firewall()
    body["firewall"]["name"] = firewall
    api.routes.insert(0, ("GET", re.compile("/v1/firewalls/38"), Answer(200, body)))
    p = provider(api)
    p.poll_interval = 0.01
    p.delete("1")
    assert api.requests("DELETE", "/v1/servers/1") and bool(api.requests("DELETE", "/v1/firewalls/38")) == deleted


def test_status_list_by_label_and_delete_removes_the_firewall(api: RecordedAPI) -> None:
    api.route("GET", "/v1/servers/1", [Answer(200, recorded("hetzner", "servers_get.json"))] * 2 + [NOT_FOUND])
    p = provider(api)
    host = p.status("1")
    assert host.status == "active" and host.ip == "1.2.3.4"
    assert [h.id for h in p.list()] and api.requests("GET", "/v1/servers")[0].query["label_selector"] == ["inlets"]
    p.poll_interval = 0.01
    p.delete("1")
    assert api.requests("DELETE", "/v1/servers/1") and api.requests("DELETE", "/v1/firewalls/38")
    with pytest.raises(NotFound):
        p.status("1")


def test_a_refused_create_removes_its_firewall_with_one_line(api: RecordedAPI, tmp_path: Path) -> None:
    api.routes.insert(0, ("POST", re.compile("/v1/servers"), Answer(422, {"error": {
        "code": "invalid_input", "message": "invalid input in field 'server_type'", "details": {}}})))
    with pytest.raises(ProvisionError, match="invalid input in field 'server_type'") as info:
        provider(api).create(make_plan(tmp_path, size="cx-nope"))
    assert "\n" not in str(info.value)
    assert api.requests("DELETE", "/v1/firewalls/38")


def test_a_create_call_that_times_out_is_sent_once_within_its_timeout(api: RecordedAPI, tmp_path: Path) -> None:
    """The hcloud SDK sent a timed-out POST /v1/firewalls again 5 times, backing off between: `create --timeout 5`
    took 44 s on one call (documented: each API call waits at most --timeout), asking Hetzner for 6 firewalls."""
    def slow(seen: object) -> Answer:
        time.sleep(2.5)
        return Answer(201, recorded("hetzner", "firewalls_create.json"))

    api.routes.insert(0, ("POST", re.compile("/v1/firewalls"), slow))
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="no answer in time"):
        HetznerProvider("H" * 64, api.url + "/v1", timeout=1.0).create(make_plan(tmp_path))
    assert time.monotonic() - started < 2.5
    assert len(api.requests("POST", "/v1/firewalls")) == 1


def test_the_apis_own_trouble_while_a_server_boots_is_asked_again(api: RecordedAPI, tmp_path: Path) -> None:
    """One 503 "unavailable" while polling a booting server made create give up ("reading server 1 failed
    (unavailable)"); a 5xx is Transient for every other provider, so waits ask again."""
    api.routes.insert(0, ("GET", re.compile("/v1/servers/1"), Answer(503, {"error": {
        "code": "unavailable", "message": "the service is temporarily unavailable", "details": {}}})))
    with pytest.raises(Transient, match=r"reading server 1 failed \(503\).*try again later"):
        provider(api).status("1")


def test_a_failed_create_whose_firewall_cannot_go_either_says_why_the_create_failed(api: RecordedAPI, tmp_path: Path) -> None:
    """The firewall's removal failed too (Hetzner refuses to delete a firewall a server made all the same still
    uses): its error replaced the create's, so the user read about a firewall instead of why the server failed."""
    api.routes.insert(0, ("POST", re.compile("/v1/servers"), Answer(503, {"error": {
        "code": "unavailable", "message": "the service is temporarily unavailable", "details": {}}})))
    api.routes.insert(0, ("DELETE", re.compile("/v1/firewalls/38"), Answer(409, {"error": {
        "code": "resource_in_use", "message": "firewall with ID '38' is still in use", "details": {}}})))
    with pytest.raises(ProvisionError, match="temporarily unavailable") as info:
        provider(api).create(make_plan(tmp_path))
    assert "in use" not in str(info.value)
    assert api.requests("DELETE", "/v1/firewalls/38")


def test_delete_leaves_a_shared_firewall_whose_name_merely_starts_with_inlets(api: RecordedAPI) -> None:
    """Every applied firewall named ``inlets-*`` was deleted: one the user shares between servers
    ("inlets-office-ssh", not made by inletsctl) went too. Only ``inlets-NAME`` goes now."""
    server = json.loads(recorded("hetzner", "servers_get.json"))
    server["server"]["public_net"]["firewalls"].append({"id": 39, "status": "applied"})
    shared = _inlets_firewall()
    shared["firewall"] |= {"id": 39, "name": "inlets-office-ssh"}
    api.route("GET", "/v1/firewalls/39", Answer(200, shared))
    api.route("DELETE", "/v1/firewalls/39", Answer(204))
    api.route("GET", "/v1/servers/1", [Answer(200, server), NOT_FOUND])
    p = provider(api)
    p.poll_interval = 0.01
    p.delete("1")
    assert api.requests("DELETE", "/v1/firewalls/38") and not api.requests("DELETE", "/v1/firewalls/39")


def _firewalls(**changes: object) -> dict:
    """GET /v1/firewalls?name=inlets-gone: the recorded list, its firewall as create made it for the server "gone"
    (applied to nothing now that the server is gone), then ``changes``."""
    body = json.loads(recorded("hetzner", "firewalls_list.json"))
    body["firewalls"][0] |= {"name": "inlets-gone", "labels": {"inlets": "true"}, "applied_to": []} | changes
    return body


@pytest.mark.parametrize("changes, deleted", [
    ({}, True),
    ({"applied_to": json.loads(recorded("hetzner", "firewalls_list.json"))["firewalls"][0]["applied_to"]}, False),
    ({"labels": {}}, False),
], ids=["made-for-it", "still-applied-to-another-server", "not-labelled-inlets"])
def test_delete_of_a_server_already_gone_deletes_the_firewall_made_for_it(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        changes: dict, deleted: bool) -> None:
    """A server deleted in the console left its firewall inlets-NAME for good: delete found the firewall through the
    server, and a bare-number id leads nowhere once the server is gone. delete now looks it up by the name in local
    state, and deletes it only when it is create's (labelled inlets) and protects no other server."""
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    write_state(tmp_path, "gone", "hetzner", "7")
    api.route("GET", "/v1/servers/7", NOT_FOUND)
    api.route("GET", "/v1/firewalls", Answer(200, _firewalls(**changes)))
    result = run_cli(capsys, "delete", "gone", "--api-url", api.url + "/v1", "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    said = "deleted its firewall inlets-gone; " if deleted else ""
    assert result.out.strip() == f"gone was already gone on hetzner; {said}removed its local state"
    assert [s.query["name"] for s in api.requests("GET", "/v1/firewalls")] == [["inlets-gone"]]
    assert bool(api.requests("DELETE", "/v1/firewalls/38")) is deleted
    assert not (tmp_path / "gone").exists() and api.unrouted() == []


def test_delete_after_a_create_cut_short_by_an_outage_deletes_its_firewall(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API went down after create made the firewall: the server create, the firewall's removal and the check
    for a server made all the same all failed, so the state stayed without an id, as it should. delete then found
    no server of that name and removed the state, leaving the firewall; it now deletes that firewall too."""
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    outage = {"on": True}
    down = Answer(503, {"error": {"code": "unavailable", "message": "the service is temporarily unavailable", "details": {}}})
    none = {"servers": [], "meta": {"pagination": {"page": 1, "per_page": 25, "previous_page": None, "next_page": None,
                                                   "last_page": 1, "total_entries": 0}}}

    def during_outage(answer: Answer) -> object:
        return lambda seen: down if outage["on"] and api.requests("POST", "/v1/servers") else answer

    api.routes.insert(0, ("GET", re.compile("/v1/servers"), during_outage(Answer(200, none))))
    api.routes.insert(0, ("POST", re.compile("/v1/servers"), down))
    api.routes.insert(0, ("DELETE", re.compile("/v1/firewalls/38"), during_outage(Answer(204))))
    api.route("GET", "/v1/firewalls", Answer(200, _firewalls(name="inlets-cut")))
    where = ("--api-url", api.url + "/v1", "--state-dir", str(tmp_path))
    made = run_cli(capsys, "create", "cut", "--provider", "hetzner", "--runtime-spec", "inlets-py==0.1.0", *where)
    one_line_error(made, "temporarily unavailable", "could not be checked", "inletsctl delete cut")
    assert len(api.requests("DELETE", "/v1/firewalls/38")) == 1 and (tmp_path / "cut" / "server.json").exists()
    outage["on"] = False
    result = run_cli(capsys, "delete", "cut", *where)
    assert result.code == 0, result.err
    assert result.out.startswith("hetzner has no exit server named cut; deleted its firewall inlets-cut; removed its local state")
    assert len(api.requests("DELETE", "/v1/firewalls/38")) == 2 and not (tmp_path / "cut").exists()


def test_a_create_whose_firewall_call_failed_deletes_the_firewall_made_all_the_same(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /v1/firewalls failed (a 503, a timeout) but Hetzner made the firewall: create removed its state and
    said "try again", and trying again failed on the name inlets-NAME, unique per project, with no hint of why."""
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    none = {"servers": [], "meta": {"pagination": {"page": 1, "per_page": 25, "previous_page": None, "next_page": None,
                                                   "last_page": 1, "total_entries": 0}}}
    api.routes.insert(0, ("GET", re.compile("/v1/servers"), Answer(200, none)))
    api.routes.insert(0, ("POST", re.compile("/v1/firewalls"), Answer(503, {"error": {
        "code": "unavailable", "message": "the service is temporarily unavailable", "details": {}}})))
    api.route("GET", "/v1/firewalls", Answer(200, _firewalls(name="inlets-cut")))
    made = run_cli(capsys, "create", "cut", "--provider", "hetzner", "--runtime-spec", "inlets-py==0.1.0",
                   "--api-url", api.url + "/v1", "--state-dir", str(tmp_path))
    one_line_error(made, "temporarily unavailable", "deleted its firewall inlets-cut")
    assert len(api.requests("DELETE", "/v1/firewalls/38")) == 1 and not (tmp_path / "cut").exists()


def test_delete_by_id_of_a_server_gone_and_unknown_here_is_one_line_and_deletes_nothing(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without local state nothing names the server, so no firewall is guessed at: a one-line error, exit 1."""
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    api.route("GET", "/v1/servers/7", NOT_FOUND)
    result = run_cli(capsys, "delete", "--provider", "hetzner", "--id", "7", "--api-url", api.url + "/v1",
                     "--state-dir", str(tmp_path))
    assert result.code == 1
    one_line_error(result, "hetzner: no exit server with id 7 among those inletsctl made")
    assert not api.requests("DELETE") and not api.requests("GET", "/v1/firewalls")


def test_a_firewall_that_cannot_be_deleted_keeps_the_state_for_the_next_delete(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state is the only record of the name that leads to the firewall: it stays until the firewall is gone."""
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    write_state(tmp_path, "gone", "hetzner", "7")
    api.route("GET", "/v1/servers/7", NOT_FOUND)
    api.route("GET", "/v1/firewalls", Answer(200, _firewalls()))
    api.routes.insert(0, ("DELETE", re.compile("/v1/firewalls/38"), [Answer(503, {"error": {
        "code": "unavailable", "message": "the service is temporarily unavailable", "details": {}}}), Answer(204)]))
    where = ("--api-url", api.url + "/v1", "--state-dir", str(tmp_path))
    failed = run_cli(capsys, "delete", "gone", *where)
    one_line_error(failed, "gone was already gone on hetzner, but", "temporarily unavailable", "local state is kept",
                   "its firewall could not be deleted", "run inletsctl delete gone --state-dir", "again")
    assert (tmp_path / "gone" / "server.json").exists()
    again = run_cli(capsys, "delete", "gone", *where)
    assert again.code == 0 and "deleted its firewall inlets-gone" in again.out, again
    assert len(api.requests("DELETE", "/v1/firewalls/38")) == 2 and not (tmp_path / "gone").exists()
