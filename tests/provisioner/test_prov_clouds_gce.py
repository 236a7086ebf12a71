"""GCE: libcloud's GCE driver signs a real service-account JWT and makes real HTTP requests
(token, firewall, instance insert, operation polling, get, aggregated list, delete) to a
loopback server answering with libcloud's own recorded GCE fixtures, looked up by
libcloud's naming of them (path with "/" as "_", "_post"/"_delete" for those methods).
The OAuth2 token answer is the only hand-written one (RFC 6749 section 5.1's documented
shape: libcloud's suite records none). Google publishes a discovery document, not an
OpenAPI one in a registry package, so Prism is not used here.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import LIBCLOUD_FIXTURES, Answer, RecordedAPI, Seen, gce_service_account_key, make_plan
from helpers.prov_support import one_line_error, run_cli
from inlets_py.provisioner.providers.api_url import parse_api_url
from inlets_py.provisioner.errors import NotFound, ProvisionError
from inlets_py.provisioner.firewall import firewall_name
from inlets_py.provisioner.providers.gce import KEY_ENV, GCEProvider, service_account, token_cache_name

PROJECT = "project_name"  # the project libcloud's fixtures were recorded with
PREFIX = f"/compute/v1/projects/{PROJECT}/"
#: names our requests use -> the names in libcloud's recordings
RENAME = {"rec-check": "node-name", "inlets-rec-check": "lcfirewall"}


def _fixture_answer(seen: Seen) -> Answer:
    rest = seen.path[len(PREFIX):]
    for ours, theirs in RENAME.items():
        rest = re.sub(rf"(^|/){re.escape(ours)}($|/)", rf"\g<1>{theirs}\g<2>", rest)
    if "/operations/" in rest:
        name = "operations_" + rest.split("/operations/", 1)[1].replace("operation-", "operation_", 1)
    else:
        name = rest.replace("/", "_") + {"POST": "_post", "DELETE": "_delete"}.get(seen.method, "")
    path = LIBCLOUD_FIXTURES / "gce" / f"{name}.json"
    if not path.exists():
        return Answer(599, {"error": f"no libcloud GCE fixture {path.name}"})
    return Answer(200, path.read_bytes())


@pytest.fixture(scope="module")
def key_json() -> str:
    return gce_service_account_key(PROJECT)


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    server.route("POST", "/o/oauth2/token", Answer(200, {"access_token": "ya29.test", "token_type": "Bearer", "expires_in": 3600}))
    for method in ("GET", "POST", "DELETE"):
        server.route(method, re.escape(PREFIX) + ".*", _fixture_answer)
    yield server
    server.close()


def provider(api: RecordedAPI, key_json: str, tmp_path: Path) -> GCEProvider:
    return GCEProvider(service_account(None, key_json), tmp_path / "state", parse_api_url("gce", api.url, "GCE_API_URL"))


def test_create_sends_user_data_labels_tag_and_exact_firewall(api: RecordedAPI, key_json: str, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ports="22,80,443", region="us-central1-a")
    host = provider(api, key_json, tmp_path).create(plan)
    assert host.id == "us-central1-a/rec-check" and host.name == "node-name"  # the recording answers for ours
    (token,) = api.requests("POST", "/o/oauth2/token")
    assert b"grant_type=urn" in token.raw and b"assertion=" in token.raw  # a signed JWT, really sent
    (fw,) = api.requests("POST", PREFIX + "global/firewalls")
    assert fw.json["allowed"] == [{"IPProtocol": "tcp", "ports": ["22", "80", "443", "8123"]}]
    assert fw.json["sourceRanges"] == ["0.0.0.0/0"] and fw.json["targetTags"] == ["inlets-rec-check"]
    (create,) = api.requests("POST", PREFIX + "zones/us-central1-a/instances")
    body = create.json
    assert {"key": "user-data", "value": plan.user_data} in body["metadata"]["items"]
    assert body["labels"] == {"inlets": "true", "inlets-mode": "tcp", "inlets-expires": "1893553445"}
    assert body["tags"]["items"] == ["inlets-rec-check"]
    assert body["machineType"].endswith("/zones/us-central1-a/machineTypes/e2-small")
    assert body["disks"][0]["initializeParams"]["sourceImage"].endswith("ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64")
    assert create.headers["Authorization"] == "Bearer ya29.test"
    assert api.requests("GET", PREFIX + "zones/us-central1-a/operations/.*")  # the insert operation was polled
    assert all(s.path.startswith(("/o/oauth2/token", PREFIX)) for s in api.seen)
    assert not [s for s in api.seen if "599" in s.path]


def test_a_long_name_gets_a_firewall_rule_name_gce_takes(api: RecordedAPI, key_json: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``inlets-NAME`` cut at 63 ended in a hyphen here ("inlets-...-"), which GCE's [a-z]([-a-z0-9]*[a-z0-9])? refuses
    for the rule and the network tag; and two names with these first 56 characters shared one rule."""
    name = "a" * 55 + "-build-7"  # 63 characters
    monkeypatch.setitem(RENAME, name, "node-name")
    monkeypatch.setitem(RENAME, firewall_name(name), "lcfirewall")
    provider(api, key_json, tmp_path).create(replace(make_plan(tmp_path, region="us-central1-a"), name=name))
    (fw,) = api.requests("POST", PREFIX + "global/firewalls")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", fw.json["name"]) and len(fw.json["name"]) <= 63
    assert fw.json["targetTags"] == [fw.json["name"]] and fw.json["name"] == firewall_name(name)
    assert api.requests("POST", PREFIX + "zones/.*/instances")[0].json["tags"]["items"] == [fw.json["name"]]


