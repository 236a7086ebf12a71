"""One error mapping for every cloud: real drivers and SDKs (libcloud's Vultr driver, hcloud,
the Scaleway SDK) against a loopback API answering as the clouds do when an account limit is
reached or requests come too fast. Each reads as one line that says what to do next."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI, make_plan
from helpers.prov_support import one_line_error, run_cli
from inlets_py.provisioner.errors import ProvisionError, Transient
from inlets_py.provisioner.providers.api_url import parse_api_url
from inlets_py.provisioner.providers.vultr import VultrProvider


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


@pytest.mark.parametrize("status, retry_after, says, wait", [
    (429, "30", "the API is limiting requests (429) while listing instances: Rate limit exceeded; wait 30s and try "
                "again", 30.0),
    (429, "Fri, 31 Dec 1999 23:59:59 GMT", "the API is limiting requests (429) while listing instances: Rate limit "
                                           "exceeded; wait a minute and try again", 0.0),  # a date past: no wait
    (503, "600", "listing instances failed (503): Down for maintenance; the API had trouble of its own: try again in "
                 "10 minutes", 600.0),
])
def test_retry_after_is_said_and_kept_for_the_waits(api: RecordedAPI, status: int, retry_after: str, says: str,
                                                    wait: float | None) -> None:
    """A 429's or 503's Retry-After was ignored: 'wait a minute', and the waits asked again at their own pace. A 5xx
    was final, so one during create's minutes of polling failed it (and --delete-on-failure deleted the VM)."""
    message = "Rate limit exceeded" if status == 429 else "Down for maintenance"
    api.route("GET", "/v2/instances", Answer(status, {"error": message, "status": status}, {"Retry-After": retry_after}))
    with pytest.raises(Transient) as info:
        VultrProvider("K" * 36, parse_api_url("vultr", api.url, "VULTR_API_URL")).list()
    assert _one_line(info) == f"vultr: {says}"
    assert info.value.retry_after == wait


def test_hcloud_resource_limit_is_a_quota(api: RecordedAPI, tmp_path: Path) -> None:
    from inlets_py.provisioner.providers.hetzner import HetznerProvider

    api.route("POST", "/v1/firewalls", Answer(403, {"error": {
        "code": "resource_limit_exceeded", "message": "firewall limit exceeded", "details": {}}}))
    with pytest.raises(ProvisionError) as info:
        HetznerProvider("H" * 64, api.url + "/v1").create(make_plan(tmp_path))
    text = _one_line(info)
    assert text.startswith("hetzner: creating firewall for 'rec-check' failed (resource_limit_exceeded), an account "
                           "limit was reached: firewall limit exceeded; delete servers you no longer need"), text


def test_scaleway_quota_is_not_read_as_a_refused_key(api: RecordedAPI, tmp_path: Path) -> None:
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


def test_sdk_answers_that_are_not_json_are_said_as_such_not_as_the_network(api: RecordedAPI) -> None:
    """Found by a review helper: Scaleway called an answer that is not JSON a network failure ('cannot reach the
    API ... the connection failed', retried by the waits as a blip), and Hetzner said 'failed (200): OK'."""
    from inlets_py.provisioner.providers.hetzner import HetznerProvider
    from inlets_py.provisioner.providers.scaleway import ScalewayProvider

    api.route("GET", "/instance/v1/zones/fr-par-1/servers", Answer(200, "{oops", {"Content-Type": "application/json"}))
    scaleway = ScalewayProvider("SCWXXXXXXXXXXXXXXXXX", "00000000-0000-4000-8000-00000000000a",
                                "00000000-0000-4000-8000-00000000000b", api.url)
    with pytest.raises(ProvisionError) as info:
        scaleway.list()
    assert "unexpected answer from" in _one_line(info) and "it is not JSON (it begins '{oops')" in _one_line(info)
    api.route("GET", "/v1/servers", Answer(200, "{oops", {"Content-Type": "application/json"}))
    with pytest.raises(ProvisionError) as info:
        HetznerProvider("H" * 64, api.url + "/v1").list()
    assert "it is not JSON (it begins '{oops')" in _one_line(info) and "(200): OK" not in _one_line(info), _one_line(info)


