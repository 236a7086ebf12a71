"""``inletsctl`` with the cloud providers, end to end through the CLI: credentials from the
environment, ``--api-url`` pointing at a loopback server with recorded answers (see
prov_cloud_recorded), ``list`` by tag and ``delete --ip``; bad input is one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, libcloud_fixture, recorded
from helpers.prov_support import one_line_error, run_cli

CLOUD_ENV = ("DIGITALOCEAN_API_URL", "VULTR_API_KEY", "LINODE_TOKEN", "LINODE_CLI_TOKEN", "HCLOUD_TOKEN", "HCLOUD_ENDPOINT", "METAL_AUTH_TOKEN",
             "PACKET_AUTH_TOKEN", "METAL_PROJECT_ID", "PACKET_PROJECT_ID", "INLETS_ACCESS_TOKEN", "VULTR_API_URL",
             "LINODE_API_URL", "METAL_API_URL", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_API_URL",
             "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID", "AZURE_API_URL",
             "SCW_SECRET_KEY", "SCW_ACCESS_KEY", "SCW_DEFAULT_PROJECT_ID", "SCW_API_URL", "SCW_DEFAULT_ZONE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLOUD_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("provider, env", [
    ("vultr", "$VULTR_API_KEY"), ("linode", "$LINODE_TOKEN"), ("hetzner", "$HCLOUD_TOKEN"), ("equinix", "$METAL_AUTH_TOKEN"),
    ("gce", "$GOOGLE_APPLICATION_CREDENTIALS"), ("azure", "$AZURE_CLIENT_ID"), ("scaleway", "$SCW_SECRET_KEY"),
])
def test_missing_credentials_name_every_way(capsys: pytest.CaptureFixture[str], tmp_path: Path, provider: str, env: str) -> None:
    result = run_cli(capsys, "create", "--provider", provider, "--state-dir", str(tmp_path))
    one_line_error(result, "--access-token-file", "--access-token", env)


@pytest.mark.parametrize("provider, says", [
    ("gce", "the GCE service-account key {} is not text (UTF-8)"), ("azure", "Azure auth file {} is not text (UTF-8)"),
])
def test_a_key_file_that_is_not_text_is_one_line_without_python_words(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, provider: str, says: str) -> None:
    """Its error was Python's codec message: "'utf-8' codec can't decode byte 0xff in position 0"."""
    key = tmp_path / "key.json"
    key.write_bytes(b"\xff\xfe{}")
    result = run_cli(capsys, "list", "--provider", provider, "--access-token-file", str(key), "--state-dir", str(tmp_path))
    line = one_line_error(result, says.format(key))
    assert "codec" not in line


@pytest.mark.parametrize("provider, env, name, says", [
    ("linode", "LINODE_TOKEN", "ab", "a Linode label has 3-64 characters; use a name of 3 to 63"),
    ("linode", "LINODE_TOKEN", "edge--1", "a Linode label never has two hyphens in a row"),
    ("gce", "GCE_API_URL", "7-edge", "a GCE instance name starts with a letter"),
])
def test_a_name_the_cloud_refuses_is_one_line_before_any_api_call(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, api: RecordedAPI, monkeypatch: pytest.MonkeyPatch,
        provider: str, env: str, name: str, says: str) -> None:
    """Such names went to the cloud: Linode refused the instance label (after its firewall was made), GCE the
    instance name; now create names the cloud's rule, and asks nothing of the cloud."""
    monkeypatch.setenv(env, "T" * 64)
    result = run_cli(capsys, "create", name, "--provider", provider, "--api-url", api.url, "--state-dir", str(tmp_path))
    one_line_error(result, f"the name {name!r}", f"--provider {provider}", says)
    assert api.seen == [] and not (tmp_path / name).exists()


@pytest.mark.parametrize("provider", ["ovh"])
def test_ovh_says_why_it_is_not_offered(capsys: pytest.CaptureFixture[str], tmp_path: Path, provider: str) -> None:
    result = run_cli(capsys, "create", "--provider", provider, "--state-dir", str(tmp_path))
    line = one_line_error(result, f"--provider {provider} is not offered", "user-data", "choose one of local, digitalocean")
    assert len(line) < 250, line  # the reasons at length are the README's "Not offered"
    listed = run_cli(capsys, "list", "--provider", provider, "--state-dir", str(tmp_path))
    assert one_line_error(listed) == line


