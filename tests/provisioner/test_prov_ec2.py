"""The EC2 provider (apache-libcloud's real EC2 driver) against moto's EC2 server on loopback.

moto's instances get addresses like 54.214.x.y that do not exist here, so the lifecycle
drives the provider's own create/status calls (what ``inletsctl create`` calls before it
waits on the tunnel's /healthz) and then the real ``inletsctl list`` and ``delete``; the
shared wait on /healthz is covered by the DigitalOcean and local end-to-end tests.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from helpers.process import terminate
from helpers.prov_support import free_port, one_line_error, run_cli
from inlets_py.provisioner import material as material_mod
from inlets_py.provisioner.errors import NotFound, ProvisionError
from inlets_py.provisioner.providers import Credentials, make
from inlets_py.provisioner.providers.base import ACTIVE, Plan
from inlets_py.provisioner.render import UserDataOptions, user_data
from inlets_py.provisioner.spec import build_spec

boto3 = pytest.importorskip("boto3", reason="moto[server] (with boto3) is not installed: pip install -e .[test]")

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
REGION = "eu-west-1"
KEY_ID, SECRET = "AKIAINLETSTEST000001", "inlets/test/secret/key/that/moto/accepts/0"
NEWEST, OLDER = "ami-0noble20250601", "ami-0noble20240101"


def _ami(ami_id: str, name: str, owner: str = "099720109477") -> dict[str, Any]:
    return {"ami_id": ami_id, "state": "available", "public": True, "owner_id": owner, "image_location": "amazon/x",
            "root_device_type": "ebs", "root_device_name": "/dev/sda1", "description": name, "image_type": "machine",
            "platform": None, "architecture": "x86_64", "name": name, "virtualization_type": "hvm", "hypervisor": "xen"}


@dataclass
class Moto:
    url: str
    log: Path

    def client(self) -> Any:
        return boto3.client("ec2", endpoint_url=self.url, region_name=REGION, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET)

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).read()


def _start_moto(tmp: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Moto]:
    if not MOTO_SERVER.exists():
        pytest.skip(f"moto's server is not installed ({MOTO_SERVER}): pip install -e .[test] (moto[server])")
    amis = tmp / "amis.json"
    amis.write_text(json.dumps([
        _ami(OLDER, "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20240101"),
        _ami(NEWEST, "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250601"),
        _ami("ami-0noblearm64", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20251001"),
        _ami("ami-0impostor", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261231", owner="111122223333"),
        _ami("ami-0jammy", "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20251001"),
    ]))
    port = free_port()
    log = tmp / f"moto-{port}.log"
    env = {**os.environ, "MOTO_AMIS_PATH": str(amis), "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true", **extra_env}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, Moto(f"http://127.0.0.1:{port}", log)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)




@pytest.fixture(scope="module")
def prov_ec2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    proc, moto = _start_moto(tmp_path_factory.mktemp("prov_ec2"), {})
    try:
        yield moto
    finally:
        terminate(proc)


@pytest.fixture
def prov_ec2_moto(prov_ec2_server: Moto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Moto:
    """A clean moto, and an AWS environment of the standard variables only (no real ~/.aws)."""
    prov_ec2_server.reset()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", prov_ec2_server.url)
    monkeypatch.setenv("AWS_REGION", REGION)
    return prov_ec2_server


@pytest.fixture(autouse=True)
def prov_ec2_no_egress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard, not a mock: moto's instance addresses are real public IPs, and these tests must never
    dial them (network only on loopback), so reaching create's /healthz wait fails the test at once."""
    from inlets_py.provisioner import create

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an EC2 test reached the /healthz wait on a moto (public) address")

    monkeypatch.setattr(create, "wait_until_ready", refuse)


def _env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def _plan(tmp_path: Path, name: str, mode: str = "tcp", ports: str | None = "22,80,443", ssh_key: str | None = None,
          domains: tuple[str, ...] = ()) -> Plan:
    spec = build_spec(mode, ports if mode == "tcp" else None, list(domains))
    secrets = material_mod.generate(name)
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(hours=2)
    text = user_data(spec, secrets, UserDataOptions(name, "inlets-py==0.1.0", None, expires, 16 * 1024))
    state = tmp_path / "state" / name
    state.mkdir(parents=True)
    return Plan(name, spec, text, state, ssh_key=ssh_key, expires_at=expires)