@pytest.mark.parametrize("status, says", [
    (401, "credentials rejected (401) while listing instances: Invalid API key; check them (revoked, expired, or "
          "without the permission this needs?), or give others"),
    (503, "listing instances failed (503): Service Unavailable; the API had trouble of its own: try again later"),
])
def test_refusals_say_what_to_do_next(api: RecordedAPI, status: int, says: str) -> None:
    """A 401 named no next step, and a 5xx read as if the request were wrong (a review helper's findings)."""
    message = "Invalid API key" if status == 401 else "Service Unavailable"
    api.route("GET", "/v2/instances", Answer(status, {"error": message, "status": status}))
    with pytest.raises(ProvisionError) as info:
        VultrProvider("K" * 36, parse_api_url("vultr", api.url, "VULTR_API_URL")).list()
    assert _one_line(info) == f"vultr: {says}"


def test_an_api_url_with_a_path_is_followed_under_that_path(api: RecordedAPI, capsys) -> None:
    """--api-url http://HOST:PORT/prefix (a gateway) lost its path on the libcloud providers: the requests went to
    the gateway's root (found by a review helper). The root answers 500 here, so a lost prefix fails."""
    from helpers.prov_support import run_cli

    api.route("GET", "/v2/droplets", Answer(500, {"id": "wrong", "message": "the prefix was dropped"}))
    api.route("GET", "/v2/instances", Answer(500, {"error": "the prefix was dropped", "status": 500}))
    api.route("GET", "/gw/v2/droplets", Answer(200, {"droplets": [], "links": {}, "meta": {"total": 0}}))
    api.route("GET", "/gw/v2/instances", Answer(200, {"instances": [], "meta": {"total": 0, "links": {}}}))
    listed = run_cli(capsys, "list", "--provider", "digitalocean", "--access-token", "dop_v1_x", "--api-url",
                     api.url + "/gw/", "--json")
    assert listed.code == 0 and listed.json()["servers"] == [], listed
    assert VultrProvider("K" * 36, parse_api_url("vultr", api.url + "/gw", "VULTR_API_URL")).list() == []


def test_an_xml_api_that_answers_something_else_is_said_not_xml(api: RecordedAPI, capsys) -> None:
    """EC2 speaks XML, and its unreadable answers were called 'not JSON' (a review helper's finding)."""
    from helpers.prov_support import one_line_error, run_cli

    api.route("GET", "/", Answer(200, "{oops", {"Content-Type": "text/plain"}))
    api.route("POST", "/", Answer(200, "{oops", {"Content-Type": "text/plain"}))
    result = run_cli(capsys, "list", "--provider", "ec2", "--access-token", "AKIA" + "X" * 16, "--secret-key", "s" * 40,
                     "--api-url", api.url)
    line = one_line_error(result, "it is not XML (it begins '{oops')")
    assert "JSON" not in line, line


def _do_list(capsys, url: str, *more: str) -> str:
    from helpers.prov_support import one_line_error, run_cli

    result = run_cli(capsys, "list", "--provider", "digitalocean", "--access-token", "dop_v1_x", "--api-url", url, *more)
    line = one_line_error(result)
    assert not re.search(r"[A-Z][a-z]+(Error|Exception)|0x[0-9a-f]{6}| object at ", line.split("error:", 1)[1]), line
    return line


@pytest.mark.parametrize("answer, says", [
    (Answer(200, "garbage{", {"Content-Type": "text/html"}), "it is not JSON (it begins 'garbage{')"),
    (Answer(200, '"just a string"'), "its JSON is not shaped as the API documents"),
    (Answer(200, {"droplets": "none"}), "its JSON is not shaped as the API documents"),
    (Answer(200, {"droplets": [{"name": "no-id"}]}), "it has no 'id' field"),
], ids=["garbage", "a-string", "wrong-type", "missing-key"])
def test_an_answer_that_is_not_the_documented_json_is_said_in_words(api: RecordedAPI, answer: Answer, says: str,
                                                                     capsys) -> None:
    api.route("GET", "/v2/droplets", answer)
    line = _do_list(capsys, api.url)
    assert line == (f"inletsctl: error: digitalocean: unexpected answer from {api.url} while listing droplets: {says}; "
                    "try again later, or check --api-url if you set it")


