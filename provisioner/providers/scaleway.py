"""Scaleway Instances through Scaleway's official Python SDK (libcloud's driver cannot pass user-data).

The supported way to give a Scaleway server cloud-init user-data is the Instance API's
``PATCH .../servers/ID/user_data/cloud-init`` (``set_server_user_data`` in the SDK)
between creating the server (stopped) and powering it on, which is what this does.
Each server gets a security group of its own that drops everything inbound except the
tunnel's ports; it is deleted after the server. Credentials: the secret key from
``--access-token-file``, ``--access-token`` or $SCW_SECRET_KEY, with
$SCW_DEFAULT_PROJECT_ID; ``--api-url`` or $SCW_API_URL (the SDK's own variable)
points it elsewhere. Host ids are ``ZONE/ID``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ContextManager

from ..errors import NotFound, ProvisionError
from ..firewall import ANY_IPV4, ANY_IPV6, firewall_name, inbound_rules, made_for
from .api_errors import QUOTA, Fault, api_errors, by_status, not_json, one_line, refuse_redirect, retry_after
from .api_url import parse_api_url
from .base import (
    ACTIVE, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, mode_from_tags, parse_expiry_tag, tag_list,
)
from .paging import every_page

PROJECT_ENV = "SCW_DEFAULT_PROJECT_ID"
ACCESS_ENV = "SCW_ACCESS_KEY"
PROVIDER = ProviderInfo(
    token_noun="secret key",
    name="scaleway", title="Scaleway", user_data_limit=64 * 1024,  # conservative: well under what the endpoint takes
    credentials=f"$SCW_SECRET_KEY + ${ACCESS_ENV} + ${PROJECT_ENV}", token_env=("SCW_SECRET_KEY", "INLETS_ACCESS_TOKEN"),
    api_url_env=("SCW_API_URL",), region="fr-par-1", region_note="a zone", size="DEV1-S",
    image="ubuntu_noble",  # image label: Ubuntu 24.04 LTS
    firewall_note="security group dropping every inbound port but the tunnel's",
)
DEFAULT_API_URL = "https://api.scaleway.com"
PAGE_SIZE = 100


class ScalewayProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 3.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, access_key: str, secret_key: str, project_id: str, api_url: str | None = None,
                 zone: str | None = None, timeout: float = 30.0, *, credentials: str = PROVIDER.token_noun) -> None:
        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        from scaleway import Client
        from scaleway.instance.v1.custom_api import InstanceUtilsV1API

        if not access_key or not project_id:
            raise ProvisionError(f"Scaleway needs ${ACCESS_ENV} and ${PROJECT_ENV} set as well as the secret key")
        self._url = (api_url or DEFAULT_API_URL).rstrip("/")
        parse_api_url(PROVIDER.name, self._url, PROVIDER.api_url_env[0])  # before the SDK
        self.zone = zone or os.environ.get("SCW_DEFAULT_ZONE") or PROVIDER.region
        client = Client(access_key=access_key, secret_key=secret_key, api_url=self._url,
                        api_allow_insecure=self._url.startswith("http://"), default_project_id=project_id,
                        default_zone=self.zone)
        self._project = project_id
        _bound_requests(timeout)
        try:
            self._api_client = InstanceUtilsV1API(client)  # validates the key formats
        except ValueError as exc:
            raise ProvisionError(f"scaleway: {str(exc).split('. See')[0]}") from None

    def _api(self, what: str) -> ContextManager[None]:
        return api_errors(self.name, self._url, what, scaleway_fault, credentials=self.credentials, sdk="scaleway")

    def create(self, plan: Plan) -> Host:
        from scaleway.instance.v1 import (
            SecurityGroupPolicy, SecurityGroupRuleAction, SecurityGroupRuleDirection, SecurityGroupRuleProtocol,
            ServerAction,
        )

        api, zone = self._api_client, plan.region or self.zone
        with self._api(f"creating security group for {plan.name!r}"):
            group = api.create_security_group(
                zone=zone, name=firewall_name(plan.name, PROVIDER.firewall_name_max), description=f"inlets exit server {plan.name}", stateful=True,
                project=self._project, tags=[TAG], inbound_default_policy=SecurityGroupPolicy.DROP,
                outbound_default_policy=SecurityGroupPolicy.ACCEPT, enable_default_security=True,
            ).security_group
        server = None
        try:
            with self._api(f"adding security group rules for {plan.name!r}"):
                position = 0
                for rule in inbound_rules(plan.spec):
                    for ip_range in (ANY_IPV4, ANY_IPV6):
                        position += 1
                        api.create_security_group_rule(
                            zone=zone, security_group_id=group.id, protocol=SecurityGroupRuleProtocol.TCP,
                            direction=SecurityGroupRuleDirection.INBOUND, action=SecurityGroupRuleAction.ACCEPT,
                            ip_range=ip_range, position=position, editable=True, dest_port_from=rule.port,
                        )
            with self._api(f"creating server {plan.name!r}"):
                server = api.create_server(
                    zone=zone, commercial_type=plan.size or PROVIDER.size, name=plan.name, image=PROVIDER.image,
                    dynamic_ip_required=True, project=self._project, tags=tag_list(plan), security_group=group.id,
                ).server
            with self._api(f"setting the cloud-init user-data of {plan.name!r}"):
                api.set_server_user_data(server_id=server.id, key="cloud-init", content=plan.user_data.encode(), zone=zone)
            with self._api(f"powering on {plan.name!r}"):
                api.server_action(server_id=server.id, zone=zone, action=ServerAction.POWERON)
        except BaseException:
            if server is not None:  # never powered on: stopped
                self._quiet(lambda: self._delete_stopped(server, zone))
            self._quiet(lambda: api.delete_security_group(security_group_id=group.id, zone=zone))
            raise
        return Host(id=f"{zone}/{server.id}", name=plan.name, provider=self.name, status="starting", mode=plan.spec.mode)

    def _delete_stopped(self, server: Any, zone: str) -> None:
        """Delete a server that is not running, then its volumes: the API refuses to terminate a stopped server,
        and deleting one keeps its volumes (billed), detached."""
        api = self._api_client
        api.delete_server(server_id=server.id, zone=zone)
        for volume in (server.volumes or {}).values():
            api.delete_volume(volume_id=volume.id, zone=zone)

    def _quiet(self, call: Any) -> None:
        try:
            with self._api("cleaning up"):
                call()
        except ProvisionError:
            pass

    def _split(self, host_id: str) -> tuple[str, str]:
        zone, _, server_id = host_id.partition("/")
        if not zone or not server_id:
            raise NotFound(f"scaleway: no server {host_id!r} (ids are ZONE/ID)")
        return zone, server_id

    def status(self, host_id: str) -> Host:
        zone, server_id = self._split(host_id)
        with self._api(f"reading server {host_id}"):
            return self._host(self._api_client.get_server(server_id=server_id, zone=zone).server)

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Terminate the server (its volumes and IP go with it; stopped: delete it and its volumes), wait until
        gone, delete its security group."""
        from scaleway.instance.v1 import ServerAction

        zone, server_id = self._split(host_id)
        api = self._api_client
        with self._api(f"reading server {host_id}"):
            server = api.get_server(server_id=server_id, zone=zone).server
        state = str(getattr(server.state, "value", server.state))
        with self._api(f"terminating server {host_id}" if state == "running" else f"deleting {state} server {host_id}"):
            if state == "running":
                api.server_action(server_id=server_id, zone=zone, action=ServerAction.TERMINATE)
            else:  # a --ttl powered it off, or it was stopped by hand
                self._delete_stopped(server, zone)
        from ..wait import wait_until_gone

        wait_until_gone(self, host_id, timeout)
        group = server.security_group
        if group is not None and made_for(group.name, str(server.name or ""), PROVIDER.firewall_name_max):
            # not quietly: a refusal said "deleted", removed the state and left the group; now the state stays, and
            # the next delete finds the group by its name (delete_leftovers)
            self._delete_group(group.id, group.name, zone)

    def _delete_group(self, group_id: str, name: str, zone: str) -> None:
        try:
            with self._api(f"deleting security group {name} in {zone}"):
                self._api_client.delete_security_group(security_group_id=group_id, zone=zone)
        except NotFound:
            pass

    def delete_leftovers(self, name: str) -> list[str]:
        """The security group ``create`` made for the server ``name``, already gone: named inlets-NAME, tagged inlets,
        and used by no server, in any zone, so that a group of the user's (shared, or merely named alike) stays."""
        wanted, removed = firewall_name(name, PROVIDER.firewall_name_max), []
        for zone in self._zones():
            with self._api(f"reading security group {wanted} in {zone}"):
                groups = self._api_client.list_security_groups(zone=zone, name=wanted, project=self._project,
                                                               tags=[TAG], per_page=PAGE_SIZE).security_groups
            for group in groups:
                if made_for(group.name, name, PROVIDER.firewall_name_max) and TAG in (group.tags or []) and not group.servers:
                    self._delete_group(group.id, group.name, zone)
                    removed.append(f"security group {wanted} ({zone})")
        return removed

    def list(self) -> list[Host]:
        """Servers tagged ``inlets`` in every zone (as ``scw instance server list zone=all``): the API lists one
        zone at a time, and ``create --region`` may have put one in any of them."""
        servers: list[Any] = []
        for zone in self._zones():
            def page(number: int, zone: str = zone) -> tuple[list[Any], int | None]:
                batch = self._api_client.list_servers(zone=zone, project=self._project, tags=[TAG], page=number,
                                                      per_page=PAGE_SIZE).servers
                return batch, number + 1 if len(batch) == PAGE_SIZE else None

            with self._api(f"listing servers in {zone}"):  # bounded (the SDK's list_servers_all is not)
                servers += every_page(self.name, f"listing servers in {zone}", page, 1)
        return [self._host(s) for s in servers]

    def _zones(self) -> list[str]:
        """The default zone first, then every zone the SDK knows."""
        from scaleway_core.bridge import ALL_ZONES

        return list(dict.fromkeys([self.zone, *ALL_ZONES]))

    def _host(self, server: Any) -> Host:
        addresses = [ip.address for ip in (server.public_ips or []) if ip.family == "inet"]
        ip = (server.public_ip.address if server.public_ip else None) or (addresses[0] if addresses else None)
        state = str(getattr(server.state, "value", server.state))
        tags = list(server.tags or [])
        return Host(
            id=f"{server.zone}/{server.id}", name=str(server.name), provider=self.name,
            status=ACTIVE if state == "running" else state, ip=ip, mode=mode_from_tags(tags),
            created_at=server.creation_date.strftime("%Y-%m-%dT%H:%M:%SZ") if server.creation_date else None,
            expires_at=parse_expiry_tag(tags),
            detail=f"server state {state!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"zone": str(server.zone)},
        )


