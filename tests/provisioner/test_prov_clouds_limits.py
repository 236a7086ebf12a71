"""Every cloud's user-data limit: the default user-data fits all of them; with --embed-wheel the
render either fits the provider's limit or fails naming the option to drop."""

from __future__ import annotations

import pytest

from provisioner.errors import ProvisionError
from provisioner.firewall import inbound_ports
from provisioner.material import generate
from provisioner.providers.azure import AzureProvider
from provisioner.providers.equinix import EquinixProvider
from provisioner.providers.gce import GCEProvider
from provisioner.providers.hetzner import HetznerProvider
from provisioner.providers.linode import LinodeProvider
from provisioner.providers.scaleway import ScalewayProvider
from provisioner.providers.vultr import VultrProvider
from provisioner.render import UserDataOptions, user_data
from provisioner.spec import build_spec
from provisioner.wheel import build_runtime_wheel

CLASSES = [AzureProvider, EquinixProvider, GCEProvider, HetznerProvider, LinodeProvider, ScalewayProvider, VultrProvider]


@pytest.fixture(scope="module")
def wheel():  # type: ignore[no-untyped-def]
    return build_runtime_wheel()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_user_data_fits_or_names_the_option_to_drop(cls: type, wheel: object) -> None:
    spec, secrets = build_spec("tcp", "80,443", []), generate("limits")
    plain = user_data(spec, secrets, UserDataOptions("limits", "inlets-py==0.1.0", None, None, cls.user_data_limit))
    assert len(plain.encode()) <= cls.user_data_limit
    try:
        embedded = user_data(spec, secrets, UserDataOptions("limits", "inlets-py", wheel, None, cls.user_data_limit))  # type: ignore[arg-type]
    except ProvisionError as exc:
        assert "drop --embed-wheel" in str(exc) and "\n" not in str(exc)
    else:
        assert len(embedded.encode()) <= cls.user_data_limit


def test_firewall_ports_include_low_ports_and_the_control_port() -> None:
    assert inbound_ports(build_spec("tcp", "22,25,80", [])) == (22, 25, 80, 8123)
    assert inbound_ports(build_spec("http", None, ["example.com"])) == (80, 443, 8123)
    assert inbound_ports(build_spec("tcp", "443", [], control_port=9000)) == (443, 9000)