def _rules(ec2: Any, group_id: str) -> list[tuple[str, int, int, list[str]]]:
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    return sorted((p["IpProtocol"], p["FromPort"], p["ToPort"], sorted(r["CidrIp"] for r in p.get("IpRanges", [])))
                  for p in group["IpPermissions"])


def _pubkey(path: Path) -> Path:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" me@laptop\n")
    return path


def test_lifecycle_key_pair_exact_rules_user_data_list_delete(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env_credentials(monkeypatch)
    ec2 = prov_ec2_moto.client()
    plan = _plan(tmp_path, "ec2-life", ports="22,80,443", ssh_key=str(_pubkey(tmp_path / "me.pub")))
    provider = make("ec2", tmp_path / "state", Credentials())
    host = provider.create(plan)
    deadline = time.monotonic() + 30
    while (host := provider.status(host.id)).status != ACTIVE:
        assert time.monotonic() < deadline, host
        time.sleep(0.5)
    assert host.ip and host.mode == "tcp" and host.name == "ec2-life"
    (instance,) = [i for r in ec2.describe_instances(InstanceIds=[host.id])["Reservations"] for i in r["Instances"]]
    assert instance["ImageId"] == NEWEST and instance["InstanceType"] == "t3.micro"
    assert instance["KeyName"] == "inlets-ec2-life"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["inlets"] == "true" and tags["Name"] == "ec2-life" and tags["inlets-mode"] == "tcp"
    assert tags["inlets-expires"] == str(int(plan.expires_at.timestamp()))  # type: ignore[union-attr]
    group_id = tags["inlets-sg"]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group_id]
    # exactly the control port and the asked ports, 22 and 80 (under 1024) included; nothing else
    assert _rules(ec2, group_id) == [("tcp", p, p, ["0.0.0.0/0"]) for p in (22, 80, 443, 8123)]
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert group["GroupName"] == "inlets-ec2-life"
    assert {t["Key"]: t["Value"] for t in group["Tags"]} == {"inlets": "true", "inlets-name": "ec2-life"}
    sent = ec2.describe_instance_attribute(InstanceId=host.id, Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(sent).decode() == plan.user_data
    assert plan.user_data.startswith("#cloud-config")
    assert ec2.describe_key_pairs(KeyNames=["inlets-ec2-life"])["KeyPairs"]

    listed = run_cli(capsys, "list", "--provider", "ec2", "--json", "--state-dir", str(tmp_path / "state"))
    assert listed.code == 0, listed.err
    (row,) = listed.json()["servers"]
    assert (row["name"], row["id"], row["ip"], row["mode"], row["where"]) == ("ec2-life", host.id, host.ip, "tcp", "ec2 only")
    assert row["expires"] == plan.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[union-attr]

    deleted = run_cli(capsys, "delete", "--provider", "ec2", "--ip", str(host.ip), "--state-dir", str(tmp_path / "state"))
    assert deleted.code == 0, deleted.err
    (gone,) = [i for r in ec2.describe_instances(InstanceIds=[host.id])["Reservations"] for i in r["Instances"]]
    assert gone["State"]["Name"] == "terminated"
    assert group_id not in [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert not [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == "inlets-ec2-life"]
    assert run_cli(capsys, "list", "--provider", "ec2", "--json", "--state-dir", str(tmp_path / "state")).json()["servers"] == []
    again = run_cli(capsys, "delete", "--provider", "ec2", "--id", host.id, "--state-dir", str(tmp_path / "state"))
    one_line_error(again, "ec2", host.id)


def test_an_instance_that_ended_by_itself_leaves_no_group_or_key_pair_after_delete(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its --ttl ended it (terminate-on-shutdown), or someone terminated it: delete found no instance, said
    "already gone", and left its security group and key pair, which then refused a create of the same name."""
    _env_credentials(monkeypatch)
    ec2 = prov_ec2_moto.client()
    plan = _plan(tmp_path, "ec2-ended", ssh_key=str(_pubkey(tmp_path / "me.pub")))
    provider = make("ec2", tmp_path / "state", Credentials())
    host = provider.create(plan)
    group_id = provider.status(host.id).extra["security_group"]
    ec2.terminate_instances(InstanceIds=[host.id])
    with pytest.raises(NotFound, match=host.id):  # nothing to terminate: manage says "already gone", as before
        provider.delete(host.id)
    assert group_id not in [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert not [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == "inlets-ec2-ended"]
    again = provider.create(plan)  # the name is free again
    provider.delete(again.id)


def test_http_mode_opens_80_443_8123_with_profile_credentials_and_generic_endpoint(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials from AWS_PROFILE in the shared file; the endpoint from $AWS_ENDPOINT_URL."""
    ec2 = prov_ec2_moto.client()  # before AWS_PROFILE names a profile boto3 would look for
    monkeypatch.delenv("AWS_ENDPOINT_URL_EC2")
    monkeypatch.setenv("AWS_ENDPOINT_URL", prov_ec2_moto.url)
    creds = tmp_path / "home" / ".aws" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text(f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
                     f"[tunnels]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_PROFILE", "tunnels")
    plan = _plan(tmp_path, "ec2-http", mode="http", domains=("example.com",))
    provider = make("ec2", tmp_path / "state", Credentials(region=REGION))
    host = provider.create(plan)
    (instance,) = [i for r in ec2.describe_instances(InstanceIds=[host.id])["Reservations"] for i in r["Instances"]]
    group_id = {t["Key"]: t["Value"] for t in instance["Tags"]}["inlets-sg"]
    assert _rules(ec2, group_id) == [("tcp", p, p, ["0.0.0.0/0"]) for p in (80, 443, 8123)]
    assert "KeyName" not in instance or not instance["KeyName"]
    provider.delete(host.id)  # waits until terminated, then removes the group
    assert group_id not in [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]


def test_user_data_just_under_16_kib_is_sent_whole(prov_ec2_moto: Moto, tmp_path: Path, monkeypatch) -> None:
    _env_credentials(monkeypatch)
    plan = _plan(tmp_path, "ec2-full")
    padded = plan.user_data + "#" * (16 * 1024 - len(plan.user_data.encode()) - 1) + "\n"
    assert len(padded.encode()) == 16 * 1024
    provider = make("ec2", tmp_path / "state", Credentials())
    host = provider.create(Plan(plan.name, plan.spec, padded, plan.state_dir, expires_at=plan.expires_at))
    sent = prov_ec2_moto.client().describe_instance_attribute(InstanceId=host.id, Attribute="userData")
    assert base64.b64decode(sent["UserData"]["Value"]).decode() == padded
    log = prov_ec2_moto.log.read_text(errors="replace")
    assert "RunInstances" not in log and '"POST / HTTP/1.1" 200' in log  # in a form body, not the URL


def test_bad_plan_is_one_line_and_leaves_nothing_behind(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env_credentials(monkeypatch)
    result = run_cli(capsys, "create", "ec2-badplan", "--provider", "ec2", "--plan", "t9.colossal",
                     "--ssh-key", str(_pubkey(tmp_path / "me.pub")), "--state-dir", str(tmp_path / "state"))
    one_line_error(result, "ec2: creating instance 'ec2-badplan' failed", "t9.colossal")
    ec2 = prov_ec2_moto.client()
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["inlets-ec2-badplan"]}])["SecurityGroups"]
    assert not [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == "inlets-ec2-badplan"]
    assert not (tmp_path / "state" / "ec2-badplan").exists()


def test_no_ubuntu_image_is_a_clear_error(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env_credentials(monkeypatch)
    ec2 = prov_ec2_moto.client()
    for ami in (OLDER, NEWEST):
        ec2.deregister_image(ImageId=ami)
    result = run_cli(capsys, "create", "ec2-noimg", "--provider", "ec2", "--state-dir", str(tmp_path / "state"))
    one_line_error(result, "no Ubuntu 24.04 LTS image", "099720109477", REGION)
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["inlets-ec2-noimg"]}])["SecurityGroups"]


