"""Equinix Metal: libcloud's Equinix Metal driver makes real HTTP requests to a loopback
server answering with libcloud's own recorded Equinix Metal fixtures. No OpenAPI document
of Equinix Metal's ships in a registry package, so Prism is not used here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, libcloud_fixture, make_plan
from inlets_py.provisioner.providers.api_url import parse_api_url
from inlets_py.provisioner.errors import NotFound, ProvisionError
from inlets_py.provisioner.providers.equinix import EquinixProvider

PROJECT = "4b653fce-6405-4300-9f7d-c587b7888fe5"
DEVICE = "9f7eafab-6f6b-4ae4-988d-c2a686367791"
NOT_FOUND = Answer(404, {"errors": ["Not found"]})


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    server.route("POST", f"/metal/v1/projects/{PROJECT}/devices", Answer(201, libcloud_fixture("equinixmetal", "device_create.json")))
    server.route("GET", f"/metal/v1/projects/{PROJECT}/devices", Answer(200, libcloud_fixture("equinixmetal", "devices_for_project.json")))
    server.route("DELETE", f"/metal/v1/devices/{DEVICE}", Answer(204))
    yield server
    server.close()


def provider(api: RecordedAPI) -> EquinixProvider:
    return EquinixProvider("M" * 32, PROJECT, parse_api_url("equinix", api.url, "METAL_API_URL"))


def test_create_sends_cloud_init_and_tags(api: RecordedAPI, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ports="22,80")
    host = provider(api).create(plan)
    assert host.id == DEVICE
    (create,) = api.requests("POST", f"/metal/v1/projects/{PROJECT}/devices")
    body = create.json
    assert body["userdata"] == plan.user_data
    assert body["tags"] == ["inlets", "inlets-mode:tcp", "inlets-expires:1893553445"]
    assert body["hostname"] == "rec-check" and body["metro"] == "ld" and body["plan"] == "c3.small.x86"
    assert body["operating_system"] == "ubuntu_24_04"
    assert create.headers["X-Auth-Token"] == "M" * 32
    assert api.unrouted() == []


def test_no_firewall_is_said_in_the_summary_note() -> None:
    assert EquinixProvider.firewall_note.startswith("none:")


def test_status_list_by_tag_and_delete(api: RecordedAPI) -> None:
    listed = json.loads(libcloud_fixture("equinixmetal", "devices_for_project.json"))["devices"][0]
    api.route("GET", f"/metal/v1/devices/{DEVICE}", [Answer(200, listed), NOT_FOUND])
    p = provider(api)
    host = p.status(DEVICE)
    assert host.status == "active" and host.ip == "147.75.102.193"
    assert p.list() and api.requests("GET", f"/metal/v1/projects/{PROJECT}/devices")[0].query["tag"] == ["inlets"]
    p.delete(DEVICE)
    with pytest.raises(NotFound):
        p.status(DEVICE)


def test_bad_plan_is_one_line(api: RecordedAPI, tmp_path: Path) -> None:
    api.routes.insert(0, ("POST", re.compile(f"/metal/v1/projects/{PROJECT}/devices"),
                          Answer(422, {"errors": ["Plan is not valid"]})))
    with pytest.raises(ProvisionError, match=r"\(422\): Plan is not valid") as info:
        provider(api).create(make_plan(tmp_path, size="nope"))
    assert "\n" not in str(info.value)


def test_missing_project_is_one_line() -> None:
    with pytest.raises(ProvisionError, match="METAL_PROJECT_ID"):
        EquinixProvider("M" * 32, "")