def test_http_mode_opens_80_443_and_control(api: RecordedAPI, key_json: str, tmp_path: Path) -> None:
    provider(api, key_json, tmp_path).create(make_plan(tmp_path, mode="http", region="us-central1-a"))
    assert api.requests("POST", PREFIX + "global/firewalls")[0].json["allowed"][0]["ports"] == ["80", "443", "8123"]


def test_status_list_and_delete_remove_the_firewall(api: RecordedAPI, key_json: str, tmp_path: Path) -> None:
    p = provider(api, key_json, tmp_path)
    host = p.status("us-central1-a/node-name")
    assert host.status == "active" and host.ip
    hosts = p.list()
    assert hosts and api.requests("GET", PREFIX + "aggregated/instances")[0].query["filter"] == ["labels.inlets=true"]
    recorded = json.loads((LIBCLOUD_FIXTURES / "gce" / "zones_us-central1-a_instances_node-name.json").read_text())
    recorded["tags"] = {"items": ["inlets-node-name"]}  # as create tags it
    api.routes.insert(0, ("GET", re.compile(re.escape(PREFIX) + "zones/us-central1-a/instances/node-name"), Answer(200, recorded)))
    RENAME["inlets-node-name"] = "lcfirewall"
    try:
        p.delete("us-central1-a/node-name")
    finally:
        del RENAME["inlets-node-name"]
    assert api.requests("DELETE", PREFIX + "zones/us-central1-a/instances/node-name")
    assert api.requests("DELETE", PREFIX + "global/firewalls/inlets-node-name")


def test_not_found_and_bad_keys_are_one_line(api: RecordedAPI, key_json: str, tmp_path: Path) -> None:
    p = provider(api, key_json, tmp_path)
    api.routes.insert(0, ("GET", re.compile(re.escape(PREFIX) + "zones/us-central1-a/instances/gone"),
                          Answer(404, {"error": {"code": 404, "message": "The resource was not found"}})))
    with pytest.raises(NotFound):
        p.status("us-central1-a/gone")
    with pytest.raises(ProvisionError, match="not a service-account JSON key"):
        service_account(None, "{}")
    for broken in ("not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"):
        with pytest.raises(ProvisionError, match="is not a PEM private key .* download the service account's JSON key again"):
            service_account(None, json.dumps({**json.loads(key_json), "private_key": broken}))
    with pytest.raises(ProvisionError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        service_account(None, None)


@pytest.mark.parametrize("given", ["flag", "env"])
def test_a_rejected_key_names_where_it_was_read(api: RecordedAPI, key_json: str, tmp_path: Path, given: str,
                                                capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A 401 read "gce: credentials rejected (401)": not which key file, nor whether a flag or $GOOGLE_APPLICATION_CREDENTIALS
    gave it."""
    key = tmp_path / "key.json"
    key.write_text(key_json)
    key.chmod(0o600)
    monkeypatch.delenv(KEY_ENV, raising=False)
    if given == "env":
        monkeypatch.setenv(KEY_ENV, str(key))
    api.routes.insert(0, ("GET", re.compile(".*"), Answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                                          "message": "Request had invalid credentials."}})))
    result = run_cli(capsys, "list", "--provider", "gce", *(["--access-token-file", str(key)] if given == "flag" else []),
                     "--api-url", api.url, "--state-dir", str(tmp_path / "state"))
    source = f"--access-token-file {key}" if given == "flag" else f"${KEY_ENV}={key}"
    one_line_error(result, f"gce: service-account key ({source}) rejected (401) while listing instances")


@pytest.mark.parametrize("cached", ["none", "expired"])
def test_a_key_the_sign_in_refuses_is_reported_as_a_rejected_key(api: RecordedAPI, key_json: str, tmp_path: Path,
                                                                 cached: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Google's token endpoint refuses a deleted key (or one signed by a machine whose clock is off) with OAuth2's 400
    invalid_grant, not a 401: it read "signing in with the service account failed (400): Invalid JWT Signature.",
    naming neither the key nor that it was refused. With an expired token cached by an earlier run, libcloud signed in
    again inside the first call, and it read "listing instances failed (400)"."""
    key = tmp_path / "key.json"
    key.write_text(key_json)
    key.chmod(0o600)
    state = tmp_path / "state"
    if cached == "expired":  # as libcloud caches a token (under --state-dir), an hour old
        state.mkdir(mode=0o700)
        (state / token_cache_name(service_account(None, key_json))).write_text(json.dumps(
            {"access_token": "ya29.old", "token_type": "Bearer", "expires_in": 3600, "expire_time": "2026-01-01T00:00:00Z"}))
    api.routes.insert(0, ("POST", re.compile("/o/oauth2/token"),
                          Answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})))
    result = run_cli(capsys, "list", "--provider", "gce", "--access-token-file", str(key),
                     "--api-url", api.url, "--state-dir", str(state))
    one_line_error(result, f"gce: service-account key (--access-token-file {key}) rejected (400) while "
                           "signing in with the service account: Invalid JWT Signature.; check them")
    assert len(api.requests("POST", "/o/oauth2/token")) == 1