def test_bad_region_missing_credentials_unknown_key_pair_are_one_line(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    missing = run_cli(capsys, "list", "--provider", "ec2", *state)
    one_line_error(missing, "no AWS credentials", "--secret-key-file", "$AWS_ACCESS_KEY_ID", "AWS_PROFILE")
    key_file = tmp_path / "key-id"
    key_file.write_text(KEY_ID + "\n")
    no_secret = run_cli(capsys, "list", "--provider", "ec2", "--access-token-file", str(key_file), *state)
    one_line_error(no_secret, "no AWS secret key", "--secret-key-file", "$AWS_SECRET_ACCESS_KEY")  # the ways to give it
    _env_credentials(monkeypatch)
    one_line_error(run_cli(capsys, "list", "--provider", "ec2", "--region", "mars-north-1", *state),
                   "unknown EC2 region 'mars-north-1'")
    result = run_cli(capsys, "create", "ec2-nokey", "--provider", "ec2", "--ssh-key", "no-such-pair", *state)
    one_line_error(result, "no key pair named 'no-such-pair'")
    ec2 = prov_ec2_moto.client()
    assert not [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["inlets-ec2-nokey"]}])["SecurityGroups"]


def test_unreachable_endpoint_is_one_line(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env_credentials(monkeypatch)
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(capsys, "list", "--provider", "ec2", "--api-url", url, "--state-dir", str(tmp_path / "state"))
    one_line_error(result, "cannot reach", url)


def test_rejected_credentials_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """moto with IAM checks on from the first request: an unknown key id is refused (403)."""
    proc, moto = _start_moto(tmp_path, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET + "\n")
        result = run_cli(capsys, "list", "--provider", "ec2", "--access-token", "AKIANOTAREALKEY00000",
                         "--secret-key-file", str(secret_file), "--api-url", moto.url, "--region", REGION,
                         "--state-dir", str(tmp_path / "state"))
        line = one_line_error(result, "ec2: credentials (flags) rejected")
        assert SECRET not in result.err + result.out and "AKIANOTAREALKEY00000" not in line
    finally:
        terminate(proc)


def test_credentials_chain_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags first, then the environment, then the profile; the session token travels along."""
    from inlets_py.provisioner.providers.ec2 import aws_credentials as chain

    def aws_credentials(*args: object) -> tuple[str, str, str | None]:
        found = chain(*args)  # type: ignore[arg-type]
        return found.key_id, found.secret, found.session_token

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    shared = tmp_path / "credentials"
    shared.write_text("[default]\naws_access_key_id = FROMFILE\naws_secret_access_key = s3\naws_session_token = t3\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    assert aws_credentials(None, None, None, None)[:3] == ("FROMFILE", "s3", "t3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s2")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "t2")
    assert aws_credentials(None, None, None, None)[:3] == ("FROMENV", "s2", "t2")
    assert aws_credentials(None, "FROMFLAG", None, "s1")[:2] == ("FROMFLAG", "s1")
    with pytest.raises(ProvisionError):
        aws_credentials(tmp_path / "missing", None, None, "s1")


def test_aws_files_that_are_not_text_or_not_files_are_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """ConfigParser.read() raised UnicodeDecodeError (a traceback) on a file that is not UTF-8, and skipped a
    directory as if the profile were missing from it."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    state, url = ["--state-dir", str(tmp_path / "state")], f"http://127.0.0.1:{free_port()}"
    shared = tmp_path / "credentials"
    shared.write_bytes(b"[default]\naws_access_key_id = AKIA\xff\xfe\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    one_line_error(run_cli(capsys, "list", "--provider", "ec2", "--api-url", url, *state),
                   f"AWS credentials file {shared} is not text (UTF-8)")
    shared.unlink()
    shared.mkdir()
    one_line_error(run_cli(capsys, "list", "--provider", "ec2", "--api-url", url, *state),
                   f"AWS credentials file {shared} is a directory")
    config = tmp_path / "config"
    config.write_bytes(b"[default]\nregion = eu-\xff\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    _env_credentials(monkeypatch)
    one_line_error(run_cli(capsys, "list", "--provider", "ec2", "--api-url", url, *state), "cannot reach the API")


def test_status_and_delete_use_the_region_create_used(prov_ec2_moto: Moto, tmp_path: Path, monkeypatch) -> None:
    """Made in us-west-2 while $AWS_REGION says eu-west-1 later: found there, deleted there."""
    _env_credentials(monkeypatch)
    plan = _plan(tmp_path, "ec2-west")
    made_in = make("ec2", tmp_path / "state", Credentials(region="us-west-2"))
    host = made_in.create(plan)
    assert json.loads((plan.state_dir / "ec2.json").read_text()) == {"region": "us-west-2", "ids": [host.id]}
    later = make("ec2", tmp_path / "state", Credentials())  # $AWS_REGION=eu-west-1
    assert later.status(host.id).extra["region"] == "us-west-2"
    later.delete(host.id)
    west = boto3.client("ec2", endpoint_url=prov_ec2_moto.url, region_name="us-west-2", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET)
    (gone,) = [i for r in west.describe_instances(InstanceIds=[host.id])["Reservations"] for i in r["Instances"]]
    assert gone["State"]["Name"] == "terminated"


def test_list_asks_the_regions_local_state_names(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Made with --region us-east-1 while $AWS_REGION says eu-west-1: list asked eu-west-1 alone and showed it
    "absent" (local state only), though status found it running."""
    _env_credentials(monkeypatch)
    east = make("ec2", tmp_path / "state", Credentials(region="us-east-1")).create(_plan(tmp_path, "ec2-east"))
    here = make("ec2", tmp_path / "state", Credentials()).create(_plan(tmp_path, "ec2-here"))  # eu-west-1
    listed = run_cli(capsys, "list", "--provider", "ec2", "--json", "--state-dir", str(tmp_path / "state"))
    assert listed.code == 0, listed.err
    rows = {row["id"]: row for row in listed.json()["servers"]}
    assert rows[east.id]["status"] != "absent" and rows[here.id]["status"] != "absent", rows
    provider = make("ec2", tmp_path / "state", Credentials())
    assert {host.id: host.extra["region"] for host in provider.list()} == {east.id: "us-east-1", here.id: REGION}
    assert provider.region == REGION  # back where it was: status and create go on there


class _AnswerLosingProxy:
    """HTTP on loopback in front of moto: passes every call on, but RunInstances' answer never comes back
    (the connection closes after moto made the instance), as when a network drops it."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import threading
        import urllib.parse

        target = urllib.parse.urlsplit(upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _pass_on(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                if b"Action=RunInstances" in body or "Action=RunInstances" in self.path:
                    self.close_connection = True  # made, and not a word back
                    return
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _pass_on

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_instance_made_in_another_region_whose_answer_was_lost_is_deleted_there(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """create --region us-west-2 lost RunInstances' answer and found the instance by name; the region record
    was written only after an answer, so delete (with $AWS_REGION=eu-west-1) looked in eu-west-1, said the
    instance was gone, and left it running and billed in us-west-2."""
    _env_credentials(monkeypatch)
    proxy = _AnswerLosingProxy(prov_ec2_moto.url)
    state = ["--state-dir", str(tmp_path / "state")]
    try:
        created = run_cli(capsys, "create", "lost-west", "--provider", "ec2", "--region", "us-west-2",
                          "--api-url", proxy.url, "--ports", "443", *state)
    finally:
        proxy.close()
    line = one_line_error(created, "ec2 created 'lost-west' all the same")
    west = boto3.client("ec2", endpoint_url=prov_ec2_moto.url, region_name="us-west-2", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET)
    (instance,) = [i for r in west.describe_instances()["Reservations"] for i in r["Instances"]]
    assert instance["InstanceId"] in line
    deleted = run_cli(capsys, "delete", "lost-west", "--api-url", prov_ec2_moto.url, *state)  # $AWS_REGION: eu-west-1
    assert deleted.code == 0, deleted.err
    (gone,) = [i for r in west.describe_instances(InstanceIds=[instance["InstanceId"]])["Reservations"]
               for i in r["Instances"]]
    assert gone["State"]["Name"] == "terminated"


def test_firewall_note_names_the_ports_the_security_group_opens_for_another_http_port(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--mode http --http-port 8080: the summary's note and the real security group agree (8080, 443, 8123), no 80."""
    from inlets_py.provisioner.providers.registry import firewall_note

    _env_credentials(monkeypatch)
    ec2 = prov_ec2_moto.client()
    spec = build_spec("http", None, ["example.com"], http_port=8080)
    text = user_data(spec, material_mod.generate("ec2-8080"), UserDataOptions("ec2-8080", "inlets-py==0.1.0", None, None, 16 * 1024))
    (tmp_path / "state" / "ec2-8080").mkdir(parents=True)
    plan = Plan("ec2-8080", spec, text, tmp_path / "state" / "ec2-8080")
    provider = make("ec2", tmp_path / "state", Credentials(region=REGION))
    host = provider.create(plan)
    (instance,) = [i for r in ec2.describe_instances(InstanceIds=[host.id])["Reservations"] for i in r["Instances"]]
    group_id = {t["Key"]: t["Value"] for t in instance["Tags"]}["inlets-sg"]
    opened = [port for _, port, _, _ in _rules(ec2, group_id)]
    note = firewall_note("ec2", plan.name, spec)
    assert opened == [443, 8080, 8123]
    assert note == "security group inlets-ec2-8080 lets in tcp 8123 and 443,8080, nothing else"
    provider.delete(host.id)


def test_an_api_url_with_a_bad_port_is_one_line_and_its_path_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port out of range or an unclosed [v6 address was urlsplit's traceback; a gateway's /prefix was dropped
    and the requests went to its root."""
    from libcloud.compute.drivers.ec2 import NAMESPACE

    from helpers.prov_cloud_recorded import Answer, RecordedAPI

    _env_credentials(monkeypatch)
    state = ["--state-dir", str(tmp_path / "state")]
    for url in ("http://127.0.0.1:99999", "http://[::1", "http://127.0.0.1:abc"):
        one_line_error(run_cli(capsys, "list", "--provider", "ec2", "--api-url", url, *state), "invalid ec2 API URL")
    api = RecordedAPI()
    try:
        empty = f'<DescribeInstancesResponse xmlns="{NAMESPACE}"><reservationSet/></DescribeInstancesResponse>'
        api.route("GET", "/gateway/ec2/?", Answer(200, empty, {"Content-Type": "text/xml"}))
        result = run_cli(capsys, "list", "--provider", "ec2", "--api-url", api.url + "/gateway/ec2", *state)
        assert result.code == 0, result.err
        assert [s.path for s in api.seen] == ["/gateway/ec2/"]
    finally:
        api.close()


def test_a_region_newer_than_libclouds_list_is_used(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """libcloud knows the regions of its release only: il-central-1, ca-west-1, mx-central-1 were 'unknown'."""
    from inlets_py.provisioner.providers.ec2_api import Driver

    assert Driver("k", "s", region="mx-central-1").connection.host == "ec2.mx-central-1.amazonaws.com"
    assert Driver("k", "s", region="cn-northwest-9").connection.host == "ec2.cn-northwest-9.amazonaws.com.cn"
    _env_credentials(monkeypatch)
    result = run_cli(capsys, "list", "--provider", "ec2", "--region", "il-central-1", "--api-url", prov_ec2_moto.url,
                     "--state-dir", str(tmp_path / "state"))
    assert result.code == 0, result.err


def test_a_security_group_a_create_left_is_named_by_create_and_removed_by_delete(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group inlets-NAME left by a create cut short (or whose clean-up failed) refused every create of the name
    ('InvalidGroup.Duplicate', no next step), and `delete NAME --provider ec2` said there was no such exit server and
    left it (a review helper's finding). A group of the user's, untagged, is never taken for one."""
    _env_credentials(monkeypatch)
    ec2 = prov_ec2_moto.client()
    left = ec2.create_security_group(GroupName="inlets-ec2-left", Description="left")["GroupId"]
    ec2.create_tags(Resources=[left], Tags=[{"Key": "inlets", "Value": "true"}, {"Key": "inlets-name", "Value": "ec2-left"}])
    mine = ec2.create_security_group(GroupName="inlets-ec2-mine", Description="the user's own")["GroupId"]
    state = ["--state-dir", str(tmp_path / "state")]
    refused = run_cli(capsys, "create", "ec2-left", "--provider", "ec2", *state)
    one_line_error(refused, "a security group 'inlets-ec2-left' already exists in eu-west-1",
                   "`inletsctl delete ec2-left --provider ec2 --region eu-west-1` deletes it")
    deleted = run_cli(capsys, "delete", "ec2-left", "--provider", "ec2", *state)
    assert deleted.code == 0, deleted.err
    assert "ec2 has no exit server named ec2-left; deleted its security group inlets-ec2-left" in deleted.out, deleted
    kept = run_cli(capsys, "delete", "ec2-mine", "--provider", "ec2", *state)
    one_line_error(kept, "no exit server named 'ec2-mine'")
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert left not in groups and mine in groups


def test_a_left_security_group_that_cannot_be_deleted_names_the_region_to_delete_again_in(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no local state the region is only on the command line: the `delete` to run again said none, and
    run as said it looked in the default region and found nothing there."""
    from inlets_py.provisioner.providers.ec2 import EC2Provider

    _env_credentials(monkeypatch)
    ec2 = boto3.client("ec2", endpoint_url=prov_ec2_moto.url, region_name="us-west-2", aws_access_key_id=KEY_ID,
                       aws_secret_access_key=SECRET)
    left = ec2.create_security_group(GroupName="inlets-ec2-west", Description="left")["GroupId"]
    ec2.create_tags(Resources=[left], Tags=[{"Key": "inlets", "Value": "true"}, {"Key": "inlets-name", "Value": "ec2-west"}])

    def refuse(self: EC2Provider, made: list[tuple[str, str]], deadline: float | None = None) -> None:
        raise ProvisionError("ec2: deleting group failed (500): InternalError: try again later")

    monkeypatch.setattr(EC2Provider, "_cleanup", refuse)
    refused = run_cli(capsys, "delete", "ec2-west", "--provider", "ec2", "--region", "us-west-2",
                      "--state-dir", str(tmp_path / "state"))
    one_line_error(refused, "run inletsctl delete ec2-west", "--provider ec2 --region us-west-2 again")


def test_list_follows_every_page_and_leaves_instances_inletsctl_did_not_make_alone(
    prov_ec2_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """DescribeInstances pages by nextToken (moto at 100 reservations): list read the first page alone and showed
    100 of 102 exit servers, exit 0, so --prune and delete --ip missed the rest."""
    _env_credentials(monkeypatch)
    ec2 = prov_ec2_moto.client()
    for n in range(102):  # a reservation each: moto pages by reservations
        tags = [{"Key": "inlets", "Value": "true"}, {"Key": "inlets-name", "Value": f"many-{n:03d}"}]
        ec2.run_instances(ImageId=NEWEST, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                          TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    ec2.run_instances(ImageId=NEWEST, MinCount=2, MaxCount=2, InstanceType="t3.micro",
                      TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "theirs"}]}])
    listed = run_cli(capsys, "list", "--provider", "ec2", "--json", "--state-dir", str(tmp_path / "state"))
    assert listed.code == 0, listed.err
    names = sorted(row["name"] for row in listed.json()["servers"])
    assert names == [f"many-{n:03d}" for n in range(102)]
    last = next(r for r in ec2.describe_instances(Filters=[{"Name": "tag:inlets-name", "Values": ["many-101"]}])["Reservations"])
    gone = run_cli(capsys, "delete", "--provider", "ec2", "--ip", last["Instances"][0]["PublicIpAddress"],
                   "--state-dir", str(tmp_path / "state"))  # found by list, on its second page
    assert gone.code == 0, gone.err
    assert len(run_cli(capsys, "list", "--provider", "ec2", "--json", "--state-dir", str(tmp_path / "state")).json()["servers"]) == 101