PAGE = "<html><title>502 Bad Gateway</title></html>"


@pytest.mark.parametrize("provider", ["digitalocean", "hetzner", "scaleway", "linode"])
@pytest.mark.parametrize("status, headers, says", [
    (502, {}, "listing {what} failed (502): it is not JSON (it begins '<html><title>502 Bad Gateway"),
    (401, {}, "rejected (401) while listing {what}: it is not JSON"),
    (429, {"Retry-After": "30"}, "the API is limiting requests (429) while listing {what}"),
    (200, {}, "unexpected answer from {url} while listing {what}: it is not JSON"),
], ids=["502", "401", "429", "200"])
def test_an_error_page_that_is_not_json_keeps_its_status(api: RecordedAPI, tmp_path: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch, provider: str, status: int,
                                                         headers: dict[str, str], says: str) -> None:
    """A gateway's HTML page (Cloudflare's 502, a proxy's 401 or 429) lost its status on DigitalOcean, Hetzner and
    Scaleway, whose drivers parse the body as JSON first: every one read "unexpected answer ...: it is not JSON; check
    --api-url", so a 502 while create waited ended create, not asked again, and a 429's Retry-After was not read."""
    from helpers.prov_support import one_line_error, run_cli

    flags = {"digitalocean": ["--access-token", "dop_v1_x", "--api-url", api.url],
             "hetzner": ["--access-token", "H" * 64, "--api-url", api.url + "/v1"],
             "scaleway": ["--access-token", "00000000-0000-4000-8000-00000000000a", "--api-url", api.url],
             "linode": ["--access-token", "L" * 64, "--api-url", api.url]}[provider]  # strict_responses: the same words
    if provider == "scaleway":
        monkeypatch.setenv("SCW_ACCESS_KEY", "SCWXXXXXXXXXXXXXXXXX")
        monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", "11111111-1111-1111-1111-111111111111")
        monkeypatch.setenv("SCW_DEFAULT_ZONE", "fr-par-1")
    api.routes.insert(0, ("GET", re.compile(".*"), Answer(status, PAGE, {"Content-Type": "text/html", **headers})))
    result = run_cli(capsys, "list", "--provider", provider, *flags, "--state-dir", str(tmp_path))
    what = {"digitalocean": "droplets", "hetzner": "servers", "scaleway": "servers in fr-par-1", "linode": "instances"}[provider]
    line = one_line_error(result, says.format(what=what, url=flags[-1]))
    if status == 429:
        assert line.endswith("wait 30s and try again"), line
    if status == 502:
        assert "the API had trouble of its own: try again later" in line, line


