"""Edges of the cloud providers every account can meet: a VM tagged by hand, a 429 whose Retry-After is no number,
half-given AWS credentials, an --api-url holding a password or sending secrets in cleartext, and the delete
command create prints. Real CLI, real drivers, APIs on loopback (the stateful DigitalOcean fake, recorded answers);
nothing dials beyond loopback (``no_egress``)."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
from pathlib import Path

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI
from helpers.prov_fake_do import DO_TOKEN, FakeDigitalOcean
from helpers.prov_support import free_port, one_line_error, run_cli

TOKEN = DO_TOKEN  # conftest's token_file and fake take it
RATE_LIMITED = {"id": "too_many_requests", "message": "API Rate limit exceeded."}


@pytest.fixture(autouse=True)
def no_egress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard, not a mock: a connection beyond loopback (api.digitalocean.com, a droplet's public address) fails the
    test at once instead of leaving this machine."""
    connect = socket.socket.connect

    def loopback_only(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise AssertionError(f"a test dialled {host}, beyond loopback")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    for name in ("DIGITALOCEAN_ACCESS_TOKEN", "INLETS_ACCESS_TOKEN", "DIGITALOCEAN_API_URL"):
        monkeypatch.delenv(name, raising=False)


def _do(url: str, token_file: Path, state: Path, *args: str) -> list[str]:
    return [*args, "--api-url", url, "--access-token-file", str(token_file), "--state-dir", str(state)]


def test_a_bad_expiry_tag_on_one_droplet_is_no_expiry_and_blocks_nothing(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``inlets-expires:99999999999999999999`` (a valid DigitalOcean tag, set by hand on one droplet) was an
    OverflowError traceback for list, create and list --prune of the whole account; ``inlets-expires:999999999999``
    (past year 9999) blamed the API ("check --api-url"). Such a droplet has no expiry, and --prune leaves it."""
    state = tmp_path / "state"
    huge = fake.add_droplet("huge", ["inlets", "inlets-expires:99999999999999999999"])
    yearless = fake.add_droplet("yearless", ["inlets", "inlets-expires:999999999999"])
    expired = fake.add_droplet("expired", ["inlets", "inlets-expires:1000000000"])  # 2001: pruned
    listed = run_cli(capsys, *_do(fake.url, token_file, state, "list", "--provider", "digitalocean", "--json"))
    assert listed.code == 0, listed.err
    rows = {row["name"]: row for row in listed.json()["servers"]}
    assert (rows["huge"]["expires"], rows["yearless"]["expires"]) == (None, None)
    assert rows["expired"]["expires"] == "2001-09-09T01:46:40Z"
    pruned = run_cli(capsys, *_do(fake.url, token_file, state, "list", "--provider", "digitalocean", "--prune"))
    assert pruned.code == 0, pruned.err
    assert sorted(fake.droplets) == sorted([huge["id"], yearless["id"]]) and expired["id"] not in fake.droplets


def test_a_429_whose_retry_after_is_not_a_number_is_a_rate_limit(
        api: RecordedAPI, token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """libcloud's RateLimitReachedError does float() of Retry-After: ``soon`` or ``abc`` raised ValueError, read as
    "unexpected answer ... a value in it is not what the API documents; check --api-url"."""
    state = tmp_path / "state"
    api.route("GET", "/v2/droplets", Answer(429, RATE_LIMITED, {"Retry-After": "soon"}))
    listed = run_cli(capsys, *_do(api.url, token_file, state, "list", "--provider", "digitalocean"))
    line = one_line_error(listed, "digitalocean: the API is limiting requests (429) while listing droplets; ")
    assert line.endswith("wait a minute and try again"), line
    api.routes.clear()
    api.route("GET", "/v2/droplets", Answer(200, {"droplets": [], "links": {}, "meta": {"total": 0}}))
    api.route("POST", "/v2/droplets", Answer(429, RATE_LIMITED, {"Retry-After": "abc"}))
    created = run_cli(capsys, *_do(api.url, token_file, state, "create", "limited", "--provider", "digitalocean",
                                   "--ports", "8080"))
    one_line_error(created, "the API is limiting requests (429) while creating droplet 'limited'", "wait a minute")
    assert not (state / "limited").exists()


def test_a_429_whose_retry_after_is_not_a_number_is_waited_out_while_create_waits(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README: a 429 while create waits is asked again; one with ``Retry-After: soon`` ended create."""
    state = tmp_path / "state"
    fake.failed_reads = [(429, {"Retry-After": "soon"})]
    created = run_cli(capsys, *_do(fake.url, token_file, state, "create", "soon", "--provider", "digitalocean",
                                   "--ports", str(free_port()), "--control-port", str(free_port()), "--timeout", "60",
                                   "--json"))
    assert created.code == 0, created.err
    assert fake.failed_reads == [] and len(fake.droplets) == 1
    assert run_cli(capsys, *_do(fake.url, token_file, state, "delete", "soon")).code == 0


def test_the_printed_delete_command_works_as_printed(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After create --api-url URL --access-token-file FILE, the printed delete named neither, so it failed for want
    of a token, and given one it sent it to api.digitalocean.com (or wherever $DIGITALOCEAN_API_URL said then)."""
    state = tmp_path / "state"
    created = run_cli(capsys, *_do(fake.url, token_file, state, "create", "printed", "--provider", "digitalocean",
                                   "--ports", str(free_port()), "--control-port", str(free_port()), "--timeout", "60",
                                   "--json"))
    assert created.code == 0, created.err
    command = created.json()["delete_command"]
    assert f"--access-token-file {token_file}" in command and TOKEN not in created.out + created.err
    assert json.loads((state / "printed" / "server.json").read_text())["api_url"] == fake.url
    monkeypatch.setenv("DIGITALOCEAN_API_URL", f"http://127.0.0.1:{free_port()}")  # another API, said later
    status_args = ["status" if word == "delete" else word for word in shlex.split(command)[1:]]
    shown = run_cli(capsys, *status_args, "--json")  # inletsctl status asks the API create used too
    kept = json.loads((state / "printed" / "server.json").read_text())
    assert shown.code == 0 and shown.json()["id"] == kept["id"], shown.err
    deleted = run_cli(capsys, *shlex.split(command)[1:])
    assert deleted.code == 0, deleted.err
    assert fake.droplets == {} and not (state / "printed").exists()


@pytest.mark.parametrize("url", ["http://user:s3cret@[::1", "http://user:s3cret@127.0.0.1:{port}"],
                         ids=["malformed", "well-formed"])
def test_an_api_url_with_a_password_is_refused_without_echoing_it(
        token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    """The malformed one was echoed whole ("invalid digitalocean API URL 'http://user:s3cret@[::1'"); the
    well-formed one's user and password were silently dropped."""
    result = run_cli(capsys, *_do(url.format(port=free_port()), token_file, tmp_path / "state", "list",
                                  "--provider", "digitalocean"))
    one_line_error(result, "invalid digitalocean API URL", "user name or password")
    assert result.code == 2 and "s3cret" not in result.out + result.err


def test_plain_http_to_a_host_that_is_not_loopback_is_refused(
        token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The token and the user-data (tunnel token, server key) would travel in cleartext; loopback stays allowed
    (a local proxy, the tests' own APIs). 0.0.0.0 is not loopback, yet never leaves this machine."""
    port = free_port()
    result = run_cli(capsys, *_do(f"http://0.0.0.0:{port}", token_file, tmp_path / "state", "list",
                                  "--provider", "digitalocean"))
    one_line_error(result, f"invalid digitalocean API URL 'http://0.0.0.0:{port}'", "cleartext", "https://")
    assert result.code == 2


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No AWS variables but an endpoint on loopback that nothing answers; the credentials file's path."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    shared = tmp_path / "credentials"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    return shared


def test_half_given_aws_credentials_say_what_is_missing_and_exit_2(
        aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A [default] profile with only its key id said "add profile 'default'" (it is there); $AWS_ACCESS_KEY_ID
    without its secret said the same; and missing credentials exited 1 where DigitalOcean's exit 2."""
    state = ["--state-dir", str(tmp_path / "state")]
    none = run_cli(capsys, "list", "--provider", "ec2", *state)
    one_line_error(none, "no AWS credentials")
    assert none.code == 2
    aws_env.write_text("[default]\naws_access_key_id = AKIAINLETSTEST000001\n")
    half = run_cli(capsys, "list", "--provider", "ec2", *state)
    line = one_line_error(half, f"profile 'default' in {aws_env} has no aws_secret_access_key")
    assert half.code == 2 and "add profile" not in line
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAINLETSTEST000002")
    env_half = run_cli(capsys, "list", "--provider", "ec2", *state)
    one_line_error(env_half, "$AWS_ACCESS_KEY_ID is set but $AWS_SECRET_ACCESS_KEY is not")
    assert env_half.code == 2


def test_an_unknown_ec2_region_exits_2_before_anything_is_made(
        aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAINLETSTEST000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    result = run_cli(capsys, "create", "x", "--provider", "ec2", "--region", "EU-WEST-1", "--ports", "8080",
                     "--state-dir", str(tmp_path / "state"))
    one_line_error(result, "unknown EC2 region 'EU-WEST-1'", "lower case: eu-west-1")
    assert result.code == 2 and not (tmp_path / "state" / "x").exists()