def _bound_requests(timeout: float) -> None:
    """Give every request the SDK sends a timeout: it calls ``requests.request`` without one and has no option for
    it, so an API that stopped answering held ``create --timeout 5`` (and list, status, delete) for ever. And an
    error answer that is not JSON (a gateway's HTML page) raises the SDK's ScalewayException with its status: the
    SDK parsed it as JSON first, so a 502 read as "not JSON" (not asked again) and a 401 page sent users to --api-url."""
    import requests
    import scaleway_core.api as core_api

    class TimedRequests:
        def __getattr__(self, name: str) -> Any:
            return getattr(requests, name)

        @staticmethod
        def request(*args: Any, **kwargs: Any) -> Any:
            response = requests.request(*args, **({"timeout": timeout} | kwargs | {"allow_redirects": False}))
            refuse_redirect(response)
            if response.status_code >= 400:
                try:
                    response.json()
                except ValueError:
                    raise core_api.ScalewayException(response) from None
            return response

    core_api.requests = TimedRequests()  # type: ignore[assignment]


def scaleway_fault(exc: BaseException) -> Fault | None:
    """What the Scaleway SDK's ScalewayException means: its HTTP status, with the API's message and type."""
    from scaleway_core.api import ScalewayException

    if not isinstance(exc, ScalewayException):
        return None
    text = one_line(exc.response.text)
    kind = ""
    try:
        body = exc.response.json()
        text, kind = str(body.get("message") or text), str(body.get("type") or "")
    except ValueError:  # a gateway's page
        text = not_json(exc.response.text)
    except AttributeError:
        pass
    if kind == "quotas_exceeded":  # answered with 403, which would otherwise read as a refused key
        return Fault(QUOTA, exc.status_code, text)
    return by_status(exc.status_code, text, retry_after(getattr(exc.response, "headers", None)))


def build(creds: Credentials, state_root: Path) -> ScalewayProvider:
    secret, words = PROVIDER.token_from(creds)
    # a 401 is either key's: name where each came from (the access key has only its variable)
    words = f"access key (${ACCESS_ENV}) and {words}"
    return ScalewayProvider(os.environ.get(ACCESS_ENV, "").strip(), secret, os.environ.get(PROJECT_ENV, "").strip(),
                            PROVIDER.api_url(creds), timeout=creds.api_timeout, credentials=words)