def test_another_key_signs_in_with_itself_not_the_token_the_last_one_left(api: RecordedAPI, key_json: str,
                                                                          tmp_path: Path) -> None:
    """libcloud keeps the token between runs in --state-dir; it was one file per project, so a second key (another
    account, or one given the permission the first lacked) went on with the first key's token for up to an hour."""
    def token_for(seen: Seen) -> Answer:  # the token names the account whose signed JWT asked for it
        claims = urllib.parse.parse_qs(seen.raw.decode())["assertion"][0].split(".")[1]
        email = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["iss"]
        return Answer(200, {"access_token": f"ya29.{email}", "token_type": "Bearer", "expires_in": 3600})

    api.routes.insert(0, ("POST", re.compile("/o/oauth2/token"), token_for))
    other = json.loads(gce_service_account_key(PROJECT)) | {"client_email": f"other@{PROJECT}.iam.gserviceaccount.com"}
    for key in (key_json, json.dumps(other), key_json):
        provider(api, key, tmp_path).list()
    assert [s.headers["Authorization"] for s in api.requests("GET", PREFIX + "aggregated/instances")] == [
        f"Bearer ya29.inlets@{PROJECT}.iam.gserviceaccount.com", f"Bearer ya29.other@{PROJECT}.iam.gserviceaccount.com",
        f"Bearer ya29.inlets@{PROJECT}.iam.gserviceaccount.com"]
    assert len(api.requests("POST", "/o/oauth2/token")) == 2  # the first key's token was kept for its second run


def test_the_token_cache_is_private_and_one_others_may_write_is_not_used(api: RecordedAPI, key_json: str,
                                                                        tmp_path: Path) -> None:
    """libcloud rewrote its token file in place (a mode others could read kept) and read a token whoever wrote it."""
    cache = tmp_path / "state" / token_cache_name(service_account(None, key_json))
    old = os.umask(0o002)
    try:
        provider(api, key_json, tmp_path).list()
    finally:
        os.umask(old)
    assert (cache.stat().st_mode & 0o777, json.loads(cache.read_text())["access_token"]) == (0o600, "ya29.test")
    planted = {"access_token": "ya29.planted", "token_type": "Bearer", "expires_in": 3600,
               "expire_time": "2099-01-01T00:00:00Z"}
    cases = [(0o664, None)] + ([(0o644, 65534)] if os.geteuid() == 0 else [])
    for mode, owner in cases:
        cache.unlink()
        cache.write_text(json.dumps(planted))
        cache.chmod(mode)
        if owner is not None:
            os.chown(cache, owner, owner)
        provider(api, key_json, tmp_path).list()
        assert api.requests("GET", PREFIX + "aggregated/instances")[-1].headers["Authorization"] == "Bearer ya29.test"
        assert (cache.stat().st_mode & 0o777, cache.stat().st_uid) == (0o600, os.geteuid())  # made afresh
    cache.chmod(0o600)  # this user's own, as it wrote it: used, with no sign-in
    cache.write_text(json.dumps(planted))
    signed_in = len(api.requests("POST", "/o/oauth2/token"))
    provider(api, key_json, tmp_path).list()
    assert api.requests("GET", PREFIX + "aggregated/instances")[-1].headers["Authorization"] == "Bearer ya29.planted"
    assert len(api.requests("POST", "/o/oauth2/token")) == signed_in


