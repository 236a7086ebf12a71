"""Scaleway: the official scaleway SDK makes real HTTP requests to a loopback server that
replays the VCR cassettes recorded against the real Instance API and shipped in the SDK's
own sdist (create server, get, set user-data, list, delete). Security-group and
server-action answers are hand-written (no recording of them exists; recorded/README.md).
Scaleway's OpenAPI documents are published on its website only, so Prism is not used.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, cassette, make_plan, recorded, write_state
from helpers.prov_support import one_line_error, run_cli
from inlets_py.provisioner.errors import NotFound, ProvisionError
from inlets_py.provisioner.providers.scaleway import ScalewayProvider

ZONE = "/instance/v1/zones/fr-par-1"
PROJECT = "11111111-1111-1111-1111-111111111111"
NEW = "07626ecf-f52e-43b6-b098-70f435b155e8"  # the server test_create_new_server recorded
OLD = "66a3b25b-4518-43c3-9e61-33b82873d617"  # the one server.cassette recorded
SG = "0a1b2c3d-0000-4000-8000-000000000001"
VOLUME = "bda6aff6-7ca2-41de-a3fb-47be986c5c0a"  # the l_ssd root volume of the server server.cassette recorded


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    for name in ("test_create_new_server.cassette.yaml", "server.cassette.yaml", "test_list_server.cassette.yaml"):
        for method, path, answer in cassette("scaleway", name):
            if method != "GET" or path != f"{ZONE}/servers":
                server.route(method, re.escape(path), answer)
    ((_, _, listed),) = cassette("scaleway", "test_list_server.cassette.yaml")
    server.route("GET", f"{ZONE}/servers", listed)
    # list asks every zone: the others hold nothing (hand-written, in the recorded list's shape)
    server.route("GET", "/instance/v1/zones/[a-z0-9-]+/servers", Answer(200, {"servers": [], "total_count": 0}))
    ((_, _, set_data), _) = cassette("scaleway", "test_set_and_get_server_user_data.cassette.yaml")
    server.route("PATCH", f"{ZONE}/servers/[-0-9a-f]+/user_data/cloud-init", set_data)
    server.route("POST", f"{ZONE}/security_groups", Answer(201, recorded("scaleway", "handwritten_security_group_create.json")))
    server.route("POST", f"{ZONE}/security_groups/{SG}/rules", Answer(201, recorded("scaleway", "handwritten_security_group_rule_create.json")))
    server.route("DELETE", f"{ZONE}/security_groups/{SG}", Answer(204))
    server.route("DELETE", f"{ZONE}/volumes/{VOLUME}", Answer(204))  # hand-written: the API answers 204, no body
    server.route("POST", f"{ZONE}/servers/[-0-9a-f]+/action", Answer(202, recorded("scaleway", "handwritten_server_action.json")))
    yield server
    server.close()


def provider(api: RecordedAPI) -> ScalewayProvider:
    p = ScalewayProvider("SCWXXXXXXXXXXXXXXXXX", "00000000-0000-4000-8000-00000000000a", PROJECT, api.url)
    p.poll_interval = 0.01
    return p


def test_create_sets_cloud_init_then_powers_on_behind_its_own_group(api: RecordedAPI, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ports="22,80,443")
    host = provider(api).create(plan)
    assert host.id == f"fr-par-1/{NEW}"
    (sg,) = api.requests("POST", f"{ZONE}/security_groups")
    assert sg.json["inbound_default_policy"] == "drop" and sg.json["name"] == "inlets-rec-check"
    rules = [r.json for r in api.requests("POST", f"{ZONE}/security_groups/{SG}/rules")]
    assert sorted((r["dest_port_from"], r["ip_range"]) for r in rules) == sorted(
        (p, ip) for p in (22, 80, 443, 8123) for ip in ("0.0.0.0/0", "::/0"))
    assert all(r["protocol"].upper() == "TCP" and r["direction"] == "inbound" and r["action"] == "accept" for r in rules)
    (create,) = api.requests("POST", f"{ZONE}/servers")
    assert create.json["tags"] == ["inlets", "inlets-mode:tcp", "inlets-expires:1893553445"]
    assert create.json["security_group"] == SG and create.json["image"] == "ubuntu_noble"
    assert create.json["commercial_type"] == "DEV1-S" and create.json["project"] == PROJECT
    (data,) = api.requests("PATCH", f"{ZONE}/servers/{NEW}/user_data/cloud-init")
    assert data.raw.decode() == plan.user_data and data.headers["Content-Type"] == "text/plain"
    (action,) = api.requests("POST", f"{ZONE}/servers/{NEW}/action")
    assert action.json["action"] == "poweron"
    order = [s.method + " " + s.path.rsplit("/", 1)[-1] for s in api.seen]
    assert order.index("PATCH cloud-init") < order.index("POST action")  # user-data before the first boot
    assert {k.lower(): v for k, v in create.headers.items()}["x-auth-token"] == "00000000-0000-4000-8000-00000000000a"
    assert api.unrouted() == []


def test_status_list_by_tag_and_delete(api: RecordedAPI) -> None:
    p = provider(api)
    host = p.status(f"fr-par-1/{OLD}")
    assert host.status == "stopped" and host.name == "test-sdk-python-fixture"
    assert p.list() and api.requests("GET", f"{ZONE}/servers")[0].query["tags"] == ["inlets"]
    recorded_get = [a for m, path, a in cassette("scaleway", "server.cassette.yaml") if m == "GET"][0]
    body = json.loads(recorded_get.body)
    body["server"]["security_group"] = {"id": SG, "name": "inlets-test-sdk-python-fixture"}  # made for it
    body["server"]["state"] = "running"  # the recording's server is stopped: see the next test for that case
    api.routes.insert(0, ("GET", re.compile(re.escape(f"{ZONE}/servers/{OLD}")),
                          [Answer(200, body), Answer(404, {"type": "unknown_resource", "message": "resource is not found"})]))
    p.delete(f"fr-par-1/{OLD}")
    assert api.requests("POST", f"{ZONE}/servers/{OLD}/action")[0].json["action"] == "terminate"
    assert api.requests("DELETE", f"{ZONE}/security_groups/{SG}")
    with pytest.raises(NotFound):
        p.status(f"fr-par-1/{OLD}")


def test_refused_create_cleans_up_with_one_line(api: RecordedAPI, tmp_path: Path) -> None:
    api.routes.insert(0, ("POST", re.compile(f"{ZONE}/servers"), Answer(400, {
        "type": "invalid_arguments", "message": "commercial type DEV1-NOPE is not available"})))
    with pytest.raises(ProvisionError, match=r"\(400\): commercial type DEV1-NOPE") as info:
        provider(api).create(make_plan(tmp_path, size="DEV1-NOPE"))
    assert "\n" not in str(info.value) and api.requests("DELETE", f"{ZONE}/security_groups/{SG}")


def test_delete_leaves_a_shared_security_group_whose_name_merely_starts_with_inlets(api: RecordedAPI) -> None:
    """The server's security group was deleted whenever its name began ``inlets-``: one the user shares between
    servers ("inlets-office", not made by inletsctl) went too. Only ``inlets-NAME`` goes now."""
    recorded_get = [a for m, path, a in cassette("scaleway", "server.cassette.yaml") if m == "GET"][0]
    body = json.loads(recorded_get.body)
    body["server"]["security_group"] = {"id": SG, "name": "inlets-office"}
    body["server"]["state"] = "running"
    api.routes.insert(0, ("GET", re.compile(re.escape(f"{ZONE}/servers/{OLD}")),
                          [Answer(200, body), Answer(404, {"type": "unknown_resource", "message": "resource is not found"})]))
    provider(api).delete(f"fr-par-1/{OLD}")
    assert api.requests("POST", f"{ZONE}/servers/{OLD}/action") and not api.requests("DELETE", f"{ZONE}/security_groups/{SG}")


def test_list_looks_in_every_zone(api: RecordedAPI) -> None:
    """list asked only the default zone (fr-par-1 or $SCW_DEFAULT_ZONE): a server made with --region nl-ams-1 was
    missing, so inletsctl list called it "absent" while it ran (and billed), and delete --id refused it."""
    ((_, _, listed),) = cassette("scaleway", "test_list_server.cassette.yaml")
    body = json.loads(listed.body)
    for server in body["servers"]:
        server["zone"] = "nl-ams-1"
    api.routes.insert(0, ("GET", re.compile("/instance/v1/zones/nl-ams-1/servers"), Answer(200, body)))
    hosts = provider(api).list()
    assert any(h.id.startswith("nl-ams-1/") for h in hosts) and any(h.id.startswith("fr-par-1/") for h in hosts)
    assert all(s.query["tags"] == ["inlets"] for s in api.requests("GET", "/instance/v1/zones/[a-z0-9-]+/servers"))
    assert api.unrouted() == []


def _stopped_then_gone(api: RecordedAPI) -> None:
    recorded_get = [a for m, path, a in cassette("scaleway", "server.cassette.yaml") if m == "GET"][0]
    assert json.loads(recorded_get.body)["server"]["state"] == "stopped"
    api.routes.insert(0, ("GET", re.compile(re.escape(f"{ZONE}/servers/{OLD}")),
                          [recorded_get, Answer(404, {"type": "unknown_resource", "message": "resource is not found"})]))


def test_delete_of_a_stopped_server_deletes_it_and_its_volumes(api: RecordedAPI) -> None:
    """A stopped server (powered off by --ttl, or by hand) was sent the terminate action, which the Instance API
    refuses for a server that is not running, so delete (and list --prune) failed on it. Now it is deleted,
    then its volumes, which deleting a server keeps (and bills)."""
    _stopped_then_gone(api)
    provider(api).delete(f"fr-par-1/{OLD}")
    assert not api.requests("POST", f"{ZONE}/servers/{OLD}/action")
    assert api.requests("DELETE", f"{ZONE}/servers/{OLD}") and api.requests("DELETE", f"{ZONE}/volumes/{VOLUME}")


def test_a_create_failing_after_the_server_deletes_its_root_volume_too(api: RecordedAPI, tmp_path: Path) -> None:
    """A create that failed after the server was made (setting user-data refused, or Ctrl-C) deleted the server
    but left its root volume, detached and billed. Now the volume goes with it."""
    (created,) = [a for m, path, a in cassette("scaleway", "server.cassette.yaml") if m == "POST"]
    api.routes.insert(0, ("POST", re.compile(f"{ZONE}/servers"), created))
    api.routes.insert(0, ("PATCH", re.compile(f"{ZONE}/servers/{OLD}/user_data/cloud-init"),
                          Answer(500, {"type": "internal_error", "message": "internal error"})))
    with pytest.raises(ProvisionError, match="internal error"):
        provider(api).create(make_plan(tmp_path))
    assert api.requests("DELETE", f"{ZONE}/servers/{OLD}") and api.requests("DELETE", f"{ZONE}/volumes/{VOLUME}")
    assert api.requests("DELETE", f"{ZONE}/security_groups/{SG}")


def test_an_api_that_stops_answering_is_given_up_on_within_the_timeout(api: RecordedAPI) -> None:
    """The SDK sent every request without a timeout: `inletsctl create --provider scaleway --timeout 5` against an
    API that accepted the connection and never answered was still waiting, silent, 45 s later."""
    def silent(seen: object) -> Answer:
        time.sleep(3)
        return Answer(404, {"message": "resource is not found", "type": "not_found"})

    api.routes.insert(0, ("GET", re.compile("/instance/v1/zones/fr-par-1/servers/.*"), silent))
    slow = ScalewayProvider("SCWXXXXXXXXXXXXXXXXX", "00000000-0000-4000-8000-00000000000a", PROJECT, api.url, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="no answer in time"):
        slow.status("fr-par-1/11111111-1111-4111-8111-111111111111")
    assert time.monotonic() - started < 2.5


def test_rejected_keys_name_where_both_came_from(api: RecordedAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A 401 named only the secret key's source; the access key ($SCW_ACCESS_KEY) may as well be the wrong one."""
    monkeypatch.setenv("SCW_ACCESS_KEY", "SCWXXXXXXXXXXXXXXXXX")
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", PROJECT)
    monkeypatch.delenv("SCW_SECRET_KEY", raising=False)
    key = tmp_path / "scw-secret"
    key.write_text("00000000-0000-4000-8000-00000000000a\n")
    key.chmod(0o600)
    api.routes.insert(0, ("GET", re.compile(".*"), Answer(401, {"message": "authentication is denied", "method": "api_key",
                                                                "reason": "invalid_argument", "type": "denied_authentication"})))
    result = run_cli(capsys, "list", "--provider", "scaleway", "--access-token-file", str(key), "--api-url", api.url,
                     "--state-dir", str(tmp_path / "state"))
    one_line_error(result, f"scaleway: access key ($SCW_ACCESS_KEY) and secret key (--access-token-file {key}) rejected (401)")


