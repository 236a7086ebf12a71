"""DigitalOcean droplets through apache-libcloud's DigitalOcean driver.

The API endpoint can be pointed elsewhere with ``--api-url`` or
$DIGITALOCEAN_API_URL (tests, proxies); the default is DigitalOcean's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import replace
from typing import Any, ContextManager

from ..errors import NotFound
from .api_errors import AUTH, RATE_LIMIT, Fault, api_errors, ratelimit_reset, retry_after
from ..spec import TunnelSpec
from .base import (ACTIVE, FAILED, GONE_TIMEOUT, TAG, Balancer, Credentials, Host, Plan, ProviderInfo, group_from_tags,
                   parse_expiry_tag, tag_list)
from .api_url import parse_api_url
from .paging import every_page

PROVIDER = ProviderInfo(
    token_noun="access token",
    name="digitalocean", title="DigitalOcean", user_data_limit=64 * 1024,
    credentials="$DIGITALOCEAN_ACCESS_TOKEN", token_env=("DIGITALOCEAN_ACCESS_TOKEN", "INLETS_ACCESS_TOKEN"),
    api_url_env=("DIGITALOCEAN_API_URL",), region="lon1", size="s-1vcpu-1gb", image="ubuntu-24-04-x64",
    ssh_key="key fingerprint or id to install",
    balancer="a DigitalOcean load balancer (TCP, PROXY protocol, health checks on the data ports)",
)
_BALANCER_ID_RE = re.compile(r"[0-9a-fA-F-]{1,64}")
#: DigitalOcean's smallest health-check settings: a dead replica leaves the pool in about 6 s
HEALTH_CHECK = {"check_interval_seconds": 3, "response_timeout_seconds": 3, "unhealthy_threshold": 2,
                "healthy_threshold": 2}


class DigitalOceanProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 2.0
    keeps_server_key = False

    def __init__(self, token: str, api_url: str | None = None, timeout: float = 30.0,
                 *, credentials: str = PROVIDER.token_noun) -> None:
        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        from libcloud.compute.providers import get_driver
        from libcloud.compute.types import Provider

        from .cloud_api import keep_status, point

        self._driver = get_driver(Provider.DIGITAL_OCEAN)(token)
        keep_status(self._driver.connection)
        endpoint = parse_api_url("digitalocean", api_url, PROVIDER.api_url_env[0]) if api_url else None
        self._endpoint = point(self._driver.connection, endpoint, timeout).url

    def _api(self, what: str) -> ContextManager[None]:
        return api_errors(self.name, self._endpoint, what, _fault, credentials=self.credentials, sdk="apache-libcloud")

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        attrs: dict[str, Any] = {"tags": tag_list(plan)}
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
        with self._api("listing droplets"):
            return [self._host(d) for d in self._pages("/v2/droplets", "droplets", {"tag_name": TAG}, "listing droplets")]

    def _pages(self, path: str, key: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        """Every item of a list DigitalOcean pages by number (200 a page)."""
        def page(number: int) -> tuple[list[dict[str, Any]], int | None]:
            body = self._driver.connection.request(path, params=params | {"per_page": 200, "page": number}).object
            more = body.get("links", {}).get("pages", {}).get("next")
            return list(body.get(key) or []), number + 1 if more else None

        return every_page(self.name, what, page, 1)

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
            group=group_from_tags(tags),
            extra={"region": str((data.get("region") or {}).get("slug", "")), "tags": json.dumps(tags)},
        )

    # -- load balancers (create --replicas) ------------------------------------------------------

    def create_balancer(self, name: str, spec: TunnelSpec, host_ids: list[str], region: str | None) -> Balancer:
        """TCP on every data port, so the PROXY header reaches the servers (--lb-proxy-protocol v1)
        and HTTP is routed by the servers themselves; the health check connects to the first data
        port, which a replica opens only while a client serves it."""
        rules = [{"entry_protocol": "tcp", "entry_port": port, "target_protocol": "tcp", "target_port": port}
                 for port in spec.data_ports]
        body = {
            "name": name, "region": region or PROVIDER.region, "droplet_ids": [int(i) for i in host_ids],
            "forwarding_rules": rules, "enable_proxy_protocol": True,
            "health_check": {"protocol": "tcp", "port": spec.data_ports[0], **HEALTH_CHECK},
        }
        with self._api(f"creating load balancer {name!r}"):
            data = self._driver.connection.request("/v2/load_balancers", data=json.dumps(body), method="POST").object
        return self._balancer(data["load_balancer"])

    def balancer_status(self, balancer_id: str) -> Balancer:
        if not _BALANCER_ID_RE.fullmatch(balancer_id):
            raise NotFound(f"digitalocean: no load balancer with id {balancer_id!r}")
        with self._api(f"reading load balancer {balancer_id}"):
            data = self._driver.connection.request(f"/v2/load_balancers/{balancer_id}").object["load_balancer"]
        return self._balancer(data)

    def delete_balancer(self, balancer_id: str) -> None:
        if not _BALANCER_ID_RE.fullmatch(balancer_id):
            raise NotFound(f"digitalocean: no load balancer with id {balancer_id!r}")
        with self._api(f"deleting load balancer {balancer_id}"):
            self._driver.connection.request(f"/v2/load_balancers/{balancer_id}", method="DELETE")

    def balancers(self) -> list[Balancer]:
        with self._api("listing load balancers"):
            found = self._pages("/v2/load_balancers", "load_balancers", {}, "listing load balancers")
            return [self._balancer(b) for b in found]

    def _balancer(self, data: dict[str, Any]) -> Balancer:
        status, ip = str(data.get("status", "unknown")), data.get("ip") or None
        return Balancer(
            id=str(data["id"]), name=str(data.get("name", "")), ip=ip,
            status=ACTIVE if status == "active" and ip else FAILED if status == "errored" else status,
            host_ids=tuple(str(i) for i in data.get("droplet_ids") or ()),
            detail=f"load balancer status {status!r}" + (f", ip {ip}" if ip else ", no IP yet"),
        )


def _fault(exc: BaseException) -> Fault | None:
    """libcloud's meaning, but the driver raises InvalidCredsError only for 401 and ends its messages with the status
    (" (code: 503)"), which the one-line error already shows."""
    from libcloud.common.exceptions import BaseHTTPError
    from libcloud.common.types import InvalidCredsError

    from .cloud_api import libcloud_fault

    if isinstance(exc, InvalidCredsError):
        return Fault(AUTH, 401, str(exc.value))
    if isinstance(exc, BaseHTTPError) and exc.code == 429:  # libcloud's message is its own "429 Rate limit exceeded"
        return Fault(RATE_LIMIT, 429, "", retry_after(exc.headers, reset=ratelimit_reset))
    fault = libcloud_fault(exc)
    suffix = f" (code: {fault.status})" if fault is not None else ""
    return replace(fault, message=fault.message.removesuffix(suffix)) if fault is not None else None


def build(creds: Credentials, state_root: Path) -> DigitalOceanProvider:
    token, words = PROVIDER.token_from(creds)
    return DigitalOceanProvider(token, PROVIDER.api_url(creds), creds.api_timeout, credentials=words)
