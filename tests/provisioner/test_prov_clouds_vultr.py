"""Vultr: libcloud's Vultr v2 driver makes real HTTP requests to a loopback server that
answers with recorded real responses: libcloud's own Vultr v2 fixtures (instances) and
the firewall answers from Vultr's official Node SDK test suite (tests/provisioner/recorded/vultr).
No OpenAPI document of Vultr's is published in a registry package, so Prism is not used here.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, Seen, libcloud_fixture, make_plan, recorded
from helpers.prov_support import run_cli
from inlets_py.provisioner.providers.api_url import parse_api_url
from inlets_py.provisioner.errors import NotFound, ProvisionError
from inlets_py.provisioner.providers import vultr
from inlets_py.provisioner.providers.vultr import VultrProvider

GROUP = "cb676a46-66fd-4dfb-b839-443f2e6c0b60"
NOT_FOUND = Answer(404, {"error": "invalid instance ID", "status": 404})


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    server.route("POST", "/v2/firewalls", Answer(201, recorded("vultr", "firewall_group_create.json")))
    server.route("POST", f"/v2/firewalls/{GROUP}/rules", Answer(201, recorded("vultr", "firewall_rule_create.json")))
    server.route("DELETE", f"/v2/firewalls/{GROUP}", Answer(204))
    server.route("POST", "/v2/instances", Answer(202, libcloud_fixture("vultr_v2", "create_node.json")))
    server.route("GET", "/v2/instances", Answer(200, libcloud_fixture("vultr_v2", "list_nodes.json")))
    server.route("DELETE", "/v2/instances/123", Answer(204))
    yield server
    server.close()


def provider(api: RecordedAPI) -> VultrProvider:
    return VultrProvider("K" * 36, parse_api_url("vultr", api.url, "VULTR_API_URL"))


def test_create_sends_user_data_tag_and_exact_firewall(api: RecordedAPI, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ports="22,80,443", region="ams", size="vc2-1c-2gb")
    host = provider(api).create(plan)
    assert host.id == "123"
    (create,) = api.requests("POST", "/v2/instances")
    body = create.json
    assert base64.b64decode(body["user_data"]).decode() == plan.user_data
    assert body["tag"] == "inlets" and body["label"] == "rec-check" and body["firewall_group_id"] == GROUP
    assert body["region"] == "ams" and body["plan"] == "vc2-1c-2gb" and body["os_id"] == "2284"
    assert create.headers["Authorization"] == "Bearer " + "K" * 36
    rules = [r.json for r in api.requests("POST", f"/v2/firewalls/{GROUP}/rules")]
    assert sorted((r["port"], r["ip_type"], r["subnet"], r["subnet_size"]) for r in rules) == sorted(
        (str(p), t, s, 0) for p in (22, 80, 443, 8123) for t, s in (("v4", "0.0.0.0"), ("v6", "::"))
    )
    assert all(r["protocol"] == "tcp" for r in rules)
    assert api.unrouted() == []


def test_http_mode_opens_80_443_and_control(api: RecordedAPI, tmp_path: Path) -> None:
    provider(api).create(make_plan(tmp_path, mode="http"))
    ports = {r.json["port"] for r in api.requests("POST", f"/v2/firewalls/{GROUP}/rules")}
    assert ports == {"80", "443", "8123"}


def in_group(api: RecordedAPI, description: str) -> None:
    """Instance 123 (libcloud's recording) sits in firewall group ``GROUP`` (the SDK's), described so."""
    with_group = json.loads(libcloud_fixture("vultr_v2", "ex_get_node.json"))
    with_group["instance"]["firewall_group_id"] = GROUP  # the recorded instance had none
    api.route("GET", "/v2/instances/123", [Answer(200, with_group), Answer(200, with_group), NOT_FOUND])
    group = json.loads(recorded("vultr", "firewall_group_create.json"))
    group["firewall_group"]["description"] = description
    api.route("GET", f"/v2/firewalls/{GROUP}", Answer(200, group))


def test_status_list_and_delete_remove_the_firewall(api: RecordedAPI) -> None:
    in_group(api, "inlets-test")  # made for the recorded instance, labelled "test"
    p = provider(api)
    host = p.status("123")
    assert host.status == "active" and host.ip == "45.76.36.72"
    listed = p.list()
    assert [h.id for h in listed] and api.requests("GET", "/v2/instances")[0].query["tag"] == ["inlets"]
    p.poll_interval = 0.01
    p.delete("123")
    assert api.requests("DELETE", "/v2/instances/123") and api.requests("DELETE", f"/v2/firewalls/{GROUP}")
    with pytest.raises(NotFound):
        p.status("123")


def test_delete_leaves_a_firewall_group_inletsctl_did_not_make(api: RecordedAPI) -> None:
    """An instance moved into a group shared with other instances: the instance goes, the group stays."""
    in_group(api, "my firewall group")  # the SDK's recorded description
    p = provider(api)
    p.poll_interval = 0.01
    p.delete("123")
    assert api.requests("DELETE", "/v2/instances/123") and api.requests("GET", f"/v2/firewalls/{GROUP}")
    assert not api.requests("DELETE", f"/v2/firewalls/{GROUP}")


@pytest.mark.parametrize("description", ["inlets-other-server", "inlets-tes"])
def test_delete_leaves_the_firewall_group_of_another_exit_server(api: RecordedAPI, description: str) -> None:
    """Any group described ``inlets-*`` was deleted with the instance in it: an exit server moved into the group of
    another ("inlets-other-server", or one whose name is this one's cut short) left that one unprotected. Only the
    group made for this instance (``inlets-test``, firewall.firewall_name) goes now."""
    in_group(api, description)
    p = provider(api)
    p.poll_interval = 0.01
    p.delete("123")
    assert api.requests("DELETE", "/v2/instances/123") and api.requests("GET", f"/v2/firewalls/{GROUP}")
    assert not api.requests("DELETE", f"/v2/firewalls/{GROUP}")


def test_a_failed_create_removes_its_firewall(api: RecordedAPI, tmp_path: Path) -> None:
    api.routes.insert(0, ("POST", __import__("re").compile("/v2/instances"),
                          Answer(400, {"error": "Invalid plan chosen.", "status": 400})))
    with pytest.raises(ProvisionError, match="Invalid plan chosen"):
        provider(api).create(make_plan(tmp_path))
    assert api.requests("DELETE", f"/v2/firewalls/{GROUP}")


def test_a_failed_create_whose_firewall_cannot_go_either_says_why_the_create_failed(
    api: RecordedAPI, tmp_path: Path
) -> None:
    """The firewall group's removal failed too (a 500): its error replaced the create's, so a user who gave a bad
    --region read "deleting firewall group ... failed (500) ... try again later" instead of "Invalid region"."""
    api.routes.insert(0, ("POST", __import__("re").compile("/v2/instances"),
                          Answer(400, {"error": "Invalid region: xxx", "status": 400})))
    api.routes.insert(0, ("DELETE", __import__("re").compile(f"/v2/firewalls/{GROUP}"),
                          Answer(500, {"error": "Internal error", "status": 500})))
    with pytest.raises(ProvisionError, match="Invalid region") as info:
        provider(api).create(make_plan(tmp_path))
    assert "firewall" not in str(info.value)
    assert api.requests("DELETE", f"/v2/firewalls/{GROUP}")


def test_rejected_key_is_one_line(api: RecordedAPI, tmp_path: Path) -> None:
    api.routes.insert(0, ("POST", __import__("re").compile("/v2/firewalls"),
                          Answer(401, {"error": "Invalid API token.", "status": 401})))
    with pytest.raises(ProvisionError, match="credentials rejected.*Invalid API token") as info:
        provider(api).create(make_plan(tmp_path))
    assert "\n" not in str(info.value)


class Groups:
    """Vultr's firewall groups, kept as the API keeps them: made by POST, listed in pages of two, gone by DELETE
    (``failing`` DELETEs answer 500 first, as an API in trouble does)."""

    def __init__(self, api: RecordedAPI, failing: int = 0) -> None:
        self.groups: dict[str, dict[str, object]] = {}
        self.failing = failing
        api.routes[:0] = [("POST", re.compile("/v2/firewalls"), self.create), ("GET", re.compile("/v2/firewalls"), self.list),
                          ("DELETE", re.compile("/v2/firewalls/[^/]+"), self.delete),
                          ("POST", re.compile("/v2/firewalls/[^/]+/rules"),
                           Answer(201, recorded("vultr", "firewall_rule_create.json")))]

    def create(self, seen: Seen) -> Answer:
        group = {"id": f"g{len(self.groups)}", "description": seen.json["description"], "instance_count": 0}
        self.groups[str(group["id"])] = group
        return Answer(201, {"firewall_group": group})

    def list(self, seen: Seen) -> Answer:
        start = int((seen.query.get("cursor") or ["0"])[0])
        page = list(self.groups.values())[start:start + 2]
        following = str(start + 2) if start + 2 < len(self.groups) else ""
        return Answer(200, {"firewall_groups": page, "meta": {"links": {"next": following}}})

    def delete(self, seen: Seen) -> Answer:
        if self.failing:
            self.failing -= 1
            return Answer(500, {"error": "Internal error", "status": 500})
        self.groups.pop(seen.path.rsplit("/", 1)[1], None)
        return Answer(204)

    def made(self, description: str, instances: int = 0) -> None:
        """A group of the user's, made in Vultr's console."""
        self.groups[f"g{len(self.groups)}"] = {"id": f"g{len(self.groups)}", "description": description,
                                              "instance_count": instances}


NO_INSTANCES = Answer(200, {"instances": [], "meta": {"links": {"next": ""}}})


def test_delete_by_name_never_deletes_a_group_of_the_users_described_inlets_name(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``delete NAME --provider vultr`` with no exit server of that name deleted any unused group described exactly
    inlets-NAME, the user's own among them (Vultr groups take no tags): it stays now, named by its id."""
    monkeypatch.setenv("VULTR_API_KEY", "K" * 36)
    api.routes.insert(0, ("GET", re.compile("/v2/instances"), NO_INSTANCES))
    groups = Groups(api)
    groups.made("inlets-mysite")
    groups.made("inlets-mysite 0123abcd")  # another machine's inletsctl, whose create may be under way
    result = run_cli(capsys, "delete", "mysite", "--provider", "vultr", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 1 and not api.requests("DELETE")
    assert sorted(g["description"] for g in groups.groups.values()) == ["inlets-mysite", "inlets-mysite 0123abcd"]
    assert "left firewall group g0 ('inlets-mysite'), unused: inletsctl has no record of making it" in result.err
    assert "vultr-cli firewall group delete g1" in result.err and len(result.err.splitlines()) == 1


def test_delete_after_a_create_cut_short_deletes_only_the_group_it_made(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A create cut short after its group's POST (here: the instance's POST failed, and so did the group's DELETE)
    leaves the group; ``delete NAME`` deletes it by the marker create recorded before the POST. The user's group
    described inlets-NAME, one in use and another server's stay."""
    monkeypatch.setenv("VULTR_API_KEY", "K" * 36)
    api.routes.insert(0, ("POST", re.compile("/v2/instances"), Answer(500, {"error": "Internal error", "status": 500})))
    api.routes.insert(0, ("GET", re.compile("/v2/instances"), NO_INSTANCES))
    groups = Groups(api, failing=2)  # create's own clean-up and its second look both fail
    groups.made("inlets-cut")
    groups.made("inlets-cutter")
    result = run_cli(capsys, "create", "cut", "--provider", "vultr", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 1 and "delete cut" in result.err
    (marker,) = (tmp_path / "cut" / vultr.MARKERS).read_text().split()
    made = next(g for g in groups.groups.values() if g["description"] != "inlets-cut" and "cutter" not in str(g["description"]))
    assert made["description"] == f"inlets-cut {marker}" and re.fullmatch("[0-9a-f]{8}", marker)
    groups.made(f"inlets-cut {marker}", instances=1)  # in use: stays whatever its description
    result = run_cli(capsys, "delete", "cut", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    assert result.out.startswith(f"vultr has no exit server named cut; deleted its firewall group inlets-cut {marker}; "
                                 f"left firewall group g0 ('inlets-cut')")
    assert made["id"] not in groups.groups and len(groups.groups) == 3 and not (tmp_path / "cut").exists()


def test_a_create_refused_whose_group_cannot_go_keeps_the_marker_for_delete(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance's POST refused (a 400: bad region) and create's own removal of its group failed (a 500): the
    local state, whose marker alone shows the group is inletsctl's, was removed with it, so the group was left for
    good (``delete NAME``: "inletsctl has no record of making it"). It is looked for again, and deleted, now."""
    monkeypatch.setenv("VULTR_API_KEY", "K" * 36)
    api.routes.insert(0, ("POST", re.compile("/v2/instances"), Answer(400, {"error": "Invalid region: xxx", "status": 400})))
    api.routes.insert(0, ("GET", re.compile("/v2/instances"), NO_INSTANCES))
    groups = Groups(api, failing=1)  # create's own clean-up fails
    result = run_cli(capsys, "create", "cut", "--provider", "vultr", "--api-url", api.url, "--state-dir", str(tmp_path))
    said = result.err.splitlines()[-1]
    assert result.code == 1 and "Invalid region: xxx" in said
    assert not groups.groups, run_cli(capsys, "delete", "cut", "--provider", "vultr", "--api-url", api.url,
                                      "--state-dir", str(tmp_path)).err  # deleted on the second look
    assert "deleted its firewall group inlets-cut " in said and not (tmp_path / "cut").exists()
    groups.failing = 2  # and when that fails too, the state (its marker) stays for delete NAME
    result = run_cli(capsys, "create", "cut", "--provider", "vultr", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 1 and "Invalid region: xxx" in result.err and "delete cut" in result.err
    assert len(groups.groups) == 1 and (tmp_path / "cut" / vultr.MARKERS).exists()
    groups.failing = 0
    result = run_cli(capsys, "delete", "cut", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 0 and "deleted its firewall group inlets-cut " in result.out, result.err
    assert not groups.groups
