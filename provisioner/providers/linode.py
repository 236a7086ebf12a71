"""Linode instances through apache-libcloud's Linode (API v4) driver, behind a Cloud Firewall of their own.

The endpoint can be pointed elsewhere with ``--api-url`` or $LINODE_API_URL.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from pathlib import Path
from typing import Any

from ..errors import NotFound
from ..firewall import ANY_IPV4, ANY_IPV6, firewall_name, inbound_rules, made_for
from ..names import NameRule
from .base import (
    ACTIVE, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, mode_from_tags, parse_expiry_tag, tag_list,
)
from .api_url import Endpoint, endpoint_of
from .paging import every_page

PROVIDER = ProviderInfo(
    name="linode", title="Linode", user_data_limit=49_000,  # metadata.user_data is base64 and must stay under 65,535 bytes
    credentials="$LINODE_TOKEN", token_env=("LINODE_TOKEN", "LINODE_CLI_TOKEN", "INLETS_ACCESS_TOKEN"),
    api_url_env=("LINODE_API_URL",), region="eu-west", size="g6-nanode-1", image="linode/ubuntu24.04",  # London
    ssh_key="public key text",
    firewall_note="Cloud Firewall opening only the tunnel's ports",
    # API v4: an instance label has 3-64 characters, a firewall label 3-32; neither has "--" in it
    names=NameRule("a Linode label", min_len=3, max_len=64, single_hyphens=True), firewall_name_max=32,
)


class LinodeProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 3.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, token: str, endpoint: Endpoint | None = None, timeout: float = 30.0,
                 *, credentials: str = PROVIDER.token_noun) -> None:
        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        from libcloud.compute.providers import get_driver
        from libcloud.compute.types import Provider

        from .cloud_api import point, strict_responses

        self._driver = get_driver(Provider.LINODE)(token, api_version="4.0")
        strict_responses(self._driver.connection)
        _keep_page_size(self._driver.connection)
        self._endpoint = point(self._driver.connection, endpoint, timeout)

    def _api(self, what: str) -> Any:
        from .cloud_api import libcloud_errors

        return libcloud_errors(self.name, self._endpoint, what, self.credentials)

    def _request(self, path: str, method: str = "GET", body: Any = None, **kwargs: Any) -> Any:
        data = json.dumps(body) if body is not None else None
        return self._driver.connection.request(path, method=method, data=data, **kwargs).object

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        rules = inbound_rules(plan.spec)
        firewall = {
            "label": firewall_name(plan.name, PROVIDER.firewall_name_max),
            "tags": [TAG],
            "rules": {
                "inbound_policy": "DROP",
                "outbound_policy": "ACCEPT",
                "inbound": [{
                    "label": "inlets", "action": "ACCEPT", "protocol": "TCP",
                    "ports": ",".join(str(r.port) for r in rules),
                    "addresses": {"ipv4": [ANY_IPV4], "ipv6": [ANY_IPV6]},
                }],
                "outbound": [],
            },
        }
        with self._api(f"creating firewall for {plan.name!r}"):
            firewall_id = str(self._request("/v4/networking/firewalls", "POST", firewall)["id"])
        node_id = None
        try:
            d = self._driver
            with self._api(f"creating instance {plan.name!r}"):
                node = d.create_node(
                    NodeLocation(plan.region or PROVIDER.region, plan.region or PROVIDER.region, "", d),
                    plan.name,
                    NodeSize(plan.size or PROVIDER.size, plan.size or PROVIDER.size, 0, 0, 0, 0, d),
                    NodeImage(PROVIDER.image, PROVIDER.image, d),
                    root_pass=secrets.token_urlsafe(32),  # required by the API; never stored: log in with --ssh-key
                    ex_authorized_keys=[plan.ssh_key] if plan.ssh_key else None,
                    ex_tags=tag_list(plan),
                    ex_userdata=plan.user_data,
                )
                node_id = str(node.id)
            with self._api(f"attaching firewall {firewall_id} to instance {node_id}"):
                self._request(f"/v4/networking/firewalls/{firewall_id}/devices", "POST", {"type": "linode", "id": int(node_id)})
        except BaseException:
            if node_id is not None:
                self._quiet(f"/v4/linode/instances/{node_id}")
            self._quiet(f"/v4/networking/firewalls/{firewall_id}")
            raise
        return Host(id=node_id, name=plan.name, provider=self.name, status="provisioning", mode=plan.spec.mode)

    def status(self, host_id: str) -> Host:
        if not host_id.isdigit():
            raise NotFound(f"linode: no instance with id {host_id!r} (ids are numbers)")
        with self._api(f"reading instance {host_id}"):
            return self._host(self._request(f"/v4/linode/instances/{host_id}"))

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Delete the instance, wait until it is gone, then delete the firewall made for it."""
        label = self.status(host_id).name
        with self._api(f"reading firewalls of instance {host_id}"):
            firewalls = self._request(f"/v4/linode/instances/{host_id}/firewalls").get("data", [])
        with self._api(f"deleting instance {host_id}"):
            self._request(f"/v4/linode/instances/{host_id}", "DELETE")
        from ..wait import wait_until_gone

        wait_until_gone(self, host_id, timeout)
        for firewall in firewalls:
            if made_for(firewall.get("label"), label, PROVIDER.firewall_name_max):
                # not quietly: a failure said "deleted", removed the state and left the firewall, whose label (unique
                # per account) then failed the next create of this name; now the state stays for the next delete
                try:
                    with self._api(f"deleting firewall {firewall.get('label')} of instance {host_id}"):
                        self._request(f"/v4/networking/firewalls/{firewall['id']}", "DELETE")
                except NotFound:
                    pass

    def delete_leftovers(self, name: str) -> list[str]:
        """The Cloud Firewall ``create`` made for the instance ``name``, already gone: labelled inlets-NAME, tagged
        inlets, and attached to nothing, so that a firewall of the user's (shared, or merely named alike) is never
        taken for it."""
        wanted = firewall_name(name, PROVIDER.firewall_name_max)
        headers = {"X-Filter": json.dumps({"label": wanted})}
        with self._api(f"reading firewall {wanted}"):
            found = self._pages("/v4/networking/firewalls", headers, f"reading firewall {wanted}")
        removed = []
        for firewall in found:
            if not made_for(firewall.get("label"), name, PROVIDER.firewall_name_max) or TAG not in (firewall.get("tags") or []):
                continue
            path = f"/v4/networking/firewalls/{firewall['id']}"
            with self._api(f"reading the devices of firewall {wanted}"):
                devices = self._request(f"{path}/devices")
            if devices.get("data") or devices.get("results"):
                continue
            try:
                with self._api(f"deleting firewall {wanted}"):
                    self._request(path, "DELETE")
            except NotFound:
                pass
            removed.append(f"firewall {wanted}")
        return removed

    def _pages(self, path: str, headers: dict[str, str], what: str) -> list[dict[str, Any]]:
        """Every item of a paged list (pages of 500)."""
        def page(number: int) -> tuple[list[dict[str, Any]], int | None]:
            body = self._request(path, params={"page": number, "page_size": 500}, headers=headers)
            return list(body.get("data") or []), number + 1 if number < int(body.get("pages") or 1) else None

        return every_page(self.name, what, page, 1)

    def _quiet(self, path: str) -> None:
        """Best-effort DELETE while cleaning up (the first error is the one reported)."""
        try:
            with self._api(f"deleting {path}"):
                self._request(path, "DELETE")
        except NotFound:
            pass
        except Exception:  # noqa: BLE001 - cleanup must not hide the original failure
            pass

    def list(self) -> list[Host]:
        headers = {"X-Filter": json.dumps({"tags": TAG})}
        with self._api("listing instances"):
            return [self._host(i) for i in self._pages("/v4/linode/instances", headers, "listing instances")]

    def _host(self, data: dict[str, Any]) -> Host:
        ip = next((a for a in data.get("ipv4") or [] if not _private(a)), None)
        status = str(data.get("status", "unknown"))
        tags = list(data.get("tags") or [])
        state = ACTIVE if status == "running" else status
        return Host(
            id=str(data["id"]), name=str(data.get("label", "")), provider=self.name, status=state, ip=ip,
            mode=mode_from_tags(tags), created_at=data.get("created"), expires_at=parse_expiry_tag(tags),
            detail=f"instance status {status!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"region": str(data.get("region", "")), "tags": json.dumps(tags)},
        )


def _keep_page_size(connection: Any) -> None:
    """Let a request's own page_size stand: the driver sets 25 on every request, so _pages' pages "of 500" were
    of 25, and a page per 25 servers was asked for (when lists stopped at 20 pages: 500 shown of more, without a word)."""
    default = connection.add_default_params

    def add_default_params(params: dict[str, Any]) -> dict[str, Any]:
        size = params.get("page_size")
        params = default(params)
        if size is not None:
            params["page_size"] = size
        return params

    connection.add_default_params = add_default_params


def _private(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_private
    except ValueError:
        return True


def build(creds: Credentials, state_root: Path) -> LinodeProvider:
    token, words = PROVIDER.token_from(creds)
    return LinodeProvider(token, endpoint_of(PROVIDER, creds), creds.api_timeout, credentials=words)
