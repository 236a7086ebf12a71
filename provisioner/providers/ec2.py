"""AWS EC2 instances through apache-libcloud's EC2 driver.

Credentials, region and endpoint follow AWS's own chain (``ec2_config``); the API is libcloud's,
made to work with AWS and EC2-compatible APIs (``ec2_api``).
Each exit server gets its own security group opening exactly the ports its mode
needs (inletsctl's rule leaves out TCP ports under 1024); delete removes it again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from ..errors import NotFound, ProvisionError, UsageError
from ..firewall import ANY_IPV4, firewall_name, inbound_ports
from . import ec2_regions
from .api_errors import api_errors
from .api_url import parse_api_url
from .base import ACTIVE, FAILED, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, parse_expiry_tag
from .ec2_config import (
    DEFAULT_REGION, ENDPOINT_ENV, KEY_ENV, REGION_ENV, AwsCredentials, aws_credentials, default_region, endpoint_url,
)

if TYPE_CHECKING:  # libcloud is imported where it is used: inletsctl --help reads only PROVIDER
    from libcloud.compute.base import Node

PROVIDER = ProviderInfo(
    name="ec2", title="AWS", user_data_limit=16 * 1024,  # EC2 refuses user-data over 16 KiB (before base64)
    credentials="a key id (with --secret-key-file), $AWS_ACCESS_KEY_ID + $AWS_SECRET_ACCESS_KEY, or $AWS_PROFILE",
    token_env=KEY_ENV, api_url_env=ENDPOINT_ENV,
    region=DEFAULT_REGION, region_env=REGION_ENV, size="t3.micro",
    region_config="the region of profile $AWS_PROFILE (else default) in $AWS_CONFIG_FILE or ~/.aws/config",
    image="ubuntu/images/hvm-ssd*/ubuntu-noble-24.04-amd64-server-*",  # Canonical's newest in the region
    ssh_key="key pair name or .pub file", login_user="ubuntu",
    firewall_note="security group {firewall} lets in tcp {control_port} and {data_ports}, nothing else",
    firewall_name_max=255,  # CreateSecurityGroup: GroupName up to 255 characters
)
#: Canonical's account; the newest Ubuntu 24.04 LTS AMI of the region is used
UBUNTU_OWNER = "099720109477"
GONE_STATES = ("terminated", "shutting-down")
#: the most regions ``list`` asks (the current one and those local state records): one call each
LIST_REGIONS = 8


class EC2Provider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 3.0
    keeps_server_key = False

    def __init__(self, creds: AwsCredentials, region: str | None = None, api_url: str | None = None,
                 state_root: Path | None = None, timeout: float = 30.0) -> None:
        self._creds, self._timeout, self._state_root = creds, timeout, state_root
        self._kwargs: dict[str, Any] = {}
        self._url = endpoint_url(api_url)
        self._path = ""  # a gateway's /prefix: it was dropped, and the requests went to its root
        if self._url:  # checked as every provider's: a bad port or [v6 address was a traceback
            endpoint = parse_api_url(PROVIDER.name, self._url, ENDPOINT_ENV[0])
            self._kwargs = {"host": endpoint.host, "secure": endpoint.secure, "port": endpoint.port}
            self._path = endpoint.path
        self._found_in: dict[str, str] = {}  # instance id -> the region list found it in
        self._use_region(region or default_region())
        self._source = creds.source

    def _use_region(self, region: str) -> None:
        from .ec2_api import Driver

        try:
            self._driver = Driver(self._creds.key_id, self._creds.secret, region=region,
                                  token=self._creds.session_token, timeout=self._timeout,
                                  signature_version="4", **self._kwargs)  # v4: STS tokens, every region
        except ValueError:  # a value the command line (or $AWS_REGION) gave, refused before anything is made: exit 2
            lower = f" (names are lower case: {region.lower()})" if region != region.lower() else ""
            raise UsageError(
                f"unknown EC2 region {region!r}{lower}: use one such as us-east-1, eu-west-1, ap-southeast-2"
            ) from None
        self.region = region
        conn = self._driver.connection
        conn.request_path = self._path  # prefixed to every action, and signed with it
        self._endpoint = self._url or f"https://{conn.host}"

    def _recorded_region(self, host_id: str) -> None:
        """Delete/status go to the region create used (kept in the state folder), whatever is set now."""
        region = ec2_regions.recorded_region(self._state_root, host_id) or self._found_in.get(host_id)
        if region is not None and region != self.region:
            self._use_region(region)

    def _api(self, what: str) -> ContextManager[None]:
        from .ec2_api import fault

        return api_errors(self.name, self._endpoint, what, fault, credentials=f"credentials ({self._source})",
                          sdk="apache-libcloud")

    def ubuntu_image(self) -> str:
        """The newest Canonical Ubuntu 24.04 LTS AMI in the region (names end in a build date)."""
        with self._api("looking up the Ubuntu 24.04 image"):
            images = self._driver.list_images(ex_owner=UBUNTU_OWNER, ex_filters={"name": PROVIDER.image})
        images = [i for i in images if i.name and i.extra.get("state", "available") == "available"]
        if not images:
            raise ProvisionError(
                f"ec2: no Ubuntu 24.04 LTS image (owner {UBUNTU_OWNER}, name {PROVIDER.image}) in region {self.region}"
            )
        return max(images, key=lambda i: i.name).id

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.base import NodeImage, NodeSize

        if plan.region and plan.region != self.region:
            self._use_region(plan.region)
        d = self._driver
        made: list[tuple[str, str]] = []
        image_id = self.ubuntu_image()
        keypair = self._keypair(plan, made)
        group_name = firewall_name(plan.name, PROVIDER.firewall_name_max)
        try:
            group_id = self._security_group(plan, group_name, made)
            tags = {TAG: "true", "inlets-name": plan.name, "inlets-mode": plan.spec.mode, "inlets-sg": group_id}
            if keypair and ("keypair", keypair) in made:
                tags["inlets-keypair"] = keypair
            if plan.expires_at is not None:
                tags["inlets-expires"] = str(int(plan.expires_at.timestamp()))
            size = NodeSize(plan.size or PROVIDER.size, plan.size or PROVIDER.size, 0, 0, 0, 0, d)
            ec2_regions.record_region(plan.state_dir, self.region, None)
            image = NodeImage(image_id, image_id, d)
            with self._api(f"creating instance {plan.name!r}"):
                node = d.create_node(  # the group by name: it lives in the default VPC
                    plan.name, size, image, ex_userdata=plan.user_data, ex_security_groups=[group_name],
                    ex_keyname=keypair, ex_metadata=tags, ex_terminate_on_shutdown=plan.expires_at is not None,
                )
        except BaseException:
            try:
                self._cleanup(made)
            except ProvisionError:
                pass  # the first error is the one to show
            raise
        ec2_regions.record_region(plan.state_dir, self.region, node.id)
        return Host(id=node.id, name=plan.name, provider=self.name, status="pending", mode=plan.spec.mode)

    def _keypair(self, plan: Plan, made: list[tuple[str, str]]) -> str | None:
        """--ssh-key: a public key file is imported as ``inlets-NAME``; anything else names a key pair."""
        if not plan.ssh_key:
            return None
        path = Path(plan.ssh_key).expanduser()
        if path.is_file():
            try:
                material = path.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ProvisionError(f"cannot read --ssh-key {path}: {getattr(exc, 'strerror', None) or exc}") from None
            if not material.startswith(("ssh-", "ecdsa-")):
                raise ProvisionError(f"--ssh-key {path} is not an OpenSSH public key (give the .pub file)")
            name = f"inlets-{plan.name}"
            with self._api(f"importing key pair {name!r}"):
                self._driver.import_key_pair_from_string(name, material)
            made.append(("keypair", name))
            return name
        with self._api("listing key pairs"):
            names = {pair.name for pair in self._driver.list_key_pairs()}
        if plan.ssh_key not in names:
            raise ProvisionError(
                f"ec2: no key pair named {plan.ssh_key!r} in {self.region} (give a key pair name or a .pub file)"
            )
        return plan.ssh_key

    def _security_group(self, plan: Plan, name: str, made: list[tuple[str, str]]) -> str:
        try:
            with self._api(f"creating security group {name!r}"):
                group = self._driver.ex_create_security_group(name, f"inlets exit server {plan.name} ({plan.spec.mode})")
        except ProvisionError as exc:
            if "InvalidGroup.Duplicate" not in str(exc):
                raise
            raise ProvisionError(  # left by a create cut short, or whose clean-up failed: it refused every create
                f"ec2: a security group {name!r} already exists in {self.region}: if an earlier create of "
                f"{plan.name!r} left it, `inletsctl delete {plan.name} --provider ec2 --region {self.region}` deletes it; "
                "otherwise delete "
                "it in AWS, or choose another name") from None
        with self._api(f"creating security group {name!r}"):
            group_id = group["group_id"]
            made.append(("group", group_id))
            # tagged too: a group left behind (an instance its --ttl terminated) is still findable
            tags = {"ResourceId.1": group_id, "Tag.1.Key": TAG, "Tag.1.Value": "true", "Tag.2.Key": "inlets-name",
                    "Tag.2.Value": plan.name}  # (libcloud's ex_create_tags numbers resources from 0)
            self._driver.connection.request(self._driver.path, params={"Action": "CreateTags", **tags})
            for port in inbound_ports(plan.spec):  # IPv4: default VPCs have no IPv6
                self._driver.ex_authorize_security_group_ingress(group_id, port, port, cidr_ips=[ANY_IPV4], protocol="tcp")
        return group_id

    def delete_leftovers(self, name: str) -> list[str]:
        """The security group create made for ``name``, whose instance is gone or was never made (a create cut short,
        or whose clean-up failed): named inlets-NAME and tagged with the name, so that a group of the user's is
        never taken for it; one an instance still uses stays."""
        wanted = firewall_name(name, PROVIDER.firewall_name_max)
        with self._api(f"reading security group {wanted}"):
            groups = self._driver.ex_get_security_groups(
                filters={"group-name": wanted, "tag:inlets-name": name, f"tag:{TAG}": "true"})
        removed = []
        for group in groups:
            try:
                self._cleanup([("group", group.id)], deadline=time.monotonic())  # no wait: in use is not left over
            except ProvisionError as exc:
                if "DependencyViolation" in str(exc):
                    continue
                raise
            removed.append(f"security group {wanted}")
        return removed

    def _cleanup(self, made: list[tuple[str, str]], deadline: float | None = None) -> None:
        """Delete what create made; a group stays in use for a while after its instance ends."""
        from libcloud.compute.base import KeyPair

        deadline = deadline or time.monotonic() + 60.0
        for kind, ident in reversed(made):
            while True:
                try:
                    with self._api(f"deleting {kind} {ident}"):
                        if kind == "group":
                            self._driver.ex_delete_security_group_by_id(ident)
                        else:
                            self._driver.delete_key_pair(KeyPair(ident, None, None, self._driver))
                    break
                except NotFound:
                    break
                except ProvisionError as exc:
                    if "DependencyViolation" not in str(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(2.0)

    def _node(self, host_id: str, ended: bool = False) -> Node:
        """The instance; ``ended``: also one terminated (EC2 lists it, tags and all, for about an hour)."""
        if not host_id.startswith("i-"):
            raise NotFound(f"ec2: no instance with id {host_id!r} (ids look like i-0123456789abcdef0)")
        with self._api(f"reading instance {host_id}"):
            nodes = self._driver.list_nodes(ex_node_ids=[host_id])
        if not nodes or (not ended and nodes[0].extra.get("status") in GONE_STATES):
            raise NotFound(f"ec2: no instance {host_id} in {self.region}")
        return nodes[0]

    def status(self, host_id: str) -> Host:
        self._recorded_region(host_id)
        return self._host(self._node(host_id))

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Terminate, wait until terminated, then remove the security group and key pair create made."""
        self._recorded_region(host_id)
        node = self._node(host_id, ended=True)
        tags = node.extra.get("tags") or {}
        made = [("keypair", tags["inlets-keypair"])] if tags.get("inlets-keypair") else []
        made += [("group", tags["inlets-sg"])] if tags.get("inlets-sg") else []
        deadline = time.monotonic() + timeout
        if node.extra.get("status") in GONE_STATES:
            # Ended already (its --ttl, or a delete elsewhere): what it was made with would stay behind, and the
            # name's key pair and group would refuse the next create of that name.
            self._cleanup(list(reversed(made)), deadline)
            raise NotFound(f"ec2: no instance {host_id} in {self.region}")
        with self._api(f"terminating instance {host_id}"):
            self._driver.destroy_node(node)
        from ..wait import wait_until_gone

        wait_until_gone(self, host_id, timeout)
        self._cleanup(list(reversed(made)), deadline)

    def list(self) -> list[Host]:
        """The current region's, and those of every region local state names: an instance made with --region
        us-east-1 while $AWS_REGION said eu-west-1 was listed "absent", though status found it running."""
        home, hosts = self.region, []
        try:
            for region in self._list_regions():
                if region != self.region:
                    try:
                        self._use_region(region)
                    except UsageError:
                        continue  # no region has that name: a record edited by hand
                with self._api("listing instances"):
                    nodes = self._driver.list_nodes(ex_filters={"tag-key": TAG})
                hosts += [self._host(n) for n in nodes if n.extra.get("status") not in GONE_STATES]
        finally:
            if self.region != home:
                self._use_region(home)
        self._found_in |= {host.id: host.extra["region"] for host in hosts}  # delete --id then goes there
        return hosts

    def _list_regions(self) -> list[str]:
        """The current region, then those ec2.json records under the state root, at most LIST_REGIONS in all."""
        regions = [self.region]
        regions += [region for region in ec2_regions.recorded_regions(self._state_root) if region not in regions]
        return regions[:LIST_REGIONS]

    def _host(self, node: Node) -> Host:
        from libcloud.compute.types import NodeState

        tags: dict[str, str] = node.extra.get("tags") or {}
        ip = (node.public_ips or [None])[0]
        raw = str(node.extra.get("status") or node.state)
        if node.state == NodeState.RUNNING and ip:
            status = ACTIVE
        elif raw in ("stopping", "stopped"):
            status = FAILED
        else:
            status = raw
        expires = parse_expiry_tag([f"inlets-expires:{tags['inlets-expires']}"]) if tags.get("inlets-expires") else None
        return Host(
            id=node.id, name=tags.get("inlets-name") or tags.get("Name") or node.name, provider=self.name,
            status=status, ip=ip, mode=tags.get("inlets-mode"), created_at=_iso(node.extra.get("launch_time")),
            expires_at=expires, detail=f"instance state {raw!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"region": self.region, "security_group": tags.get("inlets-sg", "")},
        )


def _iso(value: object) -> str | None:
    if not value:
        return None
    text = str(value)
    return text[:19] + "Z" if len(text) >= 19 and text[10] == "T" else text


def build(creds: Credentials, state_root: Path) -> EC2Provider:
    aws = aws_credentials(creds.token_file, creds.token, creds.secret_file, creds.secret)
    return EC2Provider(aws, creds.region, creds.api_url, state_root, creds.api_timeout)
