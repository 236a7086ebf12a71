"""The provider registry: every provider module declares itself once, and what users read
(--help, the create summary's firewall note) is written from those declarations."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from helpers.prov_support import run_inletsctl
from inlets_py.provisioner.providers import registry
from inlets_py.provisioner.providers.base import ProviderInfo
from inlets_py.provisioner.spec import build_spec

#: the modules of providers/ that are not providers: shared parts, and parts of one provider (ec2_*, ssh_*)
HELPERS = ("__init__", "base", "registry", "cloud_api", "api_errors", "api_url", "paging", "ec2_api", "ec2_config", "ec2_regions",
           "ssh_scripts")
PROVIDER_MODULES = sorted(p.stem for p in (Path(registry.__file__).parent).glob("*.py") if p.stem not in HELPERS)


def test_every_provider_module_is_registered_and_declares_itself() -> None:
    assert sorted(registry.PROVIDERS) == PROVIDER_MODULES
    for name in registry.PROVIDERS:
        module = importlib.import_module(f"inlets_py.provisioner.providers.{name}")
        declared = module.PROVIDER
        assert isinstance(declared, ProviderInfo) and declared.name == name and callable(module.build)
        provider_class = next(v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", None) == name)
        assert provider_class.user_data_limit == declared.user_data_limit, name  # read from the declaration


def test_help_lists_what_every_provider_declares() -> None:
    text = " ".join(run_inletsctl("create", "--help").out.split())
    for name in registry.PROVIDERS:
        declared = registry.info(name)
        for env in declared.token_env[:1] + declared.api_url_env:
            assert env in text.replace("- ", "-").replace(" ", ""), (name, env)  # help wraps long words
        if declared.region:
            assert f"{name}: " in text and declared.size in text.replace(" ", "")


def test_region_help_names_every_place_the_region_is_read() -> None:
    """ec2's --region help said "$AWS_REGION or eu-west-1": $AWS_DEFAULT_REGION and the profile's region in
    ~/.aws/config were read too (ec2_config.default_region), and decided the region without --region."""
    for command in ("create", "status", "list", "delete"):
        text = " ".join(run_inletsctl(command, "--help").out.split()).replace("- ", "-")  # help wraps long words
        for needed in ("$AWS_REGION,", "$AWS_DEFAULT_REGION,", "$AWS_PROFILE", "~/.aws/config", "else eu-west-1"):
            assert needed in text, (command, needed)


@pytest.mark.parametrize("mode, ports, http_port, data", [
    ("tcp", "22,80,443", None, "22,80,443"),
    ("http", None, 80, "80,443"),
    ("http", None, 8080, "443,8080"),
])
def test_firewall_note_is_written_from_the_ports_the_tunnel_uses(mode: str, ports: str | None, http_port: int | None,
                                                                   data: str) -> None:
    spec = build_spec(mode, ports, ["example.com"] if mode == "http" else [], http_port=http_port)
    assert registry.firewall_note("ssh", "edge", spec) == (
        f"none managed by inletsctl: the host's own firewall must let in tcp 8123 and {data}")
    assert registry.firewall_note("ec2", "edge", spec) == f"security group inlets-edge lets in tcp 8123 and {data}, nothing else"
    assert registry.firewall_note("vultr", "edge", spec) == "firewall group opening only the tunnel's ports"
    assert registry.firewall_note("digitalocean", "edge", spec) is None


def test_an_unknown_provider_is_refused_before_any_import() -> None:
    from inlets_py.provisioner.errors import ProvisionError

    with pytest.raises(ProvisionError, match="unknown provider 'os'"):
        registry.info("os")
