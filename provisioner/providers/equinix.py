"""Equinix Metal devices through apache-libcloud's Equinix Metal driver (``cloud_init`` user-data).

Equinix Metal has no cloud firewall in front of a device: every port of its public IP
is reachable, and only the exit server's own listeners (8123 and the asked ports)
answer. The summary says so. The endpoint can be pointed elsewhere with ``--api-url``
or $METAL_API_URL. Equinix announced the end of Metal for 30 June 2026: this provider
stays for accounts and compatible endpoints that still answer its API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ProvisionError
from .base import (
    ACTIVE, FAILED, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, mode_from_tags, parse_expiry_tag, tag_list,
)
from .api_url import Endpoint, endpoint_of
from .paging import every_page

PROJECT_ENV = ("METAL_PROJECT_ID", "PACKET_PROJECT_ID")
PROVIDER = ProviderInfo(
    name="equinix", title="Equinix Metal", user_data_limit=64 * 1024, note="Equinix Metal",
    credentials=f"$METAL_AUTH_TOKEN + ${PROJECT_ENV[0]}",
    token_env=("METAL_AUTH_TOKEN", "PACKET_AUTH_TOKEN", "INLETS_ACCESS_TOKEN"), api_url_env=("METAL_API_URL",),
    region="ld", region_note="a metro", size="c3.small.x86", image="ubuntu_24_04",  # metro: London
    ssh_key="project SSH key id",
    firewall_note=("none: Equinix Metal has no cloud firewall, every port of the device's IP is reachable "
                   "(only the tunnel's listeners answer)"),
)


class EquinixProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 5.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, token: str, project_id: str, endpoint: Endpoint | None = None, timeout: float = 30.0,
                 *, credentials: str = PROVIDER.token_noun) -> None:
        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        if not project_id:
            raise ProvisionError(f"no Equinix Metal project: give --project-id or set ${PROJECT_ENV[0]}")
        from libcloud.compute.providers import get_driver
        from libcloud.compute.types import Provider

        from .cloud_api import point, strict_responses

        self._project = project_id
        self._driver = get_driver(Provider.EQUINIXMETAL)(token)
        strict_responses(self._driver.connection)
        self._endpoint = point(self._driver.connection, endpoint, timeout)

    def _api(self, what: str) -> Any:
        from .cloud_api import libcloud_errors

        return libcloud_errors(self.name, self._endpoint, what, self.credentials)

    def _request(self, path: str, method: str = "GET", params: Any = None) -> Any:
        return self._driver.connection.request(path, method=method, params=params).object

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        d = self._driver
        metro = plan.region or PROVIDER.region
        extra: dict[str, Any] = {"tags": tag_list(plan)}
        if plan.ssh_key:
            extra["project_ssh_keys"] = [plan.ssh_key]
        with self._api(f"creating device {plan.name!r}"):
            node = d.create_node(
                plan.name,
                NodeSize(plan.size or PROVIDER.size, plan.size or PROVIDER.size, 0, 0, 0, 0, d),
                NodeImage(PROVIDER.image, PROVIDER.image, d),
                NodeLocation(metro, metro, "", d, extra={"code": metro}),
                ex_project_id=self._project,
                cloud_init=plan.user_data,
                **extra,
            )
        return Host(id=str(node.id), name=plan.name, provider=self.name, status="queued", mode=plan.spec.mode)

    def status(self, host_id: str) -> Host:
        with self._api(f"reading device {host_id}"):
            return self._host(self._request(f"/metal/v1/devices/{host_id}"))

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Delete the device (no firewall or reserved IP was made for it)."""
        with self._api(f"deleting device {host_id}"):
            self._request(f"/metal/v1/devices/{host_id}", "DELETE")

    def list(self) -> list[Host]:
        def page(number: int) -> tuple[list[dict[str, Any]], int | None]:
            params = {"tag": TAG, "page": number, "per_page": 100}
            body = self._request(f"/metal/v1/projects/{self._project}/devices", params=params)
            return list(body.get("devices") or []), number + 1 if (body.get("meta") or {}).get("next") else None

        with self._api("listing devices"):  # filtered by the API
            return [self._host(dev) for dev in every_page(self.name, "listing devices", page, 1)]

    def _host(self, data: dict[str, Any]) -> Host:
        ip = next((a.get("address") for a in data.get("ip_addresses") or []
                   if a.get("public") and a.get("address_family") == 4), None)
        state = str(data.get("state", "unknown"))
        tags = list(data.get("tags") or [])
        name = str(data.get("hostname", ""))
        return Host(
            id=str(data["id"]), name=name, provider=self.name,
            status=ACTIVE if state == "active" else FAILED if state == "failed" else state,
            ip=ip, mode=mode_from_tags(tags), created_at=data.get("created_at"), expires_at=parse_expiry_tag(tags),
            detail=f"device state {state!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"metro": str((data.get("metro") or {}).get("code", "")), "tags": json.dumps(tags)},
        )


def build(creds: Credentials, state_root: Path) -> EquinixProvider:
    token, words = PROVIDER.token_from(creds)
    project = next((os.environ[e].strip() for e in PROJECT_ENV if os.environ.get(e, "").strip()), "")
    return EquinixProvider(token, project, endpoint_of(PROVIDER, creds), creds.api_timeout, credentials=words)