def test_delete_of_an_instance_already_gone_still_removes_its_firewall_rule(api: RecordedAPI, key_json: str,
                                                                           tmp_path: Path) -> None:
    """An instance deleted in the console (or by a delete interrupted after the instance went) left its firewall
    rule behind for good: delete read the rule's name from the instance's tags, so a gone instance meant no rule
    deleted, and inletsctl only said it "was already gone". The rule create made is named after the instance and
    targets its tag: delete now removes it all the same, and still reports the instance gone."""
    api.routes.insert(0, ("GET", re.compile(re.escape(PREFIX) + "zones/us-central1-a/instances/gone"),
                          Answer(404, {"error": {"code": 404, "message": "The resource was not found"}})))
    rule = json.loads((LIBCLOUD_FIXTURES / "gce" / "global_firewalls_lcfirewall.json").read_text())
    rule |= {"name": "inlets-gone", "targetTags": ["inlets-gone"]}  # as create made it
    api.routes.insert(0, ("GET", re.compile(re.escape(PREFIX) + "global/firewalls/inlets-gone"), Answer(200, rule)))
    RENAME["inlets-gone"] = "lcfirewall"
    try:
        with pytest.raises(NotFound):
            provider(api, key_json, tmp_path).delete("us-central1-a/gone")
    finally:
        del RENAME["inlets-gone"]
    assert api.requests("DELETE", PREFIX + "global/firewalls/inlets-gone")
    assert not api.requests("DELETE", PREFIX + "zones/.*")


def test_delete_of_a_create_cut_short_before_an_instance_removes_its_firewall_rule(
    api: RecordedAPI, key_json: str, tmp_path: Path
) -> None:
    """create makes the rule first: cut short there (Ctrl-C, a refused instance whose rule delete failed), its state
    had no id, and `inletsctl delete NAME` removed only the local state ("gce has no exit server named ..."); the
    rule stayed, and the next create of the name failed with 409 (already exists)."""
    from inlets_py.provisioner.providers.base import delete_leftovers

    rule = json.loads((LIBCLOUD_FIXTURES / "gce" / "global_firewalls_lcfirewall.json").read_text())
    api.routes.insert(0, ("GET", re.compile(re.escape(PREFIX) + "global/firewalls/inlets-cut"),
                          Answer(200, rule | {"name": "inlets-cut", "targetTags": ["inlets-cut"]})))
    api.routes.insert(0, ("GET", re.compile(re.escape(PREFIX) + "global/firewalls/inlets-users"),
                          Answer(200, rule | {"name": "inlets-users", "targetTags": ["web"]})))  # not one create made
    RENAME["inlets-cut"] = "lcfirewall"
    try:
        gce = provider(api, key_json, tmp_path)
        assert delete_leftovers(gce, "cut") == ["firewall rule inlets-cut"]
        assert delete_leftovers(gce, "users") == []
    finally:
        del RENAME["inlets-cut"]
    assert [s.path for s in api.requests("DELETE")] == [PREFIX + "global/firewalls/inlets-cut"]


@pytest.mark.parametrize("answer, says", [
    (Answer(500, b""), "gce: reading instance europe-west2-a/foo failed (500); the API had trouble of its own"),
    (Answer(200, b"<html>hi</html>"), "while reading instance europe-west2-a/foo: it is not JSON (it begins "
                                      "'<html>hi</html>')"),
])
def test_an_answer_that_is_not_json_says_its_status_or_its_words(
        api: RecordedAPI, key_json: str, tmp_path: Path, answer: Answer, says: str) -> None:
    """An empty 500 was read as the object '' ('its JSON is not shaped as the API documents'), and a proxy's 200
    page as 'failed (200): <html>...' (a review helper's findings)."""
    api.routes.insert(0, ("GET", re.compile(re.escape(PREFIX) + "zones/europe-west2-a/instances/foo"), answer))
    with pytest.raises(ProvisionError) as info:
        provider(api, key_json, tmp_path).status("europe-west2-a/foo")
    assert says in str(info.value), info.value
