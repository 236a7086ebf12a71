"""Azure VMs through apache-libcloud's Azure ARM driver (``ex_customdata`` user-data).

Each exit server lives in a resource group of its own (``inlets-NAME``, tagged
``inlets``) holding its VNet, network security group (exactly the tunnel's ports,
8123 included: inletsctl's Azure rule forgot it), static public IP, NIC and VM;
delete removes the group, so nothing it made is left behind. Credentials: a
service principal from ``--access-token-file`` (the JSON of ``az ad sp
create-for-rbac --sdk-auth``), or $AZURE_CLIENT_ID, $AZURE_CLIENT_SECRET (or
``--access-token``), $AZURE_TENANT_ID, $AZURE_SUBSCRIPTION_ID. ``--api-url`` or
$AZURE_API_URL points Resource Manager and the token endpoint elsewhere.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from inlets_py.runtime.core.auth import MAX_SECRET_FILE, SecretFileTooLarge, read_secret_file

from ..errors import NotFound, ProvisionError, os_words
from ..firewall import firewall_name, inbound_ports
from .base import ACTIVE, FAILED, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, label_map, labels_expiry
from .api_errors import one_line
from .api_url import Endpoint, endpoint_of
from .paging import every_page

if TYPE_CHECKING:  # libcloud is imported where it is used: inletsctl --help reads only PROVIDER
    from libcloud.compute.drivers.azure_arm import AzureNodeDriver

ENV = ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID")
PROVIDER = ProviderInfo(
    name="azure", title="Azure", user_data_limit=48 * 1024,  # customData is base64 and limited to 64 KiB
    token_noun="service principal",
    credentials="an sdk-auth file or " + "/".join("$" + name for name in ENV), api_url_env=("AZURE_API_URL",),
    region="uksouth", size="Standard_B1s", login_user="azureuser", ssh_key="public key text",
    image="Canonical:ubuntu-24_04-lts:server:latest",  # publisher:offer:sku:version, as the az CLI writes it
    firewall_note="network security group opening only the tunnel's ports",
    firewall_name_max=90,  # the resource group inlets-NAME: 1-90 characters
)
GROUPS_API, NETWORK_API = "2021-04-01", "2023-09-01"
WAIT = 300.0  # for Resource Manager to provision one resource


def service_principal(auth_file: Path | None, secret: str | None) -> dict[str, str]:
    """tenant, subscription, client id and secret, from the auth file or the environment; ``source`` says which (the
    file's path, or the variables: --access-token for the secret it gave), for the words of a 401."""
    if auth_file is not None:
        try:
            data = json.loads(read_secret_file(auth_file.expanduser()).decode())
            return {"tenant": data["tenantId"], "subscription": data["subscriptionId"],
                    "client": data["clientId"], "secret": data["clientSecret"],
                    "source": f"--access-token-file {auth_file}"}
        except SecretFileTooLarge:
            raise ProvisionError(f"Azure auth file {auth_file} is larger than {MAX_SECRET_FILE // 1024} KiB: give the "
                                 "file `az ad sp create-for-rbac --sdk-auth` printed") from None
        except OSError as exc:
            raise ProvisionError(f"cannot read Azure auth file {auth_file}: {os_words(exc)}") from None
        except UnicodeDecodeError:  # its str() is Python's codec message
            raise ProvisionError(f"Azure auth file {auth_file} is not text (UTF-8): give the file `az ad sp "
                                 "create-for-rbac --sdk-auth` printed") from None
        except (ValueError, KeyError, TypeError):
            raise ProvisionError(
                f"{auth_file} is not an Azure auth file (needs clientId, clientSecret, subscriptionId, tenantId)"
            ) from None
    values = {name: os.environ.get(name, "").strip() for name in ENV}
    if secret:
        values["AZURE_CLIENT_SECRET"] = secret.strip()
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ProvisionError(
            "no Azure service principal: give --access-token-file AUTH.json (az ad sp create-for-rbac --sdk-auth), "
            f"or set {', '.join('$' + n for n in missing)} (--access-token may give the client secret)"
        )
    source = ", ".join("--access-token" if name == "AZURE_CLIENT_SECRET" and secret else f"${name}" for name in ENV)
    return {"client": values["AZURE_CLIENT_ID"], "secret": values["AZURE_CLIENT_SECRET"],
            "tenant": values["AZURE_TENANT_ID"], "subscription": values["AZURE_SUBSCRIPTION_ID"], "source": source}


def _driver_class(endpoint: Endpoint | None) -> type[AzureNodeDriver]:
    """libcloud signs in on port 443 of the login host only: with ``endpoint``, sign in and call ARM there.

    The sign-in is libcloud's, but for an answer that is not JSON (a gateway's 502 page, a proxy's login page):
    libcloud's own failed there on its missing ``driver`` (an AttributeError, said as 'its JSON is not shaped as
    the API documents'), so neither the status nor the page was told."""
    from libcloud.common.azure_arm import AzureAuthJsonResponse
    from libcloud.common.types import MalformedResponseError
    from libcloud.compute.drivers.azure_arm import AzureNodeDriver

    from .cloud_api import api_message

    class Answer(AzureAuthJsonResponse):  # type: ignore[misc]
        def parse_error(self) -> str:
            try:
                return str(super().parse_error())
            except MalformedResponseError:  # an error page: its status is raised with its words
                return one_line(api_message(self.body), 120) or f"HTTP {self.status}"

    class Connection(AzureNodeDriver.connectionCls):  # type: ignore[name-defined,misc]
        def get_token_from_credentials(self) -> None:
            host, port, secure = (endpoint.host, endpoint.port, endpoint.secure) if endpoint else (self.login_host, 443, True)
            conn = self.conn_class(host, port, secure=secure, timeout=self.timeout)
            conn.driver = self.driver  # named by libcloud's error for an answer that is not JSON
            conn.connect()
            body = urlencode({"grant_type": "client_credentials", "client_id": self.user_id,
                              "client_secret": self.key, "resource": self.login_resource})
            conn.request("POST", f"/{self.tenant_id}/oauth2/token", body,
                         {"Content-type": "application/x-www-form-urlencoded"})
            answer = Answer(conn.getresponse(), conn)
            self.access_token = answer.object["access_token"]
            self.expires_on = answer.object["expires_on"]

        def connect(self, *args: Any, **kwargs: Any) -> Any:
            if endpoint is not None:
                self.host, self.port, self.secure = endpoint.host, endpoint.port, endpoint.secure
            return super().connect(*args, **kwargs)

    return type("EndpointAzureNodeDriver", (AzureNodeDriver,), {"connectionCls": Connection})


class AzureProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 5.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, principal: dict[str, str], endpoint: Endpoint | None = None, timeout: float = 30.0,
                 *, credentials: str = PROVIDER.token_noun) -> None:
        from .cloud_api import libcloud_errors, point, strict_responses

        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        self._sub = principal["subscription"]
        login = endpoint or Endpoint(True, "login.microsoftonline.com", 443)
        with libcloud_errors(self.name, login, "signing in with the service principal", credentials):
            self._driver = _driver_class(endpoint)(principal["tenant"], self._sub, principal["client"], principal["secret"])
            conn = self._driver.connection
            # libcloud base64-encodes customData to bytes, which json.dumps refuses on Python 3
            conn.encode_data = lambda data: json.dumps(data, default=lambda o: o.decode() if isinstance(o, bytes) else str(o))
            strict_responses(conn)
            self._endpoint = point(conn, None, timeout)

    def _api(self, what: str) -> Any:
        from .cloud_api import libcloud_errors

        return libcloud_errors(self.name, self._endpoint, what, self.credentials)

    def _request(self, path: str, version: str, method: str = "GET", body: Any = None) -> Any:
        return self._driver.connection.request(path, params={"api-version": version}, data=body, method=method).object

    def _group(self, group: str) -> str:
        return f"/subscriptions/{self._sub}/resourceGroups/{group}"

    def _put(self, path: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT a resource and wait (bounded) until Resource Manager has provisioned it."""
        answer = self._request(path, version, "PUT", body)
        deadline = time.monotonic() + WAIT
        while (answer.get("properties") or {}).get("provisioningState", "Succeeded") not in ("Succeeded", "Failed"):
            if time.monotonic() > deadline:
                raise ProvisionError(f"azure: {path.rsplit('/', 1)[-1]} still provisioning after {WAIT:.0f}s")
            time.sleep(self.poll_interval)
            answer = self._request(path, version)
        if (answer.get("properties") or {}).get("provisioningState") == "Failed":
            raise ProvisionError(f"azure: provisioning {path.rsplit('/', 1)[-1]} failed")
        return answer

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.base import NodeAuthPassword, NodeAuthSSHKey, NodeLocation, NodeSize
        from libcloud.compute.drivers.azure_arm import AzureImage, AzureNic

        group, region = firewall_name(plan.name, PROVIDER.firewall_name_max), plan.region or PROVIDER.region
        base, net = self._group(group), f"{self._group(group)}/providers/Microsoft.Network"
        labels = label_map(plan) | {"inlets-name": plan.name}
        with self._api(f"creating resource group {group!r}"):
            self._put(base, GROUPS_API, {"location": region, "tags": labels})
        try:
            with self._api(f"creating the network of {plan.name!r}"):
                rule = {"name": "inlets-tunnel", "properties": {
                    "protocol": "Tcp", "access": "Allow", "direction": "Inbound", "priority": 100,
                    "sourceAddressPrefix": "*", "sourcePortRange": "*", "destinationAddressPrefix": "*",
                    "destinationPortRanges": [str(p) for p in inbound_ports(plan.spec)]}}
                nsg = self._put(f"{net}/networkSecurityGroups/inlets-nsg", NETWORK_API,
                                {"location": region, "properties": {"securityRules": [rule]}})
                vnet = self._put(f"{net}/virtualNetworks/inlets-vnet", NETWORK_API, {"location": region, "properties": {
                    "addressSpace": {"addressPrefixes": ["10.8.0.0/24"]},
                    "subnets": [{"name": "default", "properties": {"addressPrefix": "10.8.0.0/24",
                                                                   "networkSecurityGroup": {"id": nsg["id"]}}}]}})
                ip = self._put(f"{net}/publicIPAddresses/inlets-ip", NETWORK_API, {
                    "location": region, "sku": {"name": "Standard"},
                    "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}})
                nic = self._put(f"{net}/networkInterfaces/inlets-nic", NETWORK_API, {"location": region, "properties": {
                    "ipConfigurations": [{"name": "inlets", "properties": {
                        "subnet": {"id": vnet["properties"]["subnets"][0]["id"]},
                        "privateIPAllocationMethod": "Dynamic", "publicIPAddress": {"id": ip["id"]}}}]}})
            d = self._driver
            auth: Any = NodeAuthSSHKey(plan.ssh_key) if plan.ssh_key else NodeAuthPassword(os.urandom(24).hex() + "Aa1!")
            with self._api(f"creating VM {plan.name!r}"):
                d.create_node(
                    plan.name, NodeSize(plan.size or PROVIDER.size, plan.size or PROVIDER.size, 0, 0, 0, 0, d),
                    AzureImage(*reversed(PROVIDER.image.split(":")), region, d),
                    auth, ex_resource_group=group, location=NodeLocation(region, region, "", d),
                    ex_nic=AzureNic(nic["id"], nic["name"], region, nic["properties"]),
                    ex_tags=labels, ex_customdata=plan.user_data.encode(), ex_use_managed_disks=True,
                    ex_os_disk_delete=True,
                )
        except BaseException:
            try:
                self.delete(group)
            except ProvisionError:
                pass
            raise
        return Host(id=group, name=plan.name, provider=self.name, status="creating", mode=plan.spec.mode)

    def status(self, host_id: str) -> Host:
        base = self._group(host_id)
        with self._api(f"reading resource group {host_id}"):
            tags = self._request(base, GROUPS_API).get("tags") or {}
            name = tags.get("inlets-name") or host_id.removeprefix("inlets-")
            vm_path = f"{base}/providers/Microsoft.Compute/virtualMachines/{name}"
            try:
                vm = self._request(vm_path, "2021-11-01")
                view = self._request(f"{vm_path}/instanceView", "2021-11-01")
            except Exception as exc:  # the group exists but the VM is not there (yet, or any more)
                if getattr(exc, "code", None) != 404:
                    raise
                vm, view = {}, {}
            ip_answer = {}
            if vm:
                ip_answer = self._request(f"{base}/providers/Microsoft.Network/publicIPAddresses/inlets-ip", NETWORK_API)
        return self._host(host_id, name, tags, vm, view, ip_answer)

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Delete the resource group (the VM and everything made for it) and wait until it is gone."""
        base = self._group(host_id)
        with self._api(f"deleting resource group {host_id}"):
            self._request(base, GROUPS_API, "DELETE")
        from ..wait import wait_until_gone

        wait_until_gone(self, host_id, timeout)

    def list(self) -> list[Host]:
        """Every tagged resource group, following ARM's ``nextLink`` (bounded): a long list comes a page at a time."""
        def page(link: str | None) -> tuple[list[dict[str, Any]], str | None]:
            path, params = _next_page(link) if link else (
                f"/subscriptions/{self._sub}/resourcegroups", {"api-version": GROUPS_API, "$filter": f"tagName eq '{TAG}'"})
            body = self._driver.connection.request(path, params=params).object
            return list(body.get("value") or []), body.get("nextLink")

        with self._api("listing resource groups"):
            groups = every_page(self.name, "listing resource groups", page)
        hosts = []
        for group in groups:
            try:
                hosts.append(self.status(group["name"]))
            except NotFound:  # deleted since the list was read (another delete's last moments): not there now
                pass
        return hosts

    def _host(self, group: str, name: str, tags: dict[str, str], vm: dict[str, Any], view: dict[str, Any],
              ip_answer: dict[str, Any]) -> Host:
        codes = [s.get("code", "") for s in view.get("statuses") or []]
        power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), "unknown")
        state = str((vm.get("properties") or {}).get("provisioningState", "absent" if not vm else "unknown"))
        ip = (ip_answer.get("properties") or {}).get("ipAddress")
        status = ACTIVE if power == "running" else FAILED if state == "Failed" else f"{state}/{power}"
        return Host(
            id=group, name=name, provider=self.name, status=status, ip=ip, mode=tags.get("inlets-mode"),
            expires_at=labels_expiry(tags), detail=f"VM {state}, power {power}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"region": str(vm.get("location", ""))},
        )


def _next_page(link: str) -> tuple[str, dict[str, str]]:
    """Path and query of ARM's absolute ``nextLink``, asked of the connection's own endpoint (--api-url kept)."""
    parts = urlsplit(link)
    return parts.path, dict(parse_qsl(parts.query))


def build(creds: Credentials, state_root: Path) -> AzureProvider:
    principal = service_principal(creds.token_file, creds.token)
    return AzureProvider(principal, endpoint_of(PROVIDER, creds), creds.api_timeout,
                         credentials=f"{PROVIDER.token_noun} ({principal['source']})")
