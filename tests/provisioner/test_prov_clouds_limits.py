"""Every cloud's user-data limit, with the margin each mode keeps below it.

The default user-data carries the server-only wheel where it fits and otherwise waits for
``create`` to send it (push); either way it stays at least MARGIN bytes under the limit.
The table says which way each cloud and mode goes today: a change that grows the wheel
fails here first, with the sizes, before a cloud refuses a user-data."""

from __future__ import annotations

import datetime

import pytest

from inlets_py.provisioner.firewall import inbound_ports
from inlets_py.provisioner.material import generate
from inlets_py.provisioner.providers.azure import AzureProvider
from inlets_py.provisioner.providers.digitalocean import DigitalOceanProvider
from inlets_py.provisioner.providers.ec2 import EC2Provider
from inlets_py.provisioner.providers.equinix import EquinixProvider
from inlets_py.provisioner.providers.gce import GCEProvider
from inlets_py.provisioner.providers.hetzner import HetznerProvider
from inlets_py.provisioner.providers.linode import LinodeProvider
from inlets_py.provisioner.providers.scaleway import ScalewayProvider
from inlets_py.provisioner.providers.vultr import VultrProvider
from inlets_py.provisioner.render import UserDataOptions, fitting_user_data
from inlets_py.provisioner.spec import LetsEncrypt, build_spec
from inlets_py.provisioner.wheel import build_runtime_wheel

MARGIN = 4 * 1024  # bytes every default user-data keeps below its cloud's limit
EMBED = {"tcp": "embed", "http": "embed", "http-letsencrypt": "embed"}
PUSH = {"tcp": "push", "http": "push", "http-letsencrypt": "push"}
#: how the wheel reaches the VM, per cloud and mode
DELIVERY = {
    DigitalOceanProvider: PUSH,  # 64 KiB: TCP user-data passed its margin, the largest first, now a plain one too
    ScalewayProvider: PUSH,  # 64 KiB
    EquinixProvider: PUSH,  # 64 KiB
    GCEProvider: EMBED,  # 256 KiB
    AzureProvider: PUSH,  # 48 KiB
    VultrProvider: PUSH,  # 48 KiB
    LinodeProvider: PUSH,  # 49,000 bytes
    HetznerProvider: PUSH,  # 32 KiB
    EC2Provider: PUSH,  # 16 KiB
}
LONGEST_NAME = "a" * 63
SPECS = {  # the largest of each mode: many ports or domains, an e-mail, a ttl (two more units)
    "tcp": build_spec("tcp", ",".join(str(p) for p in range(1, 41)), []),
    "http": build_spec("http", None, [f"service-{n}.example.com" for n in range(10)]),
    "http-letsencrypt": build_spec("http", None, [f"service-{n}.example.com" for n in range(10)],
                                   letsencrypt=LetsEncrypt("operations-team@example.com", "staging")),
}
MATERIAL = generate(LONGEST_NAME)
EXPIRES = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def wheels() -> dict[str, object]:
    return {mode: build_runtime_wheel(spec.mode, spec.letsencrypt is not None) for mode, spec in SPECS.items()}


@pytest.mark.parametrize("cls", list(DELIVERY), ids=lambda c: c.name)
@pytest.mark.parametrize("mode", list(SPECS))
def test_the_default_user_data_keeps_its_margin_under_every_cloud_limit(cls: type, mode: str, wheels: dict) -> None:
    limit = cls.user_data_limit
    options = UserDataOptions(LONGEST_NAME, "", wheels[mode], EXPIRES, limit)  # type: ignore[arg-type]
    text, push = fitting_user_data(SPECS[mode], MATERIAL, options)
    size = len(text.encode())
    delivery = "push" if push else "embed"
    assert size <= limit - MARGIN, f"{cls.name} {mode}: {size} bytes ({delivery}), limit {limit}, margin {limit - size} < {MARGIN}"
    assert delivery == DELIVERY[cls][mode], (
        f"{cls.name} {mode}: the wheel is now {'pushed' if push else 'embedded'} ({size} bytes of {limit}): "
        "update DELIVERY (and the README's table) if that is intended"
    )


def test_firewall_ports_include_low_ports_and_the_control_port() -> None:
    assert inbound_ports(build_spec("tcp", "22,25,80", [])) == (22, 25, 80, 8123)
    assert inbound_ports(build_spec("http", None, ["example.com"])) == (80, 443, 8123)
    assert inbound_ports(build_spec("tcp", "443", [], control_port=9000)) == (443, 9000)


GCE_NAME_RE = r"[a-z]([-a-z0-9]*[a-z0-9])?"  # GCE's rule for a firewall name (and an instance name, a network tag)


@pytest.mark.parametrize("limit", [32, 63])
def test_long_names_sharing_their_start_never_share_a_firewall(limit: int) -> None:
    """``inlets-NAME`` cut at 63 gave replicas NAME-1 and NAME-2 of a 57+ character NAME the same firewall (Hetzner
    refuses the second, and deleting one deleted the other's: made_for compared the cut names); cut where a hyphen
    falls it ended in one, which GCE refuses. A name too long for the cloud now ends in a hash of the whole name."""
    import re

    from inlets_py.provisioner.firewall import firewall_name, made_for

    base = "a" * 55 + "-bcd"  # inlets- + its first 56 (or 25) characters ends in a hyphen
    names = [f"{base}-1", f"{base}-2", base[:limit - 7] + "x"]
    firewalls = [firewall_name(n, limit) for n in names]
    assert len(set(firewalls)) == len(names), firewalls
    for name, firewall in zip(names, firewalls, strict=True):
        assert len(firewall) <= limit and firewall.startswith("inlets-aaa") and "--" not in firewall
        assert re.fullmatch(GCE_NAME_RE, firewall), firewall
        assert made_for(firewall, name, limit) and not made_for(f"inlets-{name}"[:limit], name, limit)
        assert [made_for(firewall, other, limit) for other in names].count(True) == 1
    short = "quick-otter-1a2b"  # a name that fits keeps the firewall name earlier versions made (and delete)
    assert firewall_name(short, limit) == "inlets-quick-otter-1a2b" and made_for("inlets-quick-otter-1a2b", short, limit)
