"""Azure: libcloud's Azure ARM driver signs in (client credentials) and makes real HTTP
requests to a loopback server. The token, public IP, NIC, VM and instance-view answers
are libcloud's own recordings; the resource-group, NSG and VNet answers are hand-written
in ARM's documented shape (no recording of those exists here; see recorded/README.md).
No registry package ships Azure's REST API specs, so Prism is not used here.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, libcloud_fixture, make_plan, recorded
from helpers.prov_support import one_line_error, run_cli
from inlets_py.provisioner.providers.api_url import parse_api_url
from inlets_py.provisioner.errors import NotFound, ProvisionError, Transient
from inlets_py.provisioner.providers.azure import AzureProvider, service_principal

TENANT = "77777777-7777-7777-7777-777777777777"  # the tenant of libcloud's recorded token
SUB = "99999999"
GROUP = f"/subscriptions/{SUB}/resourceGroups/inlets-rec-check"
NET = GROUP + "/providers/Microsoft.Network"
VM = GROUP + "/providers/Microsoft.Compute/virtualMachines/rec-check"
REC = "_subscriptions_99999999_resourceGroups_"


def _ip() -> dict:
    body = json.loads(libcloud_fixture("azure_arm", REC + "REVIZOR_providers_Microsoft_Network_publicIPAddresses_test_public_ip.json"))
    body["properties"]["ipAddress"] = "203.0.113.7"  # the recording predates the address; the field is ARM's
    return body


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    server.route("POST", f"/{TENANT}/oauth2/token", Answer(200, libcloud_fixture("azure_arm", f"_{TENANT.replace('-', '_')}_oauth2_token.json")))
    server.route("PUT", GROUP, Answer(201, recorded("azure", "resource_group.json")))
    server.route("PUT", NET + "/networkSecurityGroups/inlets-nsg", Answer(201, recorded("azure", "network_security_group.json")))
    server.route("PUT", NET + "/virtualNetworks/inlets-vnet", Answer(201, recorded("azure", "virtual_network.json")))
    server.route("PUT", NET + "/publicIPAddresses/inlets-ip", Answer(201, _ip()))
    server.route("GET", NET + "/publicIPAddresses/inlets-ip", Answer(200, _ip()))
    server.route("PUT", NET + "/networkInterfaces/inlets-nic",
                 Answer(201, libcloud_fixture("azure_arm", REC + "000000_providers_Microsoft_Network_networkInterfaces_test_node_1_nic.json")))
    vm = libcloud_fixture("azure_arm", REC + "000000_providers_Microsoft_Compute_virtualMachines_test_node_1.json")
    server.route("PUT", VM, Answer(201, vm))
    server.route("GET", VM, Answer(200, vm))
    server.route("GET", VM + "/instanceView",
                 Answer(200, libcloud_fixture("azure_arm", REC + "000000_providers_Microsoft_Compute_virtualMachines_test_node_1_InstanceView.json")))
    # libcloud reads the NIC and instance view the recorded VM names (its _to_node): their recordings too
    server.route("GET", r"/subscriptions/[-0-9]+/resourceGroups/0+/providers/Microsoft.Network/networkInterfaces/[^/]+",
                 Answer(200, libcloud_fixture("azure_arm", REC + "000000_providers_Microsoft_Network_networkInterfaces_test_node_1_nic.json")))
    server.route("GET", r"/subscriptions/[-0-9]+/resourceGroups/0+/providers/Microsoft.Compute/virtualMachines/[^/]+/InstanceView",
                 Answer(200, libcloud_fixture("azure_arm", REC + "000000_providers_Microsoft_Compute_virtualMachines_test_node_1_InstanceView.json")))
    server.route("GET", f"/subscriptions/{SUB}/resourcegroups", Answer(200, recorded("azure", "resource_groups_list.json")))
    server.route("DELETE", GROUP, Answer(202))
    yield server
    server.close()


def provider(api: RecordedAPI) -> AzureProvider:
    principal = {"tenant": TENANT, "subscription": SUB, "client": "client-id", "secret": "s3cret"}
    p = AzureProvider(principal, parse_api_url("azure", api.url, "AZURE_API_URL"))
    p.poll_interval = 0.01
    return p


def test_create_sends_custom_data_tags_and_exact_nsg(api: RecordedAPI, tmp_path: Path) -> None:
    plan = make_plan(tmp_path, ports="22,80,443", ssh_key="ssh-ed25519 AAAAC3Nza example")
    host = provider(api).create(plan)
    assert host.id == "inlets-rec-check"
    token = api.requests("POST", f"/{TENANT}/oauth2/token")[0]
    assert b"grant_type=client_credentials" in token.raw and b"client_secret=s3cret" in token.raw
    (group,) = api.requests("PUT", GROUP)
    assert group.json["tags"] == {"inlets": "true", "inlets-mode": "tcp", "inlets-expires": "1893553445", "inlets-name": "rec-check"}
    (nsg,) = api.requests("PUT", NET + "/networkSecurityGroups/inlets-nsg")
    (rule,) = nsg.json["properties"]["securityRules"]
    assert rule["properties"]["destinationPortRanges"] == ["22", "80", "443", "8123"]
    assert rule["properties"]["direction"] == "Inbound" and rule["properties"]["protocol"] == "Tcp"
    (vnet,) = api.requests("PUT", NET + "/virtualNetworks/inlets-vnet")
    assert vnet.json["properties"]["subnets"][0]["properties"]["networkSecurityGroup"]["id"].endswith("/inlets-nsg")
    (vm,) = api.requests("PUT", VM)
    props = vm.json["properties"]
    assert base64.b64decode(props["osProfile"]["customData"]).decode() == plan.user_data
    assert props["storageProfile"]["imageReference"] == {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"}
    assert props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == "ssh-ed25519 AAAAC3Nza example"
    assert props["hardwareProfile"]["vmSize"] == "Standard_B1s" and vm.json["tags"]["inlets"] == "true"
    assert vm.headers["Authorization"] == "Bearer " + "3" * 55
    assert api.unrouted() == []


def test_http_mode_opens_80_443_and_control(api: RecordedAPI, tmp_path: Path) -> None:
    provider(api).create(make_plan(tmp_path, mode="http"))
    rule = api.requests("PUT", NET + "/networkSecurityGroups/inlets-nsg")[0].json["properties"]["securityRules"][0]
    assert rule["properties"]["destinationPortRanges"] == ["80", "443", "8123"]


def test_status_list_by_tag_and_delete_the_group(api: RecordedAPI) -> None:
    api.route("GET", GROUP, [Answer(200, recorded("azure", "resource_group.json"))] * 2
              + [Answer(404, recorded("azure", "resource_group_not_found.json"))])
    p = provider(api)
    host = p.status("inlets-rec-check")
    assert host.status == "active" and host.ip == "203.0.113.7" and host.name == "rec-check"
    assert [h.id for h in p.list()] == ["inlets-rec-check"]
    assert api.requests("GET", f"/subscriptions/{SUB}/resourcegroups")[0].query["$filter"] == ["tagName eq 'inlets'"]
    p.delete("inlets-rec-check")
    assert api.requests("DELETE", GROUP)
    with pytest.raises(NotFound):
        p.status("inlets-rec-check")


def test_delete_of_a_failed_vm_waits_until_its_group_is_gone(api: RecordedAPI) -> None:
    """A VM whose provisioning failed: its group's delete takes a while, and the VM reads Failed meanwhile. That
    counted as gone: delete said "deleted" at once, while the group (and its public IP) still existed."""
    failed = json.loads(libcloud_fixture("azure_arm", REC + "000000_providers_Microsoft_Compute_virtualMachines_test_node_1.json"))
    failed["properties"]["provisioningState"] = "Failed"
    view = libcloud_fixture("azure_arm", REC + "000000_providers_Microsoft_Compute_virtualMachines_test_node_1_InstanceView.json")
    view = view.replace(b"PowerState/running", b"PowerState/stopped")  # as a VM whose provisioning failed
    api.routes.insert(0, ("GET", re.compile(re.escape(VM) + "$"), [Answer(200, failed)] * 4
                          + [Answer(404, recorded("azure", "resource_group_not_found.json"))]))
    api.routes.insert(0, ("GET", re.compile(re.escape(VM + "/instanceView") + "$"), Answer(200, view)))
    api.route("GET", GROUP, [Answer(200, recorded("azure", "resource_group.json"))] * 4
              + [Answer(404, recorded("azure", "resource_group_not_found.json"))])
    p = provider(api)
    assert p.status("inlets-rec-check").status == "failed"
    p.delete("inlets-rec-check")
    assert api.requests("DELETE", GROUP)
    with pytest.raises(NotFound):  # delete returned only once the group was gone
        p.status("inlets-rec-check")


def test_refused_vm_removes_the_group_with_one_line(api: RecordedAPI, tmp_path: Path) -> None:
    api.routes.insert(0, ("PUT", re.compile(re.escape(VM)), Answer(409, {"error": {
        "code": "SkuNotAvailable", "message": "The requested size for resource is currently not available"}})))
    api.route("GET", GROUP, Answer(404, recorded("azure", "resource_group_not_found.json")))
    with pytest.raises(ProvisionError, match=r"\(409\): The requested size") as info:
        provider(api).create(make_plan(tmp_path, size="Standard_Nope"))
    assert "\n" not in str(info.value) and api.requests("DELETE", GROUP)


def test_missing_principal_names_every_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ProvisionError, match=r"--access-token-file.*\$AZURE_CLIENT_ID, \$AZURE_CLIENT_SECRET"):
        service_principal(None, None)
    bad = tmp_path / "auth.json"
    bad.write_text("{}")
    with pytest.raises(ProvisionError, match="not an Azure auth file"):
        service_principal(bad, None)


@pytest.mark.parametrize("given", ["file", "env", "env and --access-token"])
def test_a_rejected_principal_names_where_it_was_read(api: RecordedAPI, tmp_path: Path, given: str,
                                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A 401 read "azure: credentials rejected (401)": not whether the auth file or which variables gave them."""
    env = {"AZURE_CLIENT_ID": "client-id", "AZURE_CLIENT_SECRET": "s3cret", "AZURE_TENANT_ID": TENANT,
           "AZURE_SUBSCRIPTION_ID": SUB}
    for name, value in env.items():
        if given == "file":
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"clientId": "client-id", "clientSecret": "s3cret", "tenantId": TENANT, "subscriptionId": SUB}))
    auth.chmod(0o600)
    flags = {"file": ["--access-token-file", str(auth)], "env": [], "env and --access-token": ["--access-token", "s3cret"]}
    api.routes.insert(0, ("POST", re.compile(f"/{TENANT}/oauth2/token"), Answer(401, {
        "error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})))
    result = run_cli(capsys, "list", "--provider", "azure", *flags[given], "--api-url", api.url,
                     "--state-dir", str(tmp_path / "state"))
    source = {"file": f"--access-token-file {auth}",
              "env": "$AZURE_CLIENT_ID, $AZURE_CLIENT_SECRET, $AZURE_TENANT_ID, $AZURE_SUBSCRIPTION_ID",
              "env and --access-token": "$AZURE_CLIENT_ID, --access-token, $AZURE_TENANT_ID, $AZURE_SUBSCRIPTION_ID"}[given]
    one_line_error(result, f"azure: service principal ({source}) rejected (401) while signing in")


def test_list_follows_next_link_to_every_page(api: RecordedAPI) -> None:
    """ARM answers a long list a page at a time, with ``nextLink`` (hand-written: ARM's documented paging shape).
    Only the first page was read: exit servers on later pages were missing from list, delete --id and prune."""
    first = json.loads(recorded("azure", "resource_groups_list.json"))
    first["nextLink"] = f"{api.url}/subscriptions/{SUB}/resourcegroups?api-version=2021-04-01&%24skiptoken=page2"
    second = json.loads(recorded("azure", "resource_groups_list.json"))
    second["value"][0] = second["value"][0] | {"id": GROUP.replace("rec-check", "second"), "name": "inlets-second",
                                                 "tags": {"inlets": "true", "inlets-name": "second"}}
    api.routes.insert(0, ("GET", re.compile(f"/subscriptions/{SUB}/resourcegroups"),
                          lambda seen: Answer(200, second if "$skiptoken" in seen.query else first)))
    api.route("GET", GROUP, Answer(200, recorded("azure", "resource_group.json")))
    api.route("GET", GROUP.replace("rec-check", "second"), Answer(200, second["value"][0]))
    api.route("GET", VM.replace("rec-check", "second"), Answer(404, {"error": {"code": "ResourceNotFound", "message": "not found"}}))
    p = provider(api)
    assert [h.id for h in p.list()] == ["inlets-rec-check", "inlets-second"]
    (_, page2) = api.requests("GET", f"/subscriptions/{SUB}/resourcegroups")
    assert page2.query["$skiptoken"] == ["page2"] and page2.query["api-version"] == ["2021-04-01"]


def test_a_group_deleted_while_listing_is_left_out(api: RecordedAPI) -> None:
    """The list names a group that is gone when read (another delete finishing): list failed as a whole,
    'not found while reading resource group', and with it create's check of the name."""
    api.routes.insert(0, ("GET", re.compile(GROUP), Answer(404, {"error": {"code": "ResourceGroupNotFound",
                                                                            "message": "Resource group not found."}})))
    assert provider(api).list() == []


@pytest.mark.parametrize("answer, says, transient", [
    (Answer(502, b"Bad Gateway", {"Content-Type": "text/plain"}),
     "azure: signing in with the service principal failed (502): Bad Gateway; the API had trouble of its own: try "
     "again later", True),
    (Answer(200, b"<html>proxy login</html>", {"Content-Type": "text/html"}),
     "unexpected answer from http://127.0.0.1:PORT while signing in with the service principal: it is not JSON (it "
     "begins '<html>proxy login</html>')", False),
])
def test_a_sign_in_answer_that_is_not_json_says_its_status_or_its_words(
        api: RecordedAPI, answer: Answer, says: str, transient: bool) -> None:
    """libcloud's sign-in failed on such an answer with an AttributeError of its own (no ``driver``), said as 'its
    JSON is not shaped as the API documents': neither the 502 nor the page was told (a review helper's finding)."""
    api.routes.insert(0, ("POST", re.compile(f"/{TENANT}/oauth2/token"), answer))
    with pytest.raises(ProvisionError) as info:
        provider(api)
    assert says.replace("PORT", str(api.url.rsplit(":", 1)[1])) in str(info.value), info.value
    assert isinstance(info.value, Transient) == transient