def test_vultr_list_by_tag_and_delete_by_ip(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            api: RecordedAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VULTR_API_KEY", "K" * 36)
    listed = json.loads(libcloud_fixture("vultr_v2", "list_nodes.json"))
    api.route("GET", "/v2/instances", Answer(200, listed))
    one = {"instance": listed["instances"][0]}
    api.route("GET", "/v2/instances/123", [Answer(200, one), Answer(404, {"error": "invalid instance ID", "status": 404})])
    api.route("DELETE", "/v2/instances/123", Answer(204))
    result = run_cli(capsys, "list", "--provider", "vultr", "--api-url", api.url, "--json", "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    rows = result.json()["servers"]
    assert [r["ip"] for r in rows][0] == "45.76.83.44" and rows[0]["where"] == "vultr only"
    result = run_cli(capsys, "delete", "--provider", "vultr", "--ip", "45.76.83.44", "--api-url", api.url, "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    assert "deleted" in result.out and api.requests("DELETE", "/v2/instances/123")


def test_hetzner_list_via_env_endpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       api: RecordedAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    monkeypatch.setenv("HCLOUD_ENDPOINT", api.url + "/v1")
    api.route("GET", "/v1/servers", Answer(200, recorded("hetzner", "servers_list.json")))
    result = run_cli(capsys, "list", "--provider", "hetzner", "--json", "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    assert result.json()["servers"][0]["ip"] == "1.2.3.4"
    assert api.requests("GET", "/v1/servers")[0].query["label_selector"] == ["inlets"]


def test_linode_rejected_token_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           api: RecordedAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINODE_TOKEN", "bad")
    api.route("GET", "/v4/linode/instances", Answer(401, {"errors": [{"reason": "Invalid Token"}]}))
    result = run_cli(capsys, "list", "--provider", "linode", "--api-url", api.url, "--state-dir", str(tmp_path))
    one_line_error(result, "linode: credentials ($LINODE_TOKEN) rejected", "Invalid Token")  # the variable to fix


def test_bad_api_url_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAL_AUTH_TOKEN", "x")
    monkeypatch.setenv("METAL_PROJECT_ID", "p")
    result = run_cli(capsys, "list", "--provider", "equinix", "--api-url", "ftp://nowhere", "--state-dir", str(tmp_path))
    one_line_error(result, "invalid equinix API URL", "$METAL_API_URL")


def test_unreachable_api_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.prov_support import free_port

    monkeypatch.setenv("VULTR_API_KEY", "x")
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(capsys, "list", "--provider", "vultr", "--api-url", url, "--state-dir", str(tmp_path))
    one_line_error(result, "vultr: cannot reach the API at", url)


def test_delete_of_an_instance_that_never_goes_is_one_line_and_keeps_its_firewall(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, api: RecordedAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vultr waits for the instance itself (its firewall group goes after it): within --timeout, then a one-line error."""
    monkeypatch.setenv("VULTR_API_KEY", "K" * 36)
    one = json.loads(libcloud_fixture("vultr_v2", "ex_get_node.json"))
    one["instance"]["firewall_group_id"] = "cb676a46-66fd-4dfb-b839-443f2e6c0b60"
    api.route("GET", "/v2/instances/123", Answer(200, one))  # deleted, yet always still there
    api.route("GET", "/v2/instances", Answer(200, {"instances": [one["instance"]], "meta": {}}))  # tagged inlets: ours
    api.route("DELETE", "/v2/instances/123", Answer(204))
    result = run_cli(capsys, "delete", "--provider", "vultr", "--id", "123", "--timeout", "1", "--api-url", api.url,
                     "--state-dir", str(tmp_path))
    one_line_error(result, "vultr:", "(123) is still there 1s after it was deleted", "run the delete again later")
    assert api.requests("DELETE", "/v2/instances/123") and not api.requests("DELETE", "/v2/firewalls/.*")


SCALEWAY_KEYS = {"SCW_ACCESS_KEY": "SCWXXXXXXXXXXXXXXXXX", "SCW_DEFAULT_PROJECT_ID": "11111111-1111-1111-1111-111111111111"}
BAD_API_URLS = [
    *[(provider, "http://[::1", "use http(s)://HOST[:PORT]")
      for provider in ("digitalocean", "linode", "vultr", "equinix", "hetzner", "scaleway")],
    *[(provider, f"http://127.0.0.1:{port}/v1", f"{port!r} is not a port between 1 and 65535")
      for provider in ("hetzner", "scaleway") for port in ("0", "abc", "99999")],
]


@pytest.mark.parametrize("provider, url, says", BAD_API_URLS, ids=[f"{p} {u}" for p, u, _ in BAD_API_URLS])
@pytest.mark.parametrize("by_env", [False, True], ids=["flag", "env"])
def test_a_malformed_api_url_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, provider: str, url: str, says: str,
                                                   by_env: bool) -> None:
    """urlsplit's ValueError ("Invalid IPv6 URL") was a traceback; Hetzner and Scaleway took :0 or :99999 and then
    blamed the network ("cannot reach the API ... check the network")."""
    from inlets_py.provisioner.providers.registry import info

    env = info(provider).api_url_env[0]
    for name, value in (SCALEWAY_KEYS.items() if provider == "scaleway" else ()):
        monkeypatch.setenv(name, value)
    token = "11111111-1111-1111-1111-111111111111" if provider == "scaleway" else "x"
    if by_env:
        monkeypatch.setenv(env, url)
    where = [] if by_env else ["--api-url", url]
    result = run_cli(capsys, "list", "--provider", provider, "--access-token", token, *where, "--state-dir", str(tmp_path))
    one_line_error(result, f"invalid {provider} API URL {url!r} (--api-url or ${env}): {says}")


PAGES = 25  # lists stopped after 20 pages, with exit 0 and no word


def vultr_page(seen, n: int, more: bool) -> Answer:
    server = {"id": f"id-{n}", "label": f"srv{n}", "status": "active", "power_status": "running", "tags": ["inlets"]}
    return Answer(200, {"instances": [server], "meta": {"links": {"next": str(n + 1) if more else ""}}})


def linode_page(seen, n: int, more: bool) -> Answer:
    server = {"id": n, "label": f"srv{n}", "status": "running", "tags": ["inlets"], "ipv4": []}
    return Answer(200, {"data": [server], "page": n, "pages": PAGES})


def droplet_page(seen, n: int, more: bool) -> Answer:
    server = {"id": n, "name": f"srv{n}", "status": "active", "tags": ["inlets"], "networks": {"v4": []}}
    return Answer(200, {"droplets": [server], "links": {"pages": {"next": f"/v2/droplets?page={n + 1}"} if more else {}}})


@pytest.mark.parametrize("provider, path, env, cursor, answer", [
    ("vultr", "/v2/instances", "VULTR_API_KEY", "cursor", vultr_page),
    ("linode", "/v4/linode/instances", "LINODE_TOKEN", "page", linode_page),
    ("digitalocean", "/v2/droplets", "DIGITALOCEAN_ACCESS_TOKEN", "page", droplet_page),
])
def test_list_follows_every_page_and_a_looping_api_is_an_error(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, api: RecordedAPI, monkeypatch: pytest.MonkeyPatch,
        provider: str, path: str, env: str, cursor: str, answer) -> None:
    """A user with more exit servers than 20 pages saw the first 20 pages' and exit 0 (list --prune took the rest
    for local state only). Now every page is listed; an API that points back to a page it answered is an error."""
    monkeypatch.setenv(env, "K" * 36)
    first = 0 if provider == "vultr" else 1
    api.route("GET", path, lambda seen: answer(seen, int((seen.query.get(cursor) or [first])[0]),
                                               int((seen.query.get(cursor) or [first])[0]) < PAGES - 1 + first))
    result = run_cli(capsys, "list", "--provider", provider, "--api-url", api.url, "--json", "--state-dir", str(tmp_path))
    assert result.code == 0, result.err
    assert sorted(r["name"] for r in result.json()["servers"]) == sorted(f"srv{n}" for n in range(first, PAGES + first))
    assert len(api.requests("GET", path)) == PAGES

    if provider == "linode":  # its pages are counted: they end
        return
    api.routes.insert(0, ("GET", __import__("re").compile(path), lambda seen: answer(seen, first + 1, True)))
    looped = run_cli(capsys, "list", "--provider", provider, "--api-url", api.url, "--state-dir", str(tmp_path))
    one_line_error(looped, f"{provider}: the API answered a page it had answered before", "nothing is listed")
    assert len(api.requests("GET", path)) == PAGES + 2
