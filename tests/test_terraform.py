"""Terraform modules (issue 7): the same user-data and client command as inletsctl, byte for byte.

Terraform runs offline: every run gets its own CLI configuration whose only provider
source is a local filesystem mirror (never the registry), so the provider-free modules
always run and the provider modules are validated only where their providers are
present on this machine (otherwise skipped, saying which are missing).
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from inlets_py.provisioner.create import CreateOptions, _letsencrypt
from inlets_py.provisioner.material import Material, generate
from inlets_py.provisioner.render import UserDataOptions, client_command, fitting_user_data, user_data, wheel_xz_base64
from inlets_py.provisioner.spec import TunnelSpec, build_spec, parse_ttl
from inlets_py.provisioner.wheel import DIST, build_runtime_wheel, version
from inlets_py.runtime.core.certs import Pem
from helpers.tunnel import free_port

ROOT = Path(__file__).resolve().parent.parent
TF_DIR = ROOT / "terraform"
TERRAFORM = shutil.which("terraform") or ("/usr/local/bin/terraform" if os.access("/usr/local/bin/terraform", os.X_OK) else None)
NO_TERRAFORM = "terraform is not installed (expected at /usr/local/bin/terraform or on PATH)"
#: where provider plugins may already be on this machine (Terraform's implied local
#: mirror folders, the plugin cache, and this image's mirror); INLETS_TF_PLUGIN_DIRS adds more
PLUGIN_DIRS = [
    *filter(None, os.environ.get("INLETS_TF_PLUGIN_DIRS", "").split(os.pathsep)),
    os.environ.get("TF_PLUGIN_CACHE_DIR", ""),
    str(Path.home() / ".terraform.d/plugins"),
    str(Path.home() / ".local/share/terraform/plugins"),
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
    "/opt/tf-plugins",
]
CREATED = "2030-01-02T03:04:05Z"
MATERIAL = generate("terraform-test")
PINNED = f"{DIST}=={version()}"  # inletsctl's default package spec, and the Terraform modules'


# ---------------------------------------------------------------- running terraform


def plugin_dirs() -> list[Path]:
    return [Path(d) for d in dict.fromkeys(PLUGIN_DIRS) if d and Path(d).is_dir()]


def available_providers() -> dict[str, Path]:
    """``namespace/type`` -> mirror folder, for providers unpacked for this platform."""
    found: dict[str, Path] = {}
    for base in plugin_dirs():
        for binary in base.glob("registry.terraform.io/*/*/*/linux_amd64/terraform-provider-*"):
            namespace, kind = binary.parts[-5], binary.parts[-4]
            found.setdefault(f"{namespace}/{kind}", base)
    return found


def offline_env(tmp: Path) -> dict[str, str]:
    """Terraform that installs providers only from the local mirrors and never phones home."""
    mirrors = "".join(f'  filesystem_mirror {{\n    path = "{d}"\n  }}\n' for d in plugin_dirs())
    if not mirrors:  # an empty provider_installation block would mean "direct": point at nothing instead
        (tmp / "no-plugins").mkdir(exist_ok=True)
        mirrors = f'  filesystem_mirror {{\n    path = "{tmp / "no-plugins"}"\n  }}\n'
    config = tmp / "terraformrc"
    config.write_text(f"disable_checkpoint = true\nprovider_installation {{\n{mirrors}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(TF_CLI_CONFIG_FILE=str(config), TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1", TF_INPUT="0")
    return env


def tf(workdir: Path, *args: str, check: bool = True, timeout: float = 60,
       debug_log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``debug_log``: where Terraform and its providers write their debug log (TF_LOG=DEBUG), each request too."""
    assert TERRAFORM is not None
    env = offline_env(workdir.parent)
    if debug_log is not None:
        env.update(TF_LOG="DEBUG", TF_LOG_PATH=str(debug_log))
    proc = subprocess.run(
        [TERRAFORM, f"-chdir={workdir}", *args, "-no-color"],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, f"terraform {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def workspace(tmp: Path) -> Path:
    """A copy of terraform/ in ``tmp`` (runs leave .terraform folders and state there, not in the repo)."""
    shutil.copytree(TF_DIR, tmp / "terraform", ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return tmp / "terraform"


def hcl_json(value: Any) -> Any:
    """A value for a .tf.json file, where strings are templates: escape ``${`` and ``%{``."""
    if isinstance(value, str):
        return value.replace("${", "$${").replace("%{", "%%{")
    if isinstance(value, list):
        return [hcl_json(v) for v in value]
    if isinstance(value, dict):
        return {k: hcl_json(v) for k, v in value.items()}
    return value


def apply_root(root: Path, modules: dict[str, dict[str, Any]], outputs: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """``terraform init && apply`` of a provider-free root module; returns its outputs."""
    config: dict[str, Any] = {"module": {}, "output": {}}
    for name, inputs in modules.items():
        inputs = dict(inputs)
        config["module"][name] = {"source": inputs.pop("source"), **hcl_json(inputs)}
    for name, (expr, sensitive) in outputs.items():
        config["output"][name] = {"value": expr, "sensitive": sensitive}
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.tf.json").write_text(json.dumps(config, indent=1))
    tf(root, "init", "-input=false", "-backend=false")
    tf(root, "apply", "-auto-approve", "-input=false")
    result = tf(root, "output", "-json")
    return {name: out["value"] for name, out in json.loads(result.stdout).items()}


# ---------------------------------------------------------------- the variants compared


WHEEL = build_runtime_wheel()
#: the module's default runtime per mode (and HTTP with Let's Encrypt): the server wheel and the constraints pinned when it was generated
RUNTIME = {name: json.loads((TF_DIR / f"modules/inlets-userdata/runtime/{name}.json").read_text())
           for name in ("tcp", "http", "http-letsencrypt")}
WEIRD = Material(
    token="tok-" + "x" * 60,
    ca_cert=MATERIAL.ca_cert,
    server=Pem(
        # CRLF line ends, whitespace (and a Python-only whitespace character, \x1c) around,
        # a blank line inside: trim and indent must treat them exactly as jinja does
        cert=b" \x1c\t" + MATERIAL.server.cert.replace(b"\n", b"\r\n") + b"\r\n\r\n ",
        key=MATERIAL.server.key.replace(b"-----\n", b"-----\n\n", 1) + b"\n\n",
    ),
)


def messy_ca_bundle() -> str:
    """A private ACME CA's bundle as people have them: openssl's Bag Attributes, CRLF, base64 wrapped at 76,
    a key block, an indented X509 CERTIFICATE block; inletsctl writes the certificates alone, re-wrapped."""
    first = MATERIAL.ca_cert.decode().split("\n")
    body = "".join(first[1:-2])
    second = generate("terraform-test-2").ca_cert.decode().replace("CERTIFICATE", "X509 CERTIFICATE")
    return ("Bag Attributes\r\n    friendlyName: step-ca root\r\nsubject=/CN=root\r\n" + first[0] + "\r\n"
            + "\r\n".join(body[i:i + 76] for i in range(0, len(body), 76)) + "\r\n" + first[-2] + "\r\n"
            + MATERIAL.server.key.decode() + "".join(f"  {line}\n" for line in second.splitlines()) + "\n\n")


LE_CA = messy_ca_bundle()
#: name -> (build_spec args, Terraform-only inputs, user_data options, material); "le": inletsctl create's
#: Let's Encrypt options (its default rule for a cloud provider applies to every variant, as in the module)
VARIANTS: dict[str, dict[str, Any]] = {
    # the TCP wheel embedded no longer fits DigitalOcean's 64 KiB (the module's default limit) either: GCE's 256 KiB
    "tcp_defaults": {"spec": ("tcp", None, []), "tf": {"limit": 256 * 1024}},
    "tcp_low_high_ports_ttl": {
        "spec": ("tcp", "25,80,443,5432", []), "tf": {"ports": [25, 80, 443, 5432], "ttl": "1d2h", "limit": 256 * 1024}, "ttl": "1d2h",
    },
    "tcp_control_port_runtime_spec": {
        "spec": ("tcp", "443", []), "spec_kw": {"control_port": 9443},
        "tf": {"ports": [443], "control_port": 9443, "package": "inlets-py @ https://example.com/inlets_py-0.1.0-py3-none-any.whl"},
        "package": "inlets-py @ https://example.com/inlets_py-0.1.0-py3-none-any.whl",
    },
    # the HTTP wheel embedded needs more than DigitalOcean's 64 KiB (the module's default limit): GCE's 256 KiB
    "http_domains_no_letsencrypt": {"spec": ("http", None, ["example.com", "api.example.com"]), "le": {"letsencrypt": False},
                                    "tf": {"mode": "http", "domains": ["example.com", "api.example.com"], "limit": 256 * 1024,
                                           "letsencrypt": False}},
    # Let's Encrypt: on by default for domains on port 80, as inletsctl create on a cloud provider
    "http_letsencrypt_default_domains": {
        "spec": ("http", None, ["example.com", "API.example.com.", "www.example.com", "example.com"]),
        "tf": {"mode": "http", "domains": ["example.com", "API.example.com.", "www.example.com", "example.com"],
               "limit": 256 * 1024},
    },
    "http_letsencrypt_email_staging_ttl": {
        "spec": ("http", None, ["tunnel.example.org"]), "le": {"letsencrypt_email": "ops+tunnel@example.org", "letsencrypt_issuer": "staging"},
        "tf": {"mode": "http", "domains": ["tunnel.example.org"], "letsencrypt_email": "ops+tunnel@example.org",
               "letsencrypt_issuer": "staging", "ttl": "2h", "limit": 256 * 1024}, "ttl": "2h",
    },
    # words systemd needs quoted: the module quotes them as systemd_quote.exec_word() does
    "http_letsencrypt_quoted_email_issuer_url": {
        "spec": ("http", None, ["example.com"]), "le": {"letsencrypt": True, "letsencrypt_email": "o'neil&\"co\\%x$y@example.com",
                                                         "letsencrypt_issuer": "https://acme.example.test:14000/dir?a=%41&b=$x#frag"},
        "tf": {"mode": "http", "domains": ["example.com"], "letsencrypt": True, "letsencrypt_email": "o'neil&\"co\\%x$y@example.com",
               "letsencrypt_issuer": "https://acme.example.test:14000/dir?a=%41&b=$x#frag", "wheel_delivery": "push"}, "push": True,
    },
    # a private ACME CA (step-ca, pebble): its root, as inletsctl create --letsencrypt-ca writes it
    "http_letsencrypt_private_ca": {
        "spec": ("http", None, ["tunnel.example.org"]),
        "le": {"letsencrypt_issuer": "https://ca.internal.example:9000/acme/acme/directory", "letsencrypt_ca": LE_CA},
        "tf": {"mode": "http", "domains": ["tunnel.example.org"], "letsencrypt_issuer": "https://ca.internal.example:9000/acme/acme/directory",
               "letsencrypt_ca": LE_CA, "wheel_delivery": "push"}, "push": True,
    },
    "http_letsencrypt_auto_digitalocean": {
        "spec": ("http", None, ["example.com"]),
        "tf": {"mode": "http", "domains": ["example.com"], "wheel_delivery": "auto", "limit": 64 * 1024}, "auto": 64 * 1024,
    },
    "http_letsencrypt_auto_gce": {
        "spec": ("http", None, ["example.com"]),
        "tf": {"mode": "http", "domains": ["example.com"], "wheel_delivery": "auto", "limit": 256 * 1024}, "auto": 256 * 1024,
    },
    "http_catch_all_port_ttl": {
        "spec": ("http", None, []), "spec_kw": {"http_port": 8080},
        "tf": {"mode": "http", "http_port": 8080, "ttl": "45s", "limit": 256 * 1024}, "ttl": "45s",
    },
    "tcp_given_wheel_ttl": {
        "spec": ("tcp", "80,443", []), "tf": {"ports": [80, 443], "ttl": "90m", "wheel": True, "limit": 256 * 1024}, "ttl": "90m", "wheel": True,
    },
    "http_pushed_wheel": {"spec": ("http", None, ["example.com"]), "le": {"letsencrypt": False},
                          "tf": {"mode": "http", "domains": ["example.com"], "wheel_delivery": "push", "letsencrypt": False},
                          "push": True},
    "tcp_odd_pem_whitespace": {"spec": ("tcp", "2222", []), "tf": {"ports": [2222], "limit": 256 * 1024}, "material": WEIRD},
    # wheel_delivery = "auto" chooses as inletsctl create does (fitting_user_data): GCE's 256 KiB holds the
    # wheels, DigitalOcean's 64 KiB (with the 4 KiB margin) neither the TCP nor the HTTP one
    "tcp_auto_gce": {"spec": ("tcp", None, []), "tf": {"wheel_delivery": "auto", "limit": 256 * 1024}, "auto": 256 * 1024},
    "tcp_auto_digitalocean": {"spec": ("tcp", None, []), "tf": {"wheel_delivery": "auto", "limit": 64 * 1024}, "auto": 64 * 1024},
    "http_auto_digitalocean": {"spec": ("http", None, ["example.com"]), "le": {"letsencrypt": False},
                               "tf": {"mode": "http", "domains": ["example.com"], "wheel_delivery": "auto", "limit": 64 * 1024,
                                      "letsencrypt": False}, "auto": 64 * 1024},
    # the userdata module with its defaults (wheel_delivery auto, DigitalOcean's 64 KiB): inletsctl create's choice
    "tcp_module_defaults": {"spec": ("tcp", None, []), "tf": {}, "auto": 64 * 1024},
    "tcp_auto_small_limit": {"spec": ("tcp", "443", []), "tf": {"ports": [443], "wheel_delivery": "auto", "limit": 16 * 1024},
                             "auto": 16 * 1024},
}


def variant_spec(name: str) -> TunnelSpec:
    """The variant's spec as ``inletsctl create --provider digitalocean`` builds it: Let's Encrypt by its own rule."""
    v = VARIANTS[name]
    mode, ports, domains = v["spec"]
    kw = dict(v.get("spec_kw", {}))
    le = dict(v.get("le", {}))
    with tempfile.TemporaryDirectory() as tmp:
        if "letsencrypt_ca" in le:  # --letsencrypt-ca takes a file
            (Path(tmp) / "ca.pem").write_text(le["letsencrypt_ca"], newline="")
            le["letsencrypt_ca"] = Path(tmp) / "ca.pem"
        opts = CreateOptions(provider="digitalocean", state_root=Path("."), mode=mode, ports=ports, domains=list(domains),
                             http_port=kw.get("http_port"), **le)
        letsencrypt = _letsencrypt(opts, kw.get("http_port", 80))
    return build_spec(mode, ports, domains, **kw, letsencrypt=letsencrypt)


def runtime_name(spec: TunnelSpec) -> str:
    return "http-letsencrypt" if spec.letsencrypt is not None else spec.mode


def python_user_data(name: str) -> str:
    v = VARIANTS[name]
    spec = variant_spec(name)
    created = datetime.datetime.fromisoformat(CREATED.replace("Z", "+00:00"))
    runtime = RUNTIME[runtime_name(spec)]
    wheel = build_runtime_wheel(spec.mode, letsencrypt=spec.letsencrypt is not None)
    assert wheel_xz_base64(wheel) == runtime["wheel_xz_base64"], "stale: run python scripts/gen_terraform_template.py"
    options = UserDataOptions(
        name=name, package=v.get("package", ""), wheel=None if v.get("package") else WHEEL if v.get("wheel") else wheel,
        expires_at=created + parse_ttl(v["ttl"]) if v.get("ttl") else None, push=bool(v.get("push")),
        constraints=tuple(runtime["constraints"]),
    )
    if "limit" in v["tf"]:
        options = replace(options, limit=v["tf"]["limit"])
    if v.get("auto"):
        return fitting_user_data(spec, v.get("material", MATERIAL), replace(options, limit=v["auto"]))[0]
    return user_data(spec, v.get("material", MATERIAL), options)


def inletsctl_pushes(name: str) -> bool:
    """Whether inletsctl create sends the wheel rather than embedding it, for an "auto" variant."""
    v = VARIANTS[name]
    spec = variant_spec(name)
    options = UserDataOptions(name=name, package="", wheel=build_runtime_wheel(spec.mode, letsencrypt=spec.letsencrypt is not None),
                              limit=v["auto"], constraints=tuple(RUNTIME[runtime_name(spec)]["constraints"]))
    return fitting_user_data(spec, v.get("material", MATERIAL), options)[1]


def terraform_inputs(name: str) -> dict[str, Any]:
    v = VARIANTS[name]
    material: Material = v.get("material", MATERIAL)
    inputs: dict[str, Any] = {
        "source": "../modules/inlets-userdata", "name": name, "token": material.token,
        "server_cert": material.server.cert.decode(), "server_key": material.server.key.decode(),
        "created_at": CREATED,
    }
    extra = dict(v["tf"])
    if extra.pop("wheel", False):
        inputs["wheel_filename"] = WHEEL.filename
        inputs["wheel_xz_base64"] = wheel_xz_base64(WHEEL)
        inputs["wheel_sha256"] = WHEEL.sha256
    inputs.update(extra)
    return inputs


#: client command cases: name -> (build_spec args and kwargs, host, token file, ca file, Terraform inputs)
CLIENT_CASES: dict[str, tuple[tuple[Any, ...], dict[str, Any], str, str, str, dict[str, Any]]] = {
    "tcp_ipv4": (("tcp", "80,443", []), {}, "203.0.113.10", "/home/me/.config/inletsctl/brave/token", "ca.crt",
                 {"ports": [80, 443]}),
    "tcp_ipv6_upstream_spaces": (("tcp", "22", []), {"upstream": "192.168.1.10", "control_port": 9000}, "2001:db8::10",
                                 "/home/me/my tokens/it's here", "inlets-ca.crt",
                                 {"ports": [22], "upstream": "192.168.1.10", "control_port": 9000}),
    "http_domains": (("http", None, ["Example.COM.", "api.example.com", "example.com"]), {"upstream": "http://127.0.0.1:3000"},
                     "198.51.100.7", "inlets-token", "inlets-ca.crt",
                     {"mode": "http", "domains": ["Example.COM.", "api.example.com", "example.com"], "upstream": "http://127.0.0.1:3000"}),
    "http_catch_all_odd_url": (("http", None, []), {"upstream": "http://[::1]:8080"}, "198.51.100.8",
                               "inlets-token", "inlets-ca.crt", {"mode": "http", "upstream": "http://[::1]:8080"}),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every variant and client case rendered by Terraform in one apply of a local-only root module."""
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    ws = workspace(tmp_path_factory.mktemp("tf-render"))
    modules: dict[str, dict[str, Any]] = {f"ud_{n}": terraform_inputs(n) for n in VARIANTS}
    outputs = {f"ud_{n}": (f"${{module.ud_{n}.user_data}}", True) for n in VARIANTS}
    outputs |= {f"meta_{n}": (f"${{[module.ud_{n}.expires_at, module.ud_{n}.expires_unix, module.ud_{n}.firewall_ports, "
                              f"module.ud_{n}.wheel == null ? null : module.ud_{n}.wheel.delivery, module.ud_{n}.letsencrypt]}}", False)
                for n in VARIANTS}
    for case, (_, _, host, token_file, ca_file, extra) in CLIENT_CASES.items():
        modules[f"cc_{case}"] = {"source": "../modules/inlets-client-command", "host": host, "token_file": token_file,
                                 "ca_file": ca_file, **extra}
        outputs[f"cc_{case}"] = (f"${{module.cc_{case}.command}}", False)
    return apply_root(ws / "harness", modules, outputs)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_terraform_user_data_is_byte_identical_to_inletsctl(rendered: dict[str, Any], variant: str) -> None:
    expected = python_user_data(variant)
    got = rendered[f"ud_{variant}"]
    assert got.encode() == expected.encode(), "\n".join(
        __import__("difflib").unified_diff(expected.splitlines(), got.splitlines(), "inletsctl", "terraform", lineterm="")
    )


def test_expiry_and_firewall_outputs_match_inletsctl(rendered: dict[str, Any]) -> None:
    from inlets_py.provisioner.providers.base import expiry_tag

    created = datetime.datetime.fromisoformat(CREATED.replace("Z", "+00:00"))
    for name, v in VARIANTS.items():
        expires_at, expires_unix, firewall, _, letsencrypt = rendered[f"meta_{name}"]
        spec = variant_spec(name)
        assert letsencrypt == (spec.letsencrypt is not None), name
        if v.get("ttl"):
            when = created + parse_ttl(v["ttl"])
            assert expires_at == when.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert f"inlets-expires:{expires_unix}" == expiry_tag(when)
        else:
            assert expires_at is None and expires_unix is None
        wanted = {spec.control_port, *spec.ports} if spec.mode == "tcp" else {spec.http_port, 443, spec.control_port}
        assert sorted(firewall) == sorted(wanted), name
    assert sorted(rendered["meta_tcp_low_high_ports_ttl"][2]) == [25, 80, 443, 5432, 8123]  # under 1024 included


def test_auto_delivery_is_inletsctls_choice(rendered: dict[str, Any]) -> None:
    """The wheel output says how the wheel gets there: inletsctl's choice for the same limit (the user-data
    itself is compared above), so the DigitalOcean module knows whether to send it."""
    chosen = {name: rendered[f"meta_{name}"][3] for name, v in VARIANTS.items() if v.get("auto")}
    assert chosen == {name: "push" if inletsctl_pushes(name) else "embed" for name in chosen}
    assert set(chosen.values()) == {"embed", "push"}, f"the auto variants no longer try both choices: {chosen}"
    for name in chosen:
        assert ("receive-wheel.py" in rendered[f"ud_{name}"]) == (chosen[name] == "push"), name


@pytest.mark.parametrize("case", sorted(CLIENT_CASES))
def test_terraform_client_command_is_inletsctls(rendered: dict[str, Any], case: str) -> None:
    args, kwargs, host, token_file, ca_file, _ = CLIENT_CASES[case]
    expected = client_command(build_spec(*args, **kwargs), host, token_file, ca_file)
    assert rendered[f"cc_{case}"] == expected


def test_the_comparison_catches_a_difference(rendered: dict[str, Any]) -> None:
    """A control: one changed input is a different document, so equality above means something."""
    spec = build_spec("tcp", "2222", [])
    other = user_data(spec, MATERIAL, UserDataOptions(name="tcp_odd_pem_whitespace", package=PINNED))
    assert rendered["ud_tcp_odd_pem_whitespace"] != other


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_terraform_user_data_passes_cloud_init_schema(rendered: dict[str, Any], variant: str, tmp_path: Path) -> None:
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip("cloud-init is not installed (scripts/install-test-tools.sh installs Debian's cloud-init)")
    path = tmp_path / "user-data.yaml"
    path.write_text(rendered[f"ud_{variant}"])
    result = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr


def test_wheel_tool_makes_the_inputs_the_comparison_used() -> None:
    """terraform/tools/wheel_xz_base64.py prints the embedded-wheel inputs that render as inletsctl does."""
    proc = subprocess.run([sys.executable, str(TF_DIR / "tools/wheel_xz_base64.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    inputs = terraform_inputs("tcp_given_wheel_ttl")
    assert json.loads(proc.stdout) == {k: inputs[k] for k in ("wheel_filename", "wheel_sha256", "wheel_xz_base64")}


def test_generated_templates_are_current() -> None:
    """templates/*.j2 changed without regenerating: run python scripts/gen_terraform_template.py."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_terraform_template.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generator_refuses_constructs_it_cannot_translate() -> None:
    spec = importlib.util.spec_from_file_location("gen_terraform_template", ROOT / "scripts/gen_terraform_template.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    from inlets_py.runtime.generate.templating import environment

    for source in ("{{ name | upper }}", "{% for x in units %}a{% else %}b{% endfor %}", "{{ undefined_thing }}", "{% if name is defined %}{% endif %}"):
        with pytest.raises(gen.Unsupported):
            gen.Translator("inline", {"name": "string", "units": "list"}).body(environment.parse(source).body)


def test_generated_certificates_last_as_long_as_inletsctls() -> None:
    """The tls provider's server certificate lasts as long as its CA, as inletsctl's (runtime/core/certs.py): at
    825 days the server stopped accepting clients 2.3 years in. Read from the module's text: its providers are
    not installed offline here, so ``terraform validate`` of it may skip."""
    from inlets_py.runtime.core.certs import CA_VALIDITY

    text = (TF_DIR / "modules/inlets-secrets/main.tf").read_text()
    hours = {}
    for resource in ("tls_self_signed_cert", "tls_locally_signed_cert"):
        body = re.search(rf'^resource "{resource}" "\w+" \{{(.*?)^\}}', text, re.M | re.S)
        assert body, resource
        product = re.search(r"^\s*validity_period_hours\s*=\s*(\d+)\s*\*\s*(\d+)\b", body.group(1), re.M)
        assert product, f"{resource}: validity_period_hours is not DAYS * 24"
        hours[resource] = int(product.group(1)) * int(product.group(2))
    assert hours == dict.fromkeys(hours, CA_VALIDITY // datetime.timedelta(hours=1)), hours


@pytest.mark.parametrize("doc", ["README.md", "terraform/README.md", "terraform/examples/aws/main.tf",
                                 "terraform/examples/digitalocean/main.tf"])
def test_the_token_the_docs_write_is_never_readable_by_others(doc: str, tmp_path: Path) -> None:
    """``terraform output -raw token > inlets-token && chmod 600 inlets-token`` made the file 0644 (umask 022) while
    terraform wrote the token into it: another user who opened it then kept reading it. Each doc's line, run in a
    shell with umask 022 and a stand-in terraform that notes the file's mode as it writes, makes it 0600 from the
    start."""
    (line,) = [text.strip() for text in (ROOT / doc).read_text().splitlines() if "terraform output -raw token >" in text]
    fake = tmp_path / "bin" / "terraform"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nstat -c %a inlets-token > mode-while-written\nprintf tok-Zq81\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["sh", "-ec", f"umask 022\n{line}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "mode-while-written").read_text().strip() == "600", line
    token = tmp_path / "inlets-token"
    assert token.read_text() == "tok-Zq81" and token.stat().st_mode & 0o777 == 0o600, line


def test_terraform_fmt_check() -> None:
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    proc = subprocess.run(
        [TERRAFORM, "fmt", "-check", "-recursive", "-diff", "-no-color", str(TF_DIR)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull},
    )
    assert proc.returncode == 0, "terraform fmt -check -recursive found unformatted files:\n" + proc.stdout + proc.stderr


def test_userdata_module_terraform_test(tmp_path: Path) -> None:
    """``terraform init`` + ``terraform test`` of the userdata module's .tftest.hcl files (no provider, no network)."""
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    ws = workspace(tmp_path)
    for module in ("inlets-userdata", "inlets-client-command"):
        tests = sorted((ws / "modules" / module / "tests").glob("*.tftest.hcl"))
        assert tests, f"{module} has no .tftest.hcl files"
        tf(ws / "modules" / module, "init", "-input=false", "-backend=false")
        proc = tf(ws / "modules" / module, "test", check=False, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        match = re.search(r"Success! (\d+) passed, (\d+) failed", proc.stdout)
        assert match and int(match.group(1)) >= 3 and match.group(2) == "0", proc.stdout


def test_userdata_module_refuses_a_token_or_key_without_printing_it(tmp_path: Path) -> None:
    """The userdata module used directly, the token and key given with file(): a token or key its checks refuse is
    refused with its message, and no line of the secret is in plan's output, read by people or as -json. Checked in
    validation blocks, both were printed: Terraform shows the value a validation tested, sensitive or not."""
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    ws = workspace(tmp_path)
    key = MATERIAL.server.key.decode()
    cases = {  # what the files hold: a token the token file reads as a comment; a key cut short
        "token": ("#" + MATERIAL.token + "\n", key, "The token must be 16 to 4096 printable ASCII characters"),
        "server_key": (MATERIAL.token + "\n", key[: len(key) // 2], "The server_key must be one whole unencrypted"),
    }
    for name, (token, server_key, words) in cases.items():
        root = ws / f"refused_{name}"
        root.mkdir()
        (root / "inlets-token").write_text(token)
        (root / "server.key").write_text(server_key)
        (root / "server.crt").write_bytes(MATERIAL.server.cert)
        (root / "main.tf").write_text(
            'module "ud" {\n  source      = "../modules/inlets-userdata"\n  name        = "refused"\n'
            '  token       = file("inlets-token")\n  server_cert = file("server.crt")\n'
            '  server_key  = file("server.key")\n}\n'
            'output "user_data" {\n  value     = module.ud.user_data\n  sensitive = true\n}\n')
        tf(root, "init", "-input=false", "-backend=false")
        secrets = [line.strip("#") for line in (token + server_key).splitlines() if line and "-----" not in line]
        assert MATERIAL.token in secrets and len(secrets) >= 3, secrets
        for json_output in (False, True):
            proc = tf(root, "plan", "-input=false", *(["-json"] if json_output else []), check=False, timeout=120)
            output = proc.stdout + proc.stderr
            assert proc.returncode != 0 and words in " ".join(output.split()), output
            assert not [s for s in secrets if s in output], f"plan printed the {name}:\n{output}"


#: --letsencrypt-issuer URLs at the edges of what inletsctl takes (directory_url, url_port): the scheme's case,
#: a port left empty, leading zeros, the port's range. The userdata module must take exactly the same ones.
ISSUER_EDGES = [
    "HTTPS://acme.example.com/dir", "hTTpS://acme.example.com:14000/dir", "https://acme.example.com:/dir",
    "https://acme.example.com:", "https://acme.example.com:08443/dir", "https://acme.example.com:00443?x=1",
    "https://acme.example.com:65535#f", "https://acme.example.com",
    "https://acme.example.com:00000/dir", "https://acme.example.com:000443/dir", "https://acme.example.com:0/dir",
    "https://acme.example.com:65536/dir", "https://acme.example.com:8443:1/dir", "https://acme.example.com:+443/dir",
    "http://acme.example.com/dir", "HTTP://acme.example.com/dir", "https:///dir", "https://acme.example.com/a b", "PROD",
]


def inletsctl_issuer_exec_start(issuer: str) -> str | None:
    """The server unit's ExecStart line ``inletsctl create --provider digitalocean --mode http --domain example.com
    --letsencrypt-issuer ISSUER`` renders, or None where inletsctl refuses the issuer."""
    from inlets_py.provisioner.errors import UsageError

    opts = CreateOptions(provider="digitalocean", state_root=Path("."), mode="http", ports=None, domains=["example.com"],
                         letsencrypt_issuer=issuer)
    try:
        spec = build_spec("http", None, ["example.com"], letsencrypt=_letsencrypt(opts, 80))
    except UsageError:
        return None
    document = user_data(spec, MATERIAL, UserDataOptions(name="issuer", package=PINNED))
    return next(line for line in document.splitlines() if "--letsencrypt-issuer" in line)


def test_userdata_module_takes_the_issuer_urls_inletsctl_takes(tmp_path: Path) -> None:
    """Each of ISSUER_EDGES is planned with the userdata module (one .tftest.hcl file each, as a file stops at its
    first failing run): refused where inletsctl refuses it, else rendered into inletsctl's ExecStart line."""
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    module = workspace(tmp_path) / "modules/inlets-userdata"
    inputs = {"name": "issuer", "token": MATERIAL.token, "server_cert": MATERIAL.server.cert.decode(),
              "server_key": MATERIAL.server.key.decode(), "mode": "http", "domains": ["example.com"], "package": PINNED}
    header = "variables {\n" + "".join(f"  {k} = {json.dumps(hcl_json(v))}\n" for k, v in inputs.items()) + "}\n"
    files = []
    for i, issuer in enumerate(ISSUER_EDGES):
        line = inletsctl_issuer_exec_start(issuer)
        check = ("  expect_failures = [var.letsencrypt_issuer]\n" if line is None else
                 f"  assert {{\n    condition     = strcontains(output.user_data, {json.dumps(hcl_json(line + chr(10)))})\n"
                 f"    error_message = {json.dumps(hcl_json(f'Not the ExecStart line inletsctl writes for {issuer}'))}\n  }}\n")
        name = f"tests/issuer_{i:02d}.tftest.hcl"
        (module / name).write_text(header + f'run "{"takes" if line else "refuses"}_issuer_{i:02d}" {{\n'
                                   f"  command = plan\n  variables {{\n    letsencrypt_issuer = {json.dumps(hcl_json(issuer))}\n  }}\n{check}}}\n")
        files.append(f"-filter={name}")
    assert {inletsctl_issuer_exec_start(u) is None for u in ISSUER_EDGES} == {True, False}
    tf(module, "init", "-input=false", "-backend=false")
    proc = tf(module, "test", *files, check=False, timeout=120)
    assert proc.returncode == 0 and f"Success! {len(files)} passed, 0 failed" in proc.stdout, proc.stdout + proc.stderr


# ---------------------------------------------------------------- provider modules


def required_providers(module: Path) -> set[str]:
    """``namespace/type`` of every provider a module (and the local modules it calls) requires."""
    found: set[str] = set()
    for tf_file in module.glob("*.tf"):
        found |= set(re.findall(r'source\s*=\s*"(?:registry\.terraform\.io/)?([a-z0-9-]+/[a-z0-9-]+)"', tf_file.read_text()))
        for sub in re.findall(r'source\s*=\s*"(\.\.?/[^"]+)"', tf_file.read_text()):
            found |= required_providers((module / sub).resolve())
    return found


PROVIDER_MODULES = ["modules/inlets-secrets", "modules/digitalocean-exit-server", "modules/aws-exit-server",
                    "examples/digitalocean", "examples/aws"]


@pytest.mark.parametrize("module", PROVIDER_MODULES)
def test_provider_module_validates(module: str, tmp_path: Path) -> None:
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    needed = required_providers(TF_DIR / module)
    assert needed, f"{module} declares no providers"
    have = available_providers()
    missing = sorted(needed - set(have))
    if missing:
        pytest.skip(
            f"terraform validate of {module} needs providers {', '.join(sorted(needed))}; not available offline here: "
            f"{', '.join(missing)} (looked in: {', '.join(str(d) for d in plugin_dirs()) or 'no plugin folder exists'})"
        )
    ws = workspace(tmp_path)
    tf(ws / module, "init", "-input=false", "-backend=false")
    tf(ws / module, "validate")


def plan_variables(module: str, root: Path, inputs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``terraform plan`` of ``module``'s variables.tf alone: its inputs' validation rules, run without the
    providers the module needs (the digitalocean one is not installed offline here)."""
    root.mkdir()
    shutil.copy(TF_DIR / module / "variables.tf", root)
    (root / "inputs.auto.tfvars.json").write_text(json.dumps(inputs))
    tf(root, "init", "-input=false", "-backend=false")
    return tf(root, "plan", "-input=false", check=False)


@pytest.mark.parametrize(("refused", "taken", "words"), [
    ({"tags": ["team:edge", "inlets-expires:1700000000"]}, {"tags": ["team:edge", "inlets-expires"]},
     "The tags must not set inlets-expires"),
    ({"python": "python3 -X utf8"}, {"python": "/Users/me/Library/Application Support/py's/bin/python3"},
     "The python must be one program"),
], ids=["inlets_expires_tag", "python_with_options"])
def test_digitalocean_module_refuses_at_plan(refused: dict[str, Any], taken: dict[str, Any], words: str, tmp_path: Path) -> None:
    """As the AWS module's terraform test checks there: an inlets-expires tag of yours (inletsctl sets it from --ttl
    alone; with ttl null yours was kept, and inletsctl list --prune deleted the droplet at its time), and options
    after python (one program, its path quoted: a path with a space works)."""
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    proc = plan_variables("modules/digitalocean-exit-server", tmp_path / "refused", {"name": "tftest", **refused})
    assert proc.returncode != 0 and words in " ".join(proc.stderr.split()), proc.stdout + proc.stderr
    proc = plan_variables("modules/digitalocean-exit-server", tmp_path / "taken", {"name": "tftest", **taken})
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- AWS module with the real aws provider
#
# This machine's plugin mirror may hold hashicorp/aws but not hashicorp/random and
# hashicorp/tls. The aws-exit-server module's own resources are still worth exercising
# with the real aws provider, so these tests swap the inlets-secrets module (the only
# user of random/tls) for a provider-free stand-in with the same variables and outputs,
# returning fixed material made by inletsctl's own code. Everything else is unchanged.


def secrets_stub(real: Path, material: Material) -> dict[str, Any]:
    """A provider-free module with ``real``'s variables and outputs (a .tf.json document)."""
    text = "\n".join(p.read_text() for p in real.glob("*.tf"))
    values = {
        "token": material.token, "ca_cert": material.ca_cert.decode(), "server_cert": material.server.cert.decode(),
        "server_key": material.server.key.decode(), "tls_server_name": "inlets-exit-server",
    }
    variables = {}
    for name, body in re.findall(r'^variable "(\w+)" \{(.*?)^\}', text, re.M | re.S):
        kind = re.search(r"^\s*type\s*=\s*(.+)$", body, re.M)
        variables[name] = {"type": kind.group(1).strip() if kind else "any"}
        if re.search(r"^\s*default\s*=", body, re.M):
            variables[name]["default"] = None
    outputs = {}
    for name, body in re.findall(r'^output "(\w+)" \{(.*?)^\}', text, re.M | re.S):
        assert name in values, f"secrets stub has no value for new output {name!r}: extend secrets_stub()"
        outputs[name] = {"value": hcl_json(values[name]), "sensitive": bool(re.search(r"sensitive\s*=\s*true", body))}
    assert set(variables) >= {"name", "token", "ca_cert", "server_cert", "server_key"}, variables
    return {"variable": variables, "output": outputs}


def aws_workspace(tmp: Path) -> Path:
    have = available_providers()
    if "hashicorp/aws" not in have:
        pytest.skip(f"hashicorp/aws is not available offline here (looked in: {', '.join(map(str, plugin_dirs())) or 'no plugin folder'})")
    ws = workspace(tmp)
    secrets = ws / "modules/inlets-secrets"
    for path in secrets.glob("*.tf"):
        path.unlink()
    (secrets / "main.tf.json").write_text(json.dumps(secrets_stub(TF_DIR / "modules/inlets-secrets", MATERIAL), indent=1))
    return ws


# modules/aws-exit-server itself is planned by test_aws_module_terraform_test and applied against moto
@pytest.mark.parametrize("module", ["examples/aws"])
def test_aws_module_validates_with_the_real_aws_provider(module: str, tmp_path: Path) -> None:
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    ws = aws_workspace(tmp_path)
    tf(ws / module, "init", "-input=false", "-backend=false")
    tf(ws / module, "validate")


def test_aws_module_terraform_test(tmp_path: Path) -> None:
    """``terraform test`` of the aws-exit-server module's inputs (tests/*.tftest.hcl): planned with a mocked aws
    provider, so no account or network; a bad CIDR, a network given twice or none at all is one line at plan."""
    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    module = aws_workspace(tmp_path) / "modules/aws-exit-server"
    assert sorted((module / "tests").glob("*.tftest.hcl")), "aws-exit-server has no .tftest.hcl files"
    tf(module, "init", "-input=false", "-backend=false")
    proc = tf(module, "test", check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"Success! (\d+) passed, (\d+) failed", proc.stdout)
    assert match and int(match.group(1)) >= 8 and match.group(2) == "0", proc.stdout


@pytest.fixture(scope="module")
def moto_ec2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """moto's EC2 API server on loopback, as a separate process (its own state)."""
    import time
    import urllib.request

    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    tmp_path = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("moto server did not start: " + (tmp_path / "moto.log").read_text()) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def aws_applied(tmp_path_factory: pytest.TempPathFactory, moto_ec2: str) -> dict[str, Any]:
    """terraform apply of aws-exit-server with the real aws provider against moto's EC2 API."""
    import boto3

    if TERRAFORM is None:
        pytest.skip(NO_TERRAFORM)
    ws = aws_workspace(tmp_path_factory.mktemp("tf-aws"))
    ec2 = boto3.client("ec2", endpoint_url=moto_ec2, region_name="eu-west-1", aws_access_key_id="test", aws_secret_access_key="test")
    ami = ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    root = ws / "moto"
    root.mkdir()
    # moto's instance has no address to send the wheel to: this stands in for the Python that runs
    # terraform/tools/push_wheel.py (tested against a booted VM in tests/boot), so the push step is evaluated
    # and run, sending nothing; it notes its arguments, and its folder has a space and a quote, as a path may
    python = ws / "my python's bin" / "python3"
    python.parent.mkdir()
    python.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"\n')
    python.chmod(0o755)
    (root / "main.tf.json").write_text(json.dumps({
        "provider": {"aws": {
            "region": "eu-west-1", "access_key": "test", "secret_key": "test", "skip_credentials_validation": True,
            "skip_requesting_account_id": True, "skip_metadata_api_check": True,
            "endpoints": [{"ec2": moto_ec2, "sts": moto_ec2}],
        }},
        "module": {"exit": {"source": "../modules/aws-exit-server", "name": "tf-moto", "ports": [25, 80, 443],
                            "ttl": "2h", "ami": ami, "python": str(python)}},
        "output": {k: {"value": f"${{module.exit.{k}}}"} for k in ("id", "ip", "client_command", "security_group_id", "expires_at", "delete_hint")},
    }, indent=1))
    tf(root, "init", "-input=false")
    apply_against_moto(root, ec2)
    out = {k: v["value"] for k, v in json.loads(tf(root, "output", "-json").stdout).items()}
    return {"out": out, "ec2": ec2, "url": moto_ec2, "root": root, "python": python}


def apply_against_moto(root: Path, ec2: Any) -> None:
    """``terraform apply``, and once more if the AWS SDK retried a CreateSecurityGroup that moto had done.

    The SDK retries a request whose answer it did not get (up to 25 attempts), CreateSecurityGroup too, which
    is not idempotent: moto answers the retry InvalidGroup.Duplicate, as EC2 would, and the apply fails with
    the group made (CI, loaded, once in many runs). As a user would, the group left over is deleted and the
    apply run again; any other failure fails with the SDK's retries and errors from the debug log."""
    import warnings

    log = root / "apply-debug.log"
    first = tf(root, "apply", "-auto-approve", "-input=false", timeout=150, check=False, debug_log=log)
    if first.returncode == 0:
        return
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    report = "\n".join(line[:300] for line in lines if "retrying request" in line or "request failed" in line)
    if "InvalidGroup.Duplicate" not in first.stderr or "retrying request EC2/CreateSecurityGroup" not in report:
        raise AssertionError(f"terraform apply failed:\n{first.stdout}\n{first.stderr}\nthe SDK's retries:\n{report}")
    warnings.warn(f"the AWS SDK retried CreateSecurityGroup, which moto had done; applied again:\n{report}")
    for group in ec2.describe_security_groups(GroupNames=["inlets-tf-moto"])["SecurityGroups"]:
        ec2.delete_security_group(GroupId=group["GroupId"])
    tf(root, "apply", "-auto-approve", "-input=false", timeout=150)


@pytest.mark.timeout(180)
def test_aws_module_applies_against_moto_with_inletsctls_user_data_rules_and_tags(aws_applied: dict[str, Any]) -> None:
    """The instance's user-data read back through the EC2 API is inletsctl's rendering (the server
    wheel pushed: it does not fit EC2's 16 KiB); the
    security group opens exactly 8123 and the TCP ports asked for (25, under 1024, included); the tags are inletsctl's."""
    import base64

    from inlets_py.provisioner.providers.base import expiry_tag

    out, ec2 = aws_applied["out"], aws_applied["ec2"]
    attr = ec2.describe_instance_attribute(InstanceId=out["id"], Attribute="userData")
    got = base64.b64decode(attr["UserData"]["Value"]).decode()
    expires = datetime.datetime.fromisoformat(out["expires_at"].replace("Z", "+00:00"))
    expected = user_data(build_spec("tcp", "25,80,443", []), MATERIAL,
                         UserDataOptions(name="tf-moto", package="", wheel=build_runtime_wheel("tcp"), expires_at=expires,
                                         limit=16 * 1024, push=True, constraints=tuple(RUNTIME["tcp"]["constraints"])))
    assert got == expected

    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [out["security_group_id"]]}])["SecurityGroupRules"]
    ingress = sorted((r["IpProtocol"], r["FromPort"], r["ToPort"], r.get("CidrIpv4")) for r in rules if not r["IsEgress"])
    assert ingress == [("tcp", p, p, "0.0.0.0/0") for p in (25, 80, 443, 8123)]
    instance = ec2.describe_instances(InstanceIds=[out["id"]])["Reservations"][0]["Instances"][0]
    groups = instance["SecurityGroups"] or [g for n in instance.get("NetworkInterfaces", []) for g in n["Groups"]]
    assert [g["GroupId"] for g in groups] == [out["security_group_id"]], instance
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags == {"Name": "tf-moto", "inlets": "true", "inlets-name": "tf-moto", "inlets-mode": "tcp",
                    "inlets-sg": out["security_group_id"], "inlets-expires": expiry_tag(expires).split(":", 1)[1]}
    assert out["client_command"] == client_command(build_spec("tcp", "25,80,443", []), out["ip"], "inlets-token", "inlets-ca.crt")
    assert out["delete_hint"].startswith("terraform destroy")


@pytest.mark.timeout(180)
def test_aws_module_runs_push_wheel_with_the_python_given(aws_applied: dict[str, Any]) -> None:
    """``python`` is one program, quoted for local-exec's shell: pasted in, a path with a space ran its first word
    and one with a quote was a shell syntax error, and apply failed once the instance was made."""
    argv = Path(f"{aws_applied['python']}.argv").read_text().splitlines()
    assert len(argv) == 1 and argv[0].endswith("/tools/push_wheel.py"), argv


@pytest.mark.timeout(300)  # the shared moto apply, then one plan with the aws provider
def test_aws_instance_replaced_for_its_ami_takes_a_new_creation_time(aws_applied: dict[str, Any]) -> None:
    """The ttl counts from the instance it runs on: a new AMI replaces the instance, and takes a new creation
    time in the same plan (user-data changes: vm_key, tested on the DigitalOcean module and in terraform test).
    Planned with the real aws provider against the applied state (one plan: ~80 s on a loaded machine)."""
    root: Path = aws_applied["root"]
    main = root / "main.tf.json"
    applied = main.read_text()
    config = json.loads(applied)
    ami = config["module"]["exit"]["ami"]
    config["module"]["exit"]["ami"] = next(i["ImageId"] for i in aws_applied["ec2"].describe_images(
        Owners=["099720109477"])["Images"] if i["ImageId"] != ami)
    try:
        main.write_text(json.dumps(config, indent=1))
        tf(root, "plan", "-input=false", "-out=tfplan", timeout=200)
        plan = json.loads(tf(root, "show", "-json", "tfplan", timeout=120).stdout)
        actions = {c["address"]: c["change"]["actions"] for c in plan["resource_changes"]}
        assert "create" in actions["module.exit.aws_instance.exit_server"], actions
        assert actions["module.exit.terraform_data.created_at"] == ["delete", "create"], actions
    finally:
        main.write_text(applied)


@pytest.mark.timeout(180)
def test_inletsctl_lists_and_deletes_the_terraform_made_ec2_server(aws_applied: dict[str, Any], tmp_path: Path) -> None:
    """``inletsctl list --provider ec2`` finds the instance by its tags, and ``inletsctl delete``
    removes it with its security group (issue 6's ec2 provider)."""
    from inlets_py.provisioner.providers import PROVIDERS

    import importlib.util

    if "ec2" not in PROVIDERS or importlib.util.find_spec("inlets_py.provisioner.providers.ec2") is None:
        pytest.skip("inletsctl has no ec2 provider in this checkout (issue 6)")
    out, ec2 = aws_applied["out"], aws_applied["ec2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INLETS"))}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="eu-west-1",
               AWS_ENDPOINT_URL_EC2=aws_applied["url"], INLETSCTL_STATE_DIR=str(tmp_path / "state"))
    inletsctl = [sys.executable, "-c", "from inlets_py.provisioner.cli import main; main()"]
    listed = subprocess.run([*inletsctl, "list", "--provider", "ec2", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = next(r for r in json.loads(listed.stdout)["servers"] if r["id"] == out["id"])
    assert (row["name"], row["mode"], row["ip"], row["expires"]) == ("tf-moto", "tcp", out["ip"], out["expires_at"]), row
    deleted = subprocess.run([*inletsctl, "delete", "--provider", "ec2", "--id", out["id"]], capture_output=True, text=True, env=env, timeout=120)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    listed = subprocess.run([*inletsctl, "list", "--provider", "ec2", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert out["id"] not in [r["id"] for r in json.loads(listed.stdout)["servers"]]
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert out["security_group_id"] not in [g["GroupId"] for g in groups]
