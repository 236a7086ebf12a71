"""Vultr instances through apache-libcloud's Vultr (API v2) driver, behind a firewall group of their own.

The endpoint can be pointed elsewhere with ``--api-url`` or $VULTR_API_URL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import NotFound, ProvisionError
from ..firewall import firewall_name, inbound_rules, made_for
from .base import ACTIVE, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo
from .api_url import Endpoint, endpoint_of
from .paging import every_page

PROVIDER = ProviderInfo(
    name="vultr", title="Vultr", user_data_limit=48 * 1024,  # sent base64-encoded; stays under 64 KiB on the wire
    credentials="$VULTR_API_KEY", token_env=("VULTR_API_KEY", "INLETS_ACCESS_TOKEN"), api_url_env=("VULTR_API_URL",),
    region="lhr", size="vc2-1c-1gb", image="2284",  # os_id of "Ubuntu 24.04 LTS x64"
    firewall_note="firewall group opening only the tunnel's ports",
)


class VultrProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 3.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, token: str, endpoint: Endpoint | None = None, timeout: float = 30.0) -> None:
        from libcloud.compute.providers import get_driver
        from libcloud.compute.types import Provider

        from .cloud_api import point, strict_responses

        self._driver = get_driver(Provider.VULTR)(token, api_version="2")
        strict_responses(self._driver.connection)
        self._endpoint = point(self._driver.connection, endpoint, timeout)

    def _api(self, what: str) -> Any:
        from .cloud_api import libcloud_errors

        return libcloud_errors(self.name, self._endpoint, what)

    def _request(self, path: str, method: str = "GET", body: Any = None, params: Any = None) -> Any:
        data = json.dumps(body) if body is not None else None
        return self._driver.connection.request(path, method=method, data=data, params=params).object

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        description = firewall_name(plan.name, PROVIDER.firewall_name_max)
        with self._api(f"creating firewall group for {plan.name!r}"):
            group = self._request("/v2/firewalls", "POST", {"description": description})["firewall_group"]
        try:
            with self._api(f"adding firewall rules for {plan.name!r}"):
                for rule in inbound_rules(plan.spec):
                    for ip_type, subnet in (("v4", "0.0.0.0"), ("v6", "::")):
                        self._request(f"/v2/firewalls/{group['id']}/rules", "POST", {
                            "ip_type": ip_type, "protocol": rule.protocol, "subnet": subnet, "subnet_size": 0,
                            "port": str(rule.port), "notes": f"inlets {rule.purpose}",
                        })
            d = self._driver
            size = NodeSize(plan.size or PROVIDER.size, plan.size or PROVIDER.size, 0, 0, 0, 0, d)
            region = NodeLocation(plan.region or PROVIDER.region, plan.region or PROVIDER.region, "", d)
            with self._api(f"creating instance {plan.name!r}"):
                node = d.create_node(
                    plan.name, size, region, NodeImage(PROVIDER.image, PROVIDER.image, d),
                    ex_ssh_key_ids=[plan.ssh_key] if plan.ssh_key else None, ex_userdata=plan.user_data,
                    ex_hostname=plan.name, ex_tag=TAG, ex_firewall_group_id=group["id"], ex_enable_ipv6=True,
                )
        except BaseException:
            try:
                self._delete_firewall(str(group["id"]))
            except ProvisionError:  # the first error is the one to show (a 400 for a bad region, not a cleanup's 500)
                pass
            raise
        return Host(id=str(node.id), name=plan.name, provider=self.name, status="pending", mode=plan.spec.mode)

    def status(self, host_id: str) -> Host:
        with self._api(f"reading instance {host_id}"):
            return self._host(self._request(f"/v2/instances/{host_id}")["instance"])

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Delete the instance, wait until it is gone, then delete its firewall group."""
        host = self.status(host_id)
        with self._api(f"deleting instance {host_id}"):
            self._request(f"/v2/instances/{host_id}", "DELETE")
        from ..wait import wait_until_gone

        wait_until_gone(self, host_id, timeout)
        group_id = host.extra.get("firewall_group_id")
        if group_id and self._made_here(str(group_id), host.name):
            self._delete_firewall(str(group_id))

    def _made_here(self, group_id: str, name: str) -> bool:
        """Only the group create made for the instance ``name`` (its description ``inlets-NAME``) goes: an instance
        may have been moved into a group shared with others (the user's, or another exit server's), which must stay."""
        try:
            with self._api(f"reading firewall group {group_id}"):
                group = self._request(f"/v2/firewalls/{group_id}")["firewall_group"]
        except NotFound:
            return False
        return made_for(str(group.get("description", "")), name, PROVIDER.firewall_name_max)

    def delete_leftovers(self, name: str) -> list[str]:
        """The firewall group ``create`` made for the instance ``name`` before it was cut short (Ctrl-C, a timeout on
        the group's POST): described inlets-NAME and used by no instance. Vultr groups take no tags, so nothing else
        led to it: list and delete --provider vultr never saw it."""
        wanted, removed = firewall_name(name, PROVIDER.firewall_name_max), []
        with self._api(f"reading firewall group {wanted}"):
            groups = self._pages("/v2/firewalls", "firewall_groups", {}, f"reading firewall group {wanted}")
        for group in groups:
            if made_for(str(group.get("description", "")), name, PROVIDER.firewall_name_max) and not group.get("instance_count"):
                self._delete_firewall(str(group["id"]))
                removed.append(f"firewall group {wanted}")
        return removed

    def _delete_firewall(self, group_id: str) -> None:
        try:
            with self._api(f"deleting firewall group {group_id}"):
                self._request(f"/v2/firewalls/{group_id}", "DELETE")
        except NotFound:
            pass

    def list(self) -> list[Host]:
        with self._api("listing instances"):  # filtered by the API
            return [self._host(i) for i in self._pages("/v2/instances", "instances", {"tag": TAG}, "listing instances")]

    def _pages(self, path: str, key: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        """Every item of a list Vultr pages with a cursor (500 a page)."""
        def page(cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
            body = self._request(path, params=params | {"per_page": 500} | ({"cursor": cursor} if cursor else {}))
            return list(body.get(key) or []), (body.get("meta") or {}).get("links", {}).get("next")

        return every_page(self.name, what, page)

    def _host(self, data: dict[str, Any]) -> Host:
        ip = data.get("main_ip") if data.get("main_ip") not in (None, "", "0.0.0.0") else None
        status = str(data.get("status", "unknown"))
        power = str(data.get("power_status", ""))
        active = status == "active" and power == "running"
        return Host(
            id=str(data["id"]), name=str(data.get("label", "")), provider=self.name,
            status=ACTIVE if active else status, ip=ip, created_at=data.get("date_created"),
            detail=f"instance status {status!r}, power {power!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"region": str(data.get("region", "")), "firewall_group_id": str(data.get("firewall_group_id") or "")},
        )


def build(creds: Credentials, state_root: Path) -> VultrProvider:
    return VultrProvider(PROVIDER.token(creds), endpoint_of(PROVIDER, creds), creds.api_timeout)