def test_a_security_group_that_cannot_be_deleted_keeps_the_state_for_the_next_delete(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The group's DELETE was refused (a 409) after the server was gone: delete said "deleted", exit 0, and removed
    the state, leaving the group inlets-NAME unlisted. Now it fails in one line, and the next delete removes it."""
    for variable, value in (("SCW_SECRET_KEY", "00000000-0000-4000-8000-00000000000a"),
                            ("SCW_ACCESS_KEY", "SCWXXXXXXXXXXXXXXXXX"), ("SCW_DEFAULT_PROJECT_ID", PROJECT)):
        monkeypatch.setenv(variable, value)
    name = "test-sdk-python-fixture"
    write_state(tmp_path, name, "scaleway", f"fr-par-1/{OLD}")
    recorded_get = [a for m, path, a in cassette("scaleway", "server.cassette.yaml") if m == "GET"][0]
    body = json.loads(recorded_get.body)
    body["server"]["security_group"] = {"id": SG, "name": f"inlets-{name}"}
    body["server"]["state"] = "running"
    gone = Answer(404, {"type": "unknown_resource", "message": "resource is not found"})
    api.routes.insert(0, ("GET", re.compile(re.escape(f"{ZONE}/servers/{OLD}")), [Answer(200, body), gone]))
    api.routes.insert(0, ("DELETE", re.compile(f"{ZONE}/security_groups/{SG}"),
                          [Answer(409, {"type": "conflict", "message": "group is in use by a server"}), Answer(204)]))
    group = json.loads(recorded("scaleway", "handwritten_security_group_create.json"))["security_group"]
    api.route("GET", f"{ZONE}/security_groups", Answer(200, {"security_groups": [group | {"name": f"inlets-{name}"}]}))
    api.route("GET", "/instance/v1/zones/[a-z0-9-]+/security_groups", Answer(200, {"security_groups": []}))
    where = ("--api-url", api.url, "--state-dir", str(tmp_path))
    failed = run_cli(capsys, "delete", name, *where)
    one_line_error(failed, f"deleting security group inlets-{name} in fr-par-1 failed (409)", "in use")
    assert (tmp_path / name / "server.json").exists()
    again = run_cli(capsys, "delete", name, *where)
    assert again.code == 0 and f"deleted its security group inlets-{name} (fr-par-1)" in again.out, again
    assert len(api.requests("DELETE", f"{ZONE}/security_groups/{SG}")) == 2 and not (tmp_path / name).exists()
    assert api.requests("GET", f"{ZONE}/security_groups")[0].query["tags"] == ["inlets"]
