"""One error mapping for every cloud: real drivers and SDKs (libcloud's Vultr driver, hcloud,
the Scaleway SDK) against a loopback API answering as the clouds do when an account limit is
reached or requests come too fast. Each reads as one line that says what to do next."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, make_plan
from inlets_py.provisioner.errors import ProvisionError
from inlets_py.provisioner.providers.cloud_api import parse_api_url
from inlets_py.provisioner.providers.vultr import VultrProvider


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    yield server
    server.close()


def _one_line(info: pytest.ExceptionInfo[ProvisionError]) -> str:
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_libcloud_rate_limit_says_wait(api: RecordedAPI) -> None:
    api.route("GET", "/v2/instances", Answer(429, {"error": "Rate limit exceeded", "status": 429}))
    provider = VultrProvider("K" * 36, parse_api_url("vultr", api.url, "VULTR_API_URL"))
    with pytest.raises(ProvisionError) as info:
        provider.list()
    assert _one_line(info) == ("vultr: the API is limiting requests (429) while listing instances: Rate limit exceeded; "
                               "wait a minute and try again")


def test_hcloud_resource_limit_is_a_quota(api: RecordedAPI, tmp_path: Path) -> None:
    pytest.importorskip("hcloud", reason="the hcloud SDK is not installed")
    from inlets_py.provisioner.providers.hetzner import HetznerProvider

    api.route("POST", "/v1/firewalls", Answer(403, {"error": {
        "code": "resource_limit_exceeded", "message": "firewall limit exceeded", "details": {}}}))
    with pytest.raises(ProvisionError) as info:
        HetznerProvider("H" * 64, api.url + "/v1").create(make_plan(tmp_path))
    text = _one_line(info)
    assert text.startswith("hetzner: creating firewall for 'rec-check' failed (resource_limit_exceeded), an account "
                           "limit was reached: firewall limit exceeded; delete servers you no longer need"), text


def test_scaleway_quota_is_not_read_as_a_refused_key(api: RecordedAPI, tmp_path: Path) -> None:
    pytest.importorskip("scaleway", reason="the Scaleway SDK is not installed")
    from inlets_py.provisioner.providers.scaleway import ScalewayProvider

    api.route("POST", "/instance/v1/zones/fr-par-1/security_groups", Answer(403, {
        "type": "quotas_exceeded", "message": "quota(s) exceeded for this resource",
        "details": [{"resource": "SecurityGroups", "quota": 10, "current": 10}]}))
    provider = ScalewayProvider("SCWXXXXXXXXXXXXXXXXX", "00000000-0000-4000-8000-00000000000a",
                                "00000000-0000-4000-8000-00000000000b", api.url)
    with pytest.raises(ProvisionError) as info:
        provider.create(make_plan(tmp_path))
    text = _one_line(info)
    assert re.match(r"scaleway: creating security group for 'rec-check' failed \(403\), an account limit was reached: "
                    r"quota\(s\) exceeded", text) and "secret key rejected" not in text, text
