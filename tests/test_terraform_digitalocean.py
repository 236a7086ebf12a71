"""The digitalocean-exit-server module applied with its droplet stood in for (issue 7's modules).

The digitalocean provider is not available offline here, so ``terraform validate`` of the module
is skipped (tests/test_terraform.py says so). Everything else in the module still runs here: this
copy swaps the one ``digitalocean_droplet`` for a ``terraform_data`` holding the user-data it
would boot with (at 127.0.0.1), and inlets-secrets for the provider-free stand-in the AWS tests
use, then applies it. What it shows: the droplet's user-data is inletsctl's for DigitalOcean's
64 KiB (the wheel embedded where it fits with inletsctl's margin, else pushed), and the push step
runs exactly when the wheel is pushed, with the settings push_wheel.py reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest

import test_terraform as tfh
from inlets_py.provisioner.create import CreateOptions, _letsencrypt
from inlets_py.provisioner.render import UserDataOptions, fitting_user_data, wheel_xz_base64
from inlets_py.provisioner.spec import TunnelSpec, build_spec
from inlets_py.provisioner.wheel import ServerWheel, build_runtime_wheel

MODULE = "modules/digitalocean-exit-server"
DROPLET = re.compile(r'^resource "digitalocean_droplet" "exit_server" \{\n(.*?)^\}\n', re.M | re.S)
PROVIDER = re.compile(r"^    digitalocean = \{\n.*?^    \}\n", re.M | re.S)
#: stands in for the Python that runs push_wheel.py: records what it was given instead of sending
RECORDER = """#!/bin/sh
{ printf '%s\\n' "$@"; printf 'host=%s port=%s timeout=%s\\n' "$INLETS_HOST" "$INLETS_PORT" "$INLETS_TIMEOUT"
  printf '%s' "$INLETS_WHEEL_XZ_BASE64" | sha256sum; printf '%s' "$INLETS_TOKEN" | sha256sum; } > "$0.log"
