"""How the libcloud / SDK cloud providers are built from the command's credentials.

Credentials come, in order, from ``--access-token-file``, ``--access-token``, then the
provider's usual environment variables (listed in ``--help`` and below). The API
endpoint comes from ``--api-url``, then the provider's ``*_API_URL`` variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..credentials import access_token
from ..errors import ProvisionError
from .base import Provisioner

if TYPE_CHECKING:
    from . import Credentials

CLOUDS = ("gce", "azure", "linode", "vultr", "equinix", "hetzner", "scaleway")

#: clouds inletsctl knows but does not offer, and why (shown by --provider NAME)
NOT_OFFERED = {
    "ovh": (
        "not offered: libcloud's OVH driver cannot pass user-data; OVH's Public Cloud API takes userData when an "
        "instance is created (POST /cloud/project/ID/instance, signed with the ovh SDK's application keys), but no "
        "registry package ships OVH's API description or recorded answers to test that against, and inletsctl "
        "offers no cloud it has not exercised"
    ),
}


def _api_url(provider: str, creds: "Credentials", env: str) -> str | None:
    return creds.api_url or os.environ.get(env) or None


def build(name: str, state_root: Path, creds: "Credentials") -> Provisioner:
    """The cloud provider ``name`` (one of CLOUDS) with its credentials and endpoint."""
    from .cloud_api import parse_api_url

    if name == "vultr":
        from . import vultr

        token = access_token("Vultr", creds.token_file, creds.token, vultr.TOKEN_ENV)
        url = _api_url(name, creds, vultr.API_URL_ENV)
        return vultr.VultrProvider(token, parse_api_url(name, url, vultr.API_URL_ENV) if url else None)
    if name == "linode":
        from . import linode

        token = access_token("Linode", creds.token_file, creds.token, linode.TOKEN_ENV)
        url = _api_url(name, creds, linode.API_URL_ENV)
        return linode.LinodeProvider(token, parse_api_url(name, url, linode.API_URL_ENV) if url else None)
    if name == "hetzner":
        from . import hetzner

        token = access_token("Hetzner Cloud", creds.token_file, creds.token, hetzner.TOKEN_ENV)
        return hetzner.HetznerProvider(token, _api_url(name, creds, hetzner.API_URL_ENV))
    if name == "equinix":
        from . import equinix

        token = access_token("Equinix Metal", creds.token_file, creds.token, equinix.TOKEN_ENV)
        project = next((os.environ[e].strip() for e in equinix.PROJECT_ENV if os.environ.get(e, "").strip()), "")
        url = _api_url(name, creds, equinix.API_URL_ENV)
        return equinix.EquinixProvider(token, project, parse_api_url(name, url, equinix.API_URL_ENV) if url else None)
    if name == "gce":
        from . import gce

        url = _api_url(name, creds, gce.API_URL_ENV)
        account = gce.service_account(creds.token_file, creds.token)
        return gce.GCEProvider(account, state_root, parse_api_url(name, url, gce.API_URL_ENV) if url else None)
    if name == "azure":
        from . import azure

        url = _api_url(name, creds, azure.API_URL_ENV)
        principal = azure.service_principal(creds.token_file, creds.token)
        return azure.AzureProvider(principal, parse_api_url(name, url, azure.API_URL_ENV) if url else None)
    if name == "scaleway":
        from . import scaleway

        secret = access_token("Scaleway", creds.token_file, creds.token, scaleway.TOKEN_ENV)
        return scaleway.ScalewayProvider(os.environ.get(scaleway.ACCESS_ENV, "").strip(), secret,
                                         os.environ.get(scaleway.PROJECT_ENV, "").strip(),
                                         _api_url(name, creds, scaleway.API_URL_ENV))
    if name in NOT_OFFERED:
        raise ProvisionError(f"--provider {name}: {NOT_OFFERED[name]}")
    raise ProvisionError(f"unknown cloud {name!r}")


_CLASSES = {"gce": "GCEProvider", "azure": "AzureProvider", "linode": "LinodeProvider", "vultr": "VultrProvider",
            "equinix": "EquinixProvider", "hetzner": "HetznerProvider", "scaleway": "ScalewayProvider"}


def firewall_note(name: str) -> str | None:
    """What stands in front of an exit server on cloud ``name`` (for the create summary)."""
    if name not in _CLASSES:
        return None
    import importlib

    module = importlib.import_module(f".{name}", __package__)
    return str(getattr(module, _CLASSES[name]).firewall_note)


HELP_PROVIDERS = (
    "gce, azure, linode, vultr, equinix (Equinix Metal), hetzner, scaleway; ovh is not offered "
    "(see --provider ovh)"
)
HELP_ENV = (
    "credentials: vultr $VULTR_API_KEY; linode $LINODE_TOKEN; hetzner $HCLOUD_TOKEN; equinix $METAL_AUTH_TOKEN + "
    "$METAL_PROJECT_ID; gce a service-account key file ($GOOGLE_APPLICATION_CREDENTIALS); azure an sdk-auth file or "
    "$AZURE_CLIENT_ID/$AZURE_CLIENT_SECRET/$AZURE_TENANT_ID/$AZURE_SUBSCRIPTION_ID; scaleway $SCW_SECRET_KEY + "
    "$SCW_ACCESS_KEY + $SCW_DEFAULT_PROJECT_ID"
)
HELP_API_ENV = "VULTR_API_URL, LINODE_API_URL, HCLOUD_ENDPOINT, METAL_API_URL, GCE_API_URL, AZURE_API_URL, SCW_API_URL"