@pytest.mark.parametrize("provider", ["digitalocean", "hetzner", "scaleway", "linode"])
def test_an_apis_redirect_is_not_followed_and_said(api: RecordedAPI, tmp_path: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    """The SDKs followed an API's redirects: a 308 to another host got DigitalOcean's create again, body and all (the
    user-data, with the tunnel token and the server's key in it), and the error blamed the first address. A redirect
    is now refused in one line naming where it pointed; nothing is sent there."""
    from helpers.prov_support import one_line_error, run_cli

    elsewhere = RecordedAPI()
    try:
        for method in ("GET", "POST"):
            elsewhere.route(method, ".*", Answer(200, {}))
        flags = {"digitalocean": ["--access-token", "dop_v1_x", "--api-url", api.url],
                 "hetzner": ["--access-token", "H" * 64, "--api-url", api.url + "/v1"],
                 "scaleway": ["--access-token", "00000000-0000-4000-8000-00000000000a", "--api-url", api.url],
                 "linode": ["--access-token", "L" * 64, "--api-url", api.url]}[provider]
        monkeypatch.setenv("SCW_ACCESS_KEY", "SCWXXXXXXXXXXXXXXXXX")
        monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", "11111111-1111-1111-1111-111111111111")
        monkeypatch.setenv("SCW_DEFAULT_ZONE", "fr-par-1")
        for method in ("GET", "POST"):
            api.routes.insert(0, (method, re.compile(".*"), Answer(308, "", {"Location": elsewhere.url + "/v2/droplets"})))
        if provider == "digitalocean":  # the create's own call, with the user-data, is the one redirected
            api.routes.insert(0, ("GET", re.compile("/v2/droplets"), Answer(200, {"droplets": [], "links": {}})))
        command = ["create", "redirected"] if provider == "digitalocean" else ["list"]
        result = run_cli(capsys, *command, "--provider", provider, *flags, "--state-dir", str(tmp_path))
        one_line_error(result, f"the API at {flags[-1]} answered with a redirect (308) to {elsewhere.url}/v2/droplets",
                       "inletsctl follows none", "check --api-url")
        assert elsewhere.seen == [], elsewhere.seen
    finally:
        elsewhere.close()


@pytest.mark.parametrize("answer, says", [
    (Answer(202, {"no_droplet": {}}), "it has no 'droplet' field"),
    (Answer(202, {"droplet": {"id": 5, "name": "x"}}), "it has no 'created_at' field"),
], ids=["no-droplet", "no-created-at"])
def test_a_create_answer_missing_a_field_names_the_field(api: RecordedAPI, answer: Answer, says: str, tmp_path: Path,
                                                         capsys) -> None:
    from helpers.prov_support import one_line_error, run_cli

    api.route("GET", "/v2/droplets", Answer(200, {"droplets": [], "links": {}}))
    api.route("POST", "/v2/droplets", answer)
    result = run_cli(capsys, "create", "x", "--provider", "digitalocean", "--access-token", "dop_v1_x", "--api-url",
                     api.url, "--state-dir", str(tmp_path))
    one_line_error(result, f"digitalocean: unexpected answer from {api.url} while creating droplet 'x': {says}")
    assert not (tmp_path / "x").exists()


def test_no_api_listening_is_said_in_words(capsys) -> None:
    from helpers.prov_support import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert _do_list(capsys, url) == (f"inletsctl: error: digitalocean: cannot reach the API at {url} while listing "
                                     "droplets: connection refused; check the network (and --api-url if you set it), "
                                     "then try again")


def test_tls_to_an_api_that_speaks_plain_http_is_said_in_words(api: RecordedAPI, capsys) -> None:
    line = _do_list(capsys, api.url.replace("http://", "https://"))
    assert "cannot reach the API at https://127.0.0.1:" in line and ": the TLS handshake failed (" in line, line


def test_an_api_that_never_answers_is_given_up_on_within_the_create_timeout(tmp_path: Path, capsys) -> None:
    """One API call waits 30 s at most, and no longer than --timeout: a hung API cannot hold create for 30 s."""
    import socket
    import time

    from helpers.prov_support import one_line_error, run_cli

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = run_cli(capsys, "create", "x", "--provider", "digitalocean", "--access-token", "dop_v1_x", "--api-url",
                         url, "--timeout", "2", "--state-dir", str(tmp_path))
        took = time.monotonic() - started
    one_line_error(result, f"digitalocean: the request to the API at {url} while listing droplets went out, then no answer in time")
    assert took < 10, took


@pytest.mark.parametrize("seconds, says", [(0.4, "wait 1s"), (29.2, "wait 30s"), (150.0, "wait 3 minutes")])
def test_a_wait_is_said_rounded_up(seconds: float, says: str) -> None:
    """An HTTP-date Retry-After leaves a fraction of a second (the date has whole seconds, the clock not):
    'wait 0s and try again' was said, and 150 s was '2 minutes', each a refusal more if followed."""
    from inlets_py.provisioner.providers.api_errors import by_status, error_for

    text = str(error_for("vultr", "api", "listing instances", by_status(429, "slow", seconds)))
    assert f"; {says} and try again" in text, text


@pytest.mark.parametrize("headers, wait", [
    ({"ratelimit-limit": "5000", "ratelimit-remaining": "0", "ratelimit-reset": "{reset}"}, "wait 4[12]s"),
    ({"Retry-After": "7", "ratelimit-reset": "{reset}"}, "wait 7s"),  # Retry-After, where given, goes first
    ({"Retry-After": "0", "ratelimit-reset": "{reset}"}, "wait 4[12]s"),  # but "0" said "wait a minute"
])
def test_digitalocean_rate_limit_is_one_line_with_the_wait_it_says(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        headers: dict[str, str], wait: str) -> None:
    """A 429 read "the API is limiting requests (429) while listing droplets: 429 Rate limit exceeded; wait a minute":
    libcloud's own words, and DigitalOcean's RateLimit-Reset (a Unix time, its only hint) ignored."""
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", "dop_v1_" + "f" * 64)
    reset = str(int(time.time()) + 42)
    api.route("GET", "/v2/droplets", Answer(429, {"id": "too_many_requests", "message": "API Rate limit exceeded."},
                                            {k: v.format(reset=reset) for k, v in headers.items()}))
    result = run_cli(capsys, "list", "--provider", "digitalocean", "--api-url", api.url, "--state-dir", str(tmp_path))
    line = one_line_error(result, "digitalocean: the API is limiting requests (429) while listing droplets; ")
    assert re.search(f"; {wait} and try again$", line), line


def test_hetzner_rate_limit_says_its_retry_after(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hetzner's 429 said "wait a minute" whatever its Retry-After said: the hcloud SDK's error keeps no headers."""
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    api.route("GET", "/v1/servers", Answer(429, {"error": {"code": "rate_limit_exceeded", "details": {},
                                                           "message": "limit of 3600 requests per hour reached"}},
                                           {"Retry-After": "17", "RateLimit-Remaining": "0"}))
    result = run_cli(capsys, "list", "--provider", "hetzner", "--api-url", api.url + "/v1", "--state-dir", str(tmp_path))
    line = one_line_error(result, "hetzner: the API is limiting requests (rate_limit_exceeded) while listing servers")
    assert line.endswith("; wait 17s and try again"), line


@pytest.mark.parametrize("limit, says, retry", [(3600, "wait 1s", None), (360, "wait 1[01]s", None),
                                                (360, "wait 1[01]s", "0")])  # "Retry-After: 0" said "wait a minute"
def test_hetzner_rate_limit_waits_as_its_docs_say_the_limit_refills(
        capsys: pytest.CaptureFixture[str], api: RecordedAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        limit: int, says: str, retry: str | None) -> None:
    """Hetzner's 429 has no Retry-After, so it said "wait a minute"; its docs say the remaining count refills
    gradually (one a second at 3600 an hour) until RateLimit-Reset, when it is full: one request is back after
    (reset - now) / limit. A project allowed 360 an hour waits 10 s, which the create's waits now keep to as well."""
    monkeypatch.setenv("HCLOUD_TOKEN", "H" * 64)
    headers = {"RateLimit-Limit": str(limit), "RateLimit-Remaining": "0", "RateLimit-Reset": str(int(time.time()) + 3600)}
    headers |= {"Retry-After": retry} if retry is not None else {}
    api.route("GET", "/v1/servers", Answer(429, {"error": {"code": "rate_limit_exceeded", "details": {},
                                                           "message": "limit reached"}}, headers))
    result = run_cli(capsys, "list", "--provider", "hetzner", "--api-url", api.url + "/v1", "--state-dir", str(tmp_path))
    line = one_line_error(result, "hetzner: the API is limiting requests (rate_limit_exceeded) while listing servers")
    assert re.search(f"; {says} and try again$", line), line


def test_a_scaleway_sdk_without_what_inletsctl_calls_is_named_not_blamed_on_the_answer(
        api: RecordedAPI, tmp_path: Path) -> None:
    """Scaleway SDKs before 2.11 have no InstanceUtilsV1API.create_server (their generated InstanceV1API, as
    here, has only _create_server): the AttributeError read "unexpected answer ...: its JSON is not shaped as the
    API documents; ... check --api-url", about an API that was never asked."""
    from importlib import metadata

    from scaleway.instance.v1.api import InstanceV1API

    from inlets_py.provisioner.providers.scaleway import ScalewayProvider

    api.route("POST", "/instance/v1/zones/fr-par-1/security_groups", Answer(201, {"security_group": {"id": "sg-1"}}))
    api.route("POST", "/instance/v1/zones/fr-par-1/security_groups/sg-1/rules", Answer(201, {"rule": {}}))
    api.route("DELETE", "/instance/v1/zones/fr-par-1/security_groups/sg-1", Answer(204))
    provider = ScalewayProvider("SCWXXXXXXXXXXXXXXXXX", "00000000-0000-4000-8000-00000000000a",
                                "00000000-0000-4000-8000-00000000000b", api.url)
    provider._api_client = InstanceV1API(provider._api_client.client)  # the real SDK's API, in its pre-2.11 shape
    with pytest.raises(ProvisionError) as info:
        provider.create(make_plan(tmp_path))
    assert _one_line(info) == (
        f"scaleway: creating server 'rec-check' failed: the installed scaleway {metadata.version('scaleway')} is not a "
        "version inletsctl works with (it has no InstanceV1API.create_server); install one that is: "
        "pip install 'scaleway>=2.11'")
    assert not api.requests("POST", "/instance/v1/zones/fr-par-1/servers")


def test_an_sdk_signature_that_does_not_fit_the_call_is_named(api: RecordedAPI) -> None:
    """A keyword the installed hcloud does not take (renamed between versions) is the SDK's version, not the answer."""
    from importlib import metadata

    from hcloud import Client

    from inlets_py.provisioner.providers.api_errors import api_errors
    from inlets_py.provisioner.providers.hetzner import hcloud_fault

    servers = Client(token="H" * 64, api_endpoint=api.url + "/v1").servers
    with pytest.raises(ProvisionError) as info:
        with api_errors("hetzner", api.url, "creating server 'x'", hcloud_fault, sdk="hcloud"):
            servers.create("x", server_kind="cx22")  # type: ignore[call-arg]
    assert _one_line(info) == (
        f"hetzner: creating server 'x' failed: the installed hcloud {metadata.version('hcloud')} is not a version "
        "inletsctl works with (ServersClient.create() got an unexpected keyword argument 'server_kind'); install one "
        "that is: pip install 'hcloud>=2.0'")
    assert api.seen == []


def test_a_type_error_inside_the_sdk_is_still_the_answer(api: RecordedAPI) -> None:
    """The same exception types raised inside the SDK (reading an answer of the wrong shape) still say so."""
    from inlets_py.provisioner.providers.hetzner import HetznerProvider

    api.route("GET", "/v1/servers", Answer(200, {"servers": "none", "meta": {}}))
    with pytest.raises(ProvisionError) as info:
        HetznerProvider("H" * 64, api.url + "/v1").list()
    assert "unexpected answer from" in _one_line(info) and "installed hcloud" not in _one_line(info), _one_line(info)


def test_digitaloceans_droplet_limit_is_a_quota_and_a_far_reset_a_bounded_wait() -> None:
    """A probe's findings: DigitalOcean's 403 "You have reached your droplet limit" read as a rejected token ("check
    them"), and a RateLimit-Reset far off (a clock gone wrong) said "wait 3391265 minutes"."""
    from inlets_py.provisioner.providers.api_errors import QUOTA, by_status, error_for, retry_after

    fault = by_status(403, "You have reached your droplet limit. Please contact support to increase it.")
    assert fault.kind == QUOTA
    assert "an account limit was reached" in str(error_for("digitalocean", "api", "creating droplet 'x'", fault))
    far = {"RateLimit-Reset": str(int(time.time()) + 200 * 365 * 86400)}
    from inlets_py.provisioner.providers.api_errors import ratelimit_reset

    assert retry_after(far, reset=ratelimit_reset) == 3600.0