"""


def _small_wheel() -> ServerWheel:
    """A wheel that fits any user-data: one small module (Terraform only carries it here; pip never sees it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("inlets_small/__init__.py", "")
    return ServerWheel("inlets_small-0.0.1-py3-none-any.whl", buffer.getvalue())


SMALL_WHEEL = _small_wheel()


def stand_in(ws: Path) -> Path:
    """The module with a terraform_data in the droplet's place (the same user-data and tags), and the secrets
    module with the test's fixed material in place of its random and tls resources."""
    secrets = ws / "modules/inlets-secrets"
    for path in secrets.glob("*.tf"):
        path.unlink()
    (secrets / "main.tf.json").write_text(json.dumps(tfh.secrets_stub(tfh.TF_DIR / "modules/inlets-secrets", tfh.MATERIAL)))
    module = ws / MODULE
    main = (module / "main.tf").read_text()
    main, dropped = PROVIDER.subn("", main)
    assert dropped == 1, "the digitalocean provider block moved: update the stand-in"
    droplet = DROPLET.search(main)
    assert droplet and "user_data = module.userdata.user_data" in droplet.group(1), "the droplet resource moved"
    tags = re.search(r"^  tags = (distinct\(.*?^  \)\))\n", droplet.group(1), re.M | re.S)
    assert tags, "the droplet's tags moved: update the stand-in"
    main = DROPLET.sub(
        'resource "terraform_data" "exit_server" {\n  input = {\n    user_data = module.userdata.user_data\n'
        f"    tags      = {tags.group(1)}\n  }}\n}}\n", main)
    main = main.replace("digitalocean_droplet.exit_server.ipv4_address", '"127.0.0.1"')
    main = main.replace("digitalocean_droplet.exit_server.id", "terraform_data.exit_server.id")
    assert "digitalocean_" not in main, "the module uses more of the digitalocean provider: update the stand-in"
    (module / "main.tf").write_text(main)
    outputs = (module / "outputs.tf").read_text()
    outputs = outputs.replace("digitalocean_droplet.exit_server.ipv4_address", '"127.0.0.1"')
    outputs = outputs.replace("digitalocean_droplet.exit_server.id", "terraform_data.exit_server.id")
    assert "digitalocean_" not in outputs, "the outputs use more of the digitalocean provider: update the stand-in"
    outputs += ('\noutput "droplet" {\n  value     = terraform_data.exit_server.output\n  sensitive = true\n}\n'
                'output "wheel" {\n  value = module.userdata.wheel\n}\n')
    (module / "outputs.tf").write_text(outputs)
    return module


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each mode's module applied once, with the default wheel delivery (auto: both send the wheel, as inletsctl
    does on DigitalOcean since the TCP wheel passed the 4 KiB margin; HTTP gets Let's Encrypt by default), a TCP
    one with the wheel embedded, and an HTTP one with a Let's Encrypt email and the staging issuer."""
    if tfh.TERRAFORM is None:
        pytest.skip(tfh.NO_TERRAFORM)
    tmp = tmp_path_factory.mktemp("tf-do")
    ws = tfh.workspace(tmp)
    stand_in(ws)
    recorder = tmp / "python"
    recorder.write_text(RECORDER)
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    modules = {
        "tcp": {"source": f"../{MODULE}", "name": "tf-do-tcp", "ports": [80, 443], "python": str(recorder), "push_timeout": 7},
        "http": {"source": f"../{MODULE}", "name": "tf-do-http", "mode": "http", "domains": ["example.com"],
                 "python": str(recorder), "push_timeout": 7},
        # a small wheel of the user's own: the runtime's no longer fits 64 KiB, and this case is about the module
        # embedding a wheel (nothing to send), not about the runtime's size
        "tcp-embedded": {"source": f"../{MODULE}", "name": "tf-do-tcp-embedded", "ports": [80, 443],
                         "python": str(recorder), "push_timeout": 7, "wheel_delivery": "embed",
                         "wheel_filename": SMALL_WHEEL.filename, "wheel_xz_base64": wheel_xz_base64(SMALL_WHEEL),
                         "wheel_sha256": SMALL_WHEEL.sha256},
        # the module's Let's Encrypt inputs reach the user-data: inletsctl's --letsencrypt-email/-issuer
        "http-staging": {"source": f"../{MODULE}", "name": "tf-do-http-staging", "mode": "http", "domains": ["example.com"],
                         "python": str(recorder), "push_timeout": 7, **{f"letsencrypt_{k}": v for k, v in STAGING.items()}},
    }
    results: dict[str, Any] = {}
    for mode, inputs in modules.items():
        log = recorder.with_name("python.log")
        log.unlink(missing_ok=True)
        results[mode] = tfh.apply_root(ws / f"root-{mode}", {"exit": inputs}, {
            "droplet": ("${module.exit.droplet}", True), "wheel": ("${module.exit.wheel}", False),
            "open_ports": ("${module.exit.open_ports}", False),
        })
        results[mode]["pushed"] = log.read_text() if log.exists() else None
        results[mode]["root"] = ws / f"root-{mode}"  # initialised: later plans of other inputs need no init
    return results


STAGING = {"email": "ops@example.com", "issuer": "staging"}


def inletsctl_spec(mode: str) -> TunnelSpec:
    """inletsctl create --provider digitalocean's spec: HTTP mode with a domain on port 80 gets Let's Encrypt."""
    if mode.startswith("tcp"):
        return build_spec("tcp", "80,443", [])
    le = {f"letsencrypt_{k}": v for k, v in STAGING.items()} if mode == "http-staging" else {}
    opts = CreateOptions(provider="digitalocean", state_root=Path("."), mode="http", domains=["example.com"], **le)
    return build_spec("http", None, ["example.com"], letsencrypt=_letsencrypt(opts, 80))


def inletsctl_user_data(mode: str) -> tuple[str, bool]:
    spec = inletsctl_spec(mode)
    options = UserDataOptions(name=f"tf-do-{mode}", package="", limit=64 * 1024,
                              wheel=build_runtime_wheel(spec.mode, letsencrypt=spec.letsencrypt is not None),
                              constraints=tuple(tfh.RUNTIME[tfh.runtime_name(spec)]["constraints"]))
    return fitting_user_data(spec, tfh.MATERIAL, options)


@pytest.mark.parametrize("mode", ["tcp", "http", "http-staging"])
def test_droplet_user_data_is_inletsctls_for_digitalocean(applied: dict[str, Any], mode: str) -> None:
    expected, push = inletsctl_user_data(mode)
    got = applied[mode]
    assert got["droplet"]["user_data"] == expected
    assert got["wheel"]["delivery"] == ("push" if push else "embed")
    assert "inlets" in got["droplet"]["tags"] and f"inlets-mode:{inletsctl_spec(mode).mode}" in got["droplet"]["tags"]
    assert ("--letsencrypt-domain example.com" in expected) == mode.startswith("http"), "inletsctl's default changed"


def test_the_wheel_is_sent_exactly_when_it_is_not_in_the_user_data(applied: dict[str, Any]) -> None:
    deliveries = {mode: applied[mode]["wheel"]["delivery"] for mode in applied}
    assert deliveries == {"tcp": "push", "http": "push", "tcp-embedded": "embed", "http-staging": "push"}, deliveries
    for mode, delivery in deliveries.items():
        pushed = applied[mode]["pushed"]
        if delivery == "embed":
            assert pushed is None, f"{mode}: the push step ran for an embedded wheel"
            continue
        assert pushed is not None, f"{mode}: the wheel is not in the user-data and nothing sent it"
        script, where, wheel_digest, token_digest = pushed.splitlines()
        assert script.endswith("/tools/push_wheel.py"), script
        assert where == "host=127.0.0.1 port=8123 timeout=7"
        runtime = tfh.RUNTIME[tfh.runtime_name(inletsctl_spec(mode))]
        assert wheel_digest.split()[0] == hashlib.sha256(runtime["wheel_xz_base64"].encode()).hexdigest()
        assert token_digest.split()[0] == hashlib.sha256(tfh.MATERIAL.token.encode()).hexdigest()


@pytest.mark.parametrize("folder", ["inlets tools", "bob's inlets"])
def test_the_push_step_runs_push_wheel_py_from_a_folder_whose_path_has_a_space(folder: str, tmp_path: Path) -> None:
    """The module's path is relative to the root module: from ~/infra, source = "../inlets tools/terraform/..."
    split the unquoted script path in two, and apply failed (python3: can't open file '../inlets') after
    making the droplet; now the push step gets push_wheel.py's path as one word."""
    if tfh.TERRAFORM is None:
        pytest.skip(tfh.NO_TERRAFORM)
    ws = tfh.workspace(tmp_path / folder)
    stand_in(ws)
    recorder = tmp_path / "python"
    recorder.write_text(RECORDER)
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    root = tmp_path / "root"
    tfh.apply_root(root, {"exit": {"source": f"../{folder}/terraform/{MODULE}", "name": "tf-do-space", "ports": [80, 443],
                                   "python": str(recorder), "push_timeout": 7}},
                   {"wheel": ("${module.exit.wheel}", False)})
    script = recorder.with_name("python.log").read_text().splitlines()[0]
    assert (root / script).resolve() == (ws / "tools/push_wheel.py").resolve(), script


#: every input with a default other than null: null, as a wrapper module passes an input it leaves unset, is that default
DEFAULTED = ["region", "size", "image", "ssh_keys", "mode", "domains", "control_port", "letsencrypt_issuer", "wheel_delivery",
             "deliver_wheel", "python", "push_timeout", "client_token_file", "client_ca_file", "tags"]


def test_null_inputs_take_the_default_and_a_push_timeout_must_be_positive(applied: dict[str, Any]) -> None:
    """Null inputs stopped plan with Terraform's "argument must not be null"; push_timeout 0 or less passed plan,
    then apply made the droplet and push_wheel.py gave up at once (inletsctl refuses --timeout 0); an empty client
    file path was refused under the client command module's name. Planned in the applied TCP root (default inputs
    but ports, python and push_timeout, which only the push step reads)."""
    root = applied["tcp"]["root"]
    config_file = root / "main.tf.json"
    applied_config = config_file.read_text()
    config = json.loads(applied_config)
    try:
        config["module"]["exit"].update(dict.fromkeys(DEFAULTED))
        config_file.write_text(json.dumps(config, indent=1))
        proc = tfh.tf(root, "plan", "-input=false", "-detailed-exitcode", check=False)
        assert proc.returncode == 0, f"null inputs are not the defaults the droplet was made with:\n{proc.stdout}{proc.stderr}"
        for timeout in (0, -5):
            config["module"]["exit"]["push_timeout"] = timeout
            config_file.write_text(json.dumps(config, indent=1))
            proc = tfh.tf(root, "plan", "-input=false", check=False)
            assert proc.returncode == 1 and "The push_timeout must be a positive number of seconds" in proc.stderr, (
                f"push_timeout {timeout}:\n{proc.stdout}{proc.stderr}")
        config["module"]["exit"]["push_timeout"] = None
        for name in ("client_token_file", "client_ca_file"):  # refused under the client module's name, not this one's
            config["module"]["exit"][name] = ""
            config_file.write_text(json.dumps(config, indent=1))
            proc = tfh.tf(root, "plan", "-input=false", check=False)
            assert proc.returncode == 1 and f"The {name} is empty" in proc.stderr, f"{name} '':\n{proc.stdout}{proc.stderr}"
            config["module"]["exit"][name] = None
    finally:
        config_file.write_text(applied_config)


def test_a_bad_name_is_refused_naming_the_input(applied: dict[str, Any]) -> None:
    """A name inletsctl refuses was one line that did not say which input it was about ("Use 1-63 lower-case
    letters..."); now it names the name and gives one to copy. Planned in the applied TCP root."""
    root = applied["tcp"]["root"]
    config_file = root / "main.tf.json"
    applied_config = config_file.read_text()
    config = json.loads(applied_config)
    try:
        for bad in ("My_Exit", "", "-exit", "x" * 64):
            config["module"]["exit"]["name"] = bad
            config_file.write_text(json.dumps(config, indent=1))
            proc = tfh.tf(root, "plan", "-input=false", check=False)
            assert proc.returncode == 1 and "The name must be 1-63 lower-case letters" in proc.stderr, f"{bad!r}:\n{proc.stderr}"
    finally:
        config_file.write_text(applied_config)


def test_a_ttl_set_later_counts_from_the_new_droplet(tmp_path: Path) -> None:
    """A ttl added (or changed) after the first apply replaces the droplet (its user-data changes): the
    new droplet's expiry counts from then, not from the first droplet's creation (an expiry, and an
    inlets-expires tag, already in the past)."""
    if tfh.TERRAFORM is None:
        pytest.skip(tfh.NO_TERRAFORM)
    import datetime
    import time

    ws = tfh.workspace(tmp_path)
    stand_in(ws)
    inputs = {"source": f"../{MODULE}", "name": "tf-do-ttl", "package": "inlets-py==0.1.0"}
    outputs = {"expires_at": ("${module.exit.expires_at}", False)}
    assert tfh.apply_root(ws / "root", {"exit": inputs}, outputs).get("expires_at") is None
    time.sleep(2.1)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    first = tfh.apply_root(ws / "root", {"exit": {**inputs, "ttl": "1h"}}, outputs)["expires_at"]
    expires = datetime.datetime.strptime(first, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert expires >= before + datetime.timedelta(hours=1), f"{first} counts from before the ttl was set ({before})"
    time.sleep(1.1)
    assert tfh.apply_root(ws / "root", {"exit": {**inputs, "ttl": "1h"}}, outputs)["expires_at"] == first, "not pinned"
    time.sleep(1.1)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    later = tfh.apply_root(ws / "root", {"exit": {**inputs, "ttl": "2h"}}, outputs)["expires_at"]
    expires = datetime.datetime.strptime(later, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert expires >= before + datetime.timedelta(hours=2), f"{later} counts from before the ttl changed ({before})"


def planned_action(root: Path, address: str) -> list[str]:
    """What ``terraform plan`` of ``root`` would do to ``address`` (e.g. ["delete", "create"]: replace)."""
    tfh.tf(root, "plan", "-input=false", "-out=tfplan")
    plan = json.loads(tfh.tf(root, "show", "-json", "tfplan").stdout)
    return next(c["change"]["actions"] for c in plan["resource_changes"] if c["address"] == address)


def test_every_droplet_replacement_takes_a_new_creation_time(tmp_path: Path) -> None:
    """The ttl counts from the droplet it runs on: a change that replaces the droplet (its user-data:
    ports, mode, control port, runtime; or its region, image, SSH keys) takes a new creation time, so
    the new droplet's expiry is not the first droplet's; a change made in place (size, tags) keeps it."""
    if tfh.TERRAFORM is None:
        pytest.skip(tfh.NO_TERRAFORM)
    import datetime
    import time

    ws = tfh.workspace(tmp_path)
    stand_in(ws)
    inputs = {"source": f"../{MODULE}", "name": "tf-do-replace", "package": "inlets-py==0.1.0", "ttl": "1h",
              "ports": [80, 443]}
    outputs = {"expires_at": ("${module.exit.expires_at}", False)}
    first = tfh.apply_root(ws / "root", {"exit": inputs}, outputs)["expires_at"]
    time.sleep(1.1)  # creation times have whole seconds
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    later = tfh.apply_root(ws / "root", {"exit": {**inputs, "ports": [80, 443, 5432]}}, outputs)["expires_at"]
    expires = datetime.datetime.strptime(later, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert expires >= before + datetime.timedelta(hours=1), (
        f"the droplet replaced for its ports keeps the first one's expiry {first}, not its own ({before} + 1h)")

    applied = {**inputs, "ports": [80, 443, 5432]}
    config = json.loads((ws / "root/main.tf.json").read_text())
    changes = {
        "mode": ({"mode": "http", "ports": None, "wheel_delivery": "push"}, True),
        "control_port": ({"control_port": 9443}, True),
        "runtime": ({"package": "inlets-py==0.2.0"}, True),
        "region": ({"region": "ams3"}, True),
        "image": ({"image": "ubuntu-22-04-x64"}, True),
        "ssh_keys": ({"ssh_keys": ["12345"]}, True),
        "size": ({"size": "s-2vcpu-2gb"}, False),
        "tags": ({"tags": ["team-a"]}, False),
        "same ttl, other words": ({"ttl": "60m"}, False),
    }
    for what, (change, replaced) in changes.items():
        config["module"]["exit"] = tfh.hcl_json({**applied, **change})
        (ws / "root/main.tf.json").write_text(json.dumps(config, indent=1))
        action = planned_action(ws / "root", "module.exit.terraform_data.created_at")
        assert (action == ["delete", "create"]) == replaced, f"{what}: created_at planned {action}"
