"""Vultr instances through apache-libcloud's Vultr (API v2) driver, behind a firewall group of their own.

The endpoint can be pointed elsewhere with ``--api-url`` or $VULTR_API_URL.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

from ..errors import LeftBehind, NotFound, ProvisionError, Transient, os_words
from ..firewall import firewall_name, inbound_rules, made_for
from .base import ACTIVE, GONE_TIMEOUT, TAG, Credentials, Host, Kept, Plan, ProviderInfo
from .api_url import Endpoint, endpoint_of
from .paging import every_page

PROVIDER = ProviderInfo(
    name="vultr", title="Vultr", user_data_limit=48 * 1024,  # sent base64-encoded; stays under 64 KiB on the wire
    credentials="$VULTR_API_KEY", token_env=("VULTR_API_KEY", "INLETS_ACCESS_TOKEN"), api_url_env=("VULTR_API_URL",),
    region="lhr", size="vc2-1c-1gb", image="2284",  # os_id of "Ubuntu 24.04 LTS x64"
    firewall_note="firewall group opening only the tunnel's ports",
)

#: the file in an exit server's local state holding the markers of the firewall groups create made for it, one a
#: line: Vultr groups take no tags, and a description alone (inlets-NAME) may be the user's own group's
MARKERS = "vultr-firewall-markers"
_MARKER_HEX = 8  # random hex digits ending the description: "inlets-NAME 1a2b3c4d"
# The API documents no limit on a description (OpenAPI: a plain string); it stays within firewall_name_max all the same.
_MARKED = re.compile(rf"(.+) ([0-9a-f]{{{_MARKER_HEX}}})")


def _description(name: str, marker: str) -> str:
    """The description of the group create makes for the instance ``name``: inlets-NAME and a marker of its own."""
    return f"{firewall_name(name, PROVIDER.firewall_name_max - 1 - _MARKER_HEX)} {marker}"


def _marker_of(description: str, name: str) -> str | None:
    """The marker of a group described as create describes one for ``name``; "" for the old description, inlets-NAME
    alone (an older inletsctl's, or the user's: nothing tells them apart); None for any other description."""
    if made_for(description, name, PROVIDER.firewall_name_max):
        return ""
    marked = _MARKED.fullmatch(description)
    return marked.group(2) if marked and description == _description(name, marked.group(2)) else None


class VultrProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 3.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, token: str, endpoint: Endpoint | None = None, timeout: float = 30.0,
                 state_root: Path | None = None, *, credentials: str = PROVIDER.token_noun) -> None:
        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        from libcloud.compute.providers import get_driver
        from libcloud.compute.types import Provider

        from .cloud_api import point, strict_responses

        self._driver = get_driver(Provider.VULTR)(token, api_version="2")
        strict_responses(self._driver.connection)
        self._endpoint = point(self._driver.connection, endpoint, timeout)
        self._root = state_root  # where delete_leftovers reads the markers create recorded (None: none known)

    def _api(self, what: str) -> Any:
        from .cloud_api import libcloud_errors

        return libcloud_errors(self.name, self._endpoint, what, self.credentials)

    def _request(self, path: str, method: str = "GET", body: Any = None, params: Any = None) -> Any:
        data = json.dumps(body) if body is not None else None
        return self._driver.connection.request(path, method=method, data=data, params=params).object

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        description = _description(plan.name, _record_marker(plan.state_dir / MARKERS))
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
        except BaseException as exc:
            try:
                self._delete_firewall(str(group["id"]))
            except ProvisionError:  # the first error is the one to show (a 400 for a bad region, not a cleanup's 500)
                if isinstance(exc, ProvisionError) and not isinstance(exc, Transient):
                    # left behind: create must look again while the state holding its marker is still there
                    raise LeftBehind(str(exc), exc.exit_code) from None
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
        return _marker_of(str(group.get("description", "")), name) is not None

    def delete_leftovers(self, name: str) -> list[str]:
        """The firewall group ``create`` made for the instance ``name`` before it was cut short (Ctrl-C, a timeout on
        the group's POST), used by no instance. Vultr groups take no tags, so only the marker that create recorded in
        the local state before the POST shows a group was made here: a group of the user's described inlets-NAME
        (or an older inletsctl's, unmarked) is never deleted, only named, by its id, for the user to delete."""
        ours = _read_markers(self._root / name / MARKERS) if self._root is not None else set()
        what = f"reading firewall group {firewall_name(name, PROVIDER.firewall_name_max)}"
        with self._api(what):
            groups = self._pages("/v2/firewalls", "firewall_groups", {}, what)
        removed: list[str] = []
        for group in groups:
            description = str(group.get("description", ""))
            marker = _marker_of(description, name)
            if marker is None or group.get("instance_count"):
                continue
            if marker in ours:
                self._delete_firewall(str(group["id"]))
                removed.append(f"firewall group {description}")
            else:
                removed.append(Kept(f"left firewall group {group['id']} ({description!r}), unused: inletsctl has no "
                                    f"record of making it; if it did, delete it with: vultr-cli firewall group delete "
                                    f"{group['id']}"))
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


def _record_marker(path: Path) -> str:
    """A new marker, added to the exit server's local state before the group is asked for: a create cut short after
    the POST leaves a group only this record shows to be inletsctl's."""
    marker = secrets.token_hex(_MARKER_HEX // 2)
    try:
        with open(path, "a", encoding="ascii") as file:
            file.write(marker + "\n")
    except OSError as exc:
        raise ProvisionError(f"cannot record the firewall group's marker in {path}: {os_words(exc)}; "
                             "check the state folder, then create again") from None
    return marker


def _read_markers(path: Path) -> set[str]:
    """The markers create recorded for one exit server; none when it has no state (or create never got that far)."""
    try:
        lines = path.read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return set()
    return {line for line in lines if re.fullmatch(rf"[0-9a-f]{{{_MARKER_HEX}}}", line)}


def build(creds: Credentials, state_root: Path) -> VultrProvider:
    token, words = PROVIDER.token_from(creds)
    return VultrProvider(token, endpoint_of(PROVIDER, creds), creds.api_timeout, state_root, credentials=words)
