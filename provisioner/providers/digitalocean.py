"""DigitalOcean droplets through apache-libcloud's DigitalOcean driver.

The API endpoint can be pointed elsewhere with ``--api-url`` or
$DIGITALOCEAN_API_URL (tests, proxies); the default is DigitalOcean's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import replace
from typing import Any, ContextManager

from libcloud.common.types import InvalidCredsError
from libcloud.compute.base import NodeImage, NodeLocation, NodeSize
from libcloud.compute.providers import get_driver
from libcloud.compute.types import Provider

from ..errors import NotFound
from .api_errors import AUTH, REFUSED, Fault, api_errors
from .base import ACTIVE, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, expiry_tag, parse_expiry_tag
from .cloud_api import libcloud_fault, parse_api_url

PROVIDER = ProviderInfo(
    name="digitalocean", title="DigitalOcean", user_data_limit=64 * 1024,
    credentials="$DIGITALOCEAN_ACCESS_TOKEN", token_env=("DIGITALOCEAN_ACCESS_TOKEN", "INLETS_ACCESS_TOKEN"),
    api_url_env=("DIGITALOCEAN_API_URL",), region="lon1", size="s-1vcpu-1gb", image="ubuntu-24-04-x64",
    ssh_key="key fingerprint or id to install",
)
MAX_PAGES = 20


class DigitalOceanProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 2.0
    keeps_server_key = False

    def __init__(self, token: str, api_url: str | None = None, timeout: float = 30.0) -> None:
        self._driver = get_driver(Provider.DIGITAL_OCEAN)(token)
        conn = self._driver.connection
        conn.timeout = timeout
        if api_url:
            endpoint = parse_api_url("digitalocean", api_url, PROVIDER.api_url_env[0])
            conn.host, conn.secure, conn.port = endpoint.host, endpoint.secure, endpoint.port
        self._endpoint = f"{'https' if conn.secure else 'http'}://{conn.host}:{conn.port}"
        conn.connect()  # the constructor already connected to the default host

    def _api(self, what: str) -> ContextManager[None]:
        return api_errors(self.name, self._endpoint, what, _fault, credentials="access token")

    def create(self, plan: Plan) -> Host:
        tags = [TAG, f"inlets-mode:{plan.spec.mode}"]
        if plan.expires_at is not None:
            tags.append(expiry_tag(plan.expires_at))
        attrs: dict[str, Any] = {"tags": tags}
        if plan.ssh_key:
            attrs["ssh_keys"] = [plan.ssh_key]
        d = self._driver
        size = NodeSize(plan.size or PROVIDER.size, plan.size or PROVIDER.size, 0, 0, 0, 0, d)
        image = NodeImage(PROVIDER.image, PROVIDER.image, d)
        region = NodeLocation(plan.region or PROVIDER.region, plan.region or PROVIDER.region, "", d)
        with self._api(f"creating droplet {plan.name!r}"):
            node = d.create_node(  # type: ignore[call-arg]  # the DigitalOcean driver's extensions
                plan.name, size, image, region, ex_create_attr=attrs, ex_user_data=plan.user_data
            )
        return Host(id=str(node.id), name=node.name, provider=self.name, status="new", mode=plan.spec.mode)

    def status(self, host_id: str) -> Host:
        if not host_id.isdigit():
            raise NotFound(f"digitalocean: no droplet with id {host_id!r} (ids are numbers)")
        with self._api(f"reading droplet {host_id}"):
            data = self._driver.connection.request(f"/v2/droplets/{host_id}").object["droplet"]
        return self._host(data)

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        if not host_id.isdigit():
            raise NotFound(f"digitalocean: no droplet with id {host_id!r} (ids are numbers)")
        with self._api(f"deleting droplet {host_id}"):
            self._driver.connection.request(f"/v2/droplets/{host_id}", method="DELETE")

    def list(self) -> list[Host]:
        hosts: list[Host] = []
        with self._api("listing droplets"):
            for page in range(1, MAX_PAGES + 1):
                params = {"tag_name": TAG, "per_page": 200, "page": page}
                body = self._driver.connection.request("/v2/droplets", params=params).object
                hosts += [self._host(d) for d in body.get("droplets", [])]
                if not body.get("links", {}).get("pages", {}).get("next"):
                    break
        return hosts

    def _host(self, data: dict[str, Any]) -> Host:
        ip = None
        for net in (data.get("networks") or {}).get("v4", []):
            if net.get("type") == "public":
                ip = net.get("ip_address")
        tags = list(data.get("tags") or [])
        mode = next((t.split(":", 1)[1] for t in tags if t.startswith("inlets-mode:")), None)
        status = str(data.get("status", "unknown"))
        if status == "active" and not ip:
            status = "active-without-ip"
        return Host(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            provider=self.name,
            status=ACTIVE if status == "active" else status,
            ip=ip,
            mode=mode,
            created_at=data.get("created_at"),
            expires_at=parse_expiry_tag(tags),
            detail=f"droplet status {status!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"region": str((data.get("region") or {}).get("slug", "")), "tags": json.dumps(tags)},
        )


def _fault(exc: BaseException) -> Fault | None:
    """libcloud's meaning, but the driver raises InvalidCredsError only for 401 and keeps the status in its messages."""
    if isinstance(exc, InvalidCredsError):
        return Fault(AUTH, 401, str(exc.value))
    fault = libcloud_fault(exc)
    return replace(fault, status=None) if fault is not None and fault.kind == REFUSED else fault


def build(creds: Credentials, state_root: Path) -> DigitalOceanProvider:
    return DigitalOceanProvider(PROVIDER.token(creds), PROVIDER.api_url(creds))
