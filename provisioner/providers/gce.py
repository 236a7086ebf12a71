"""Google Compute Engine instances through apache-libcloud's GCE driver (``user-data`` metadata).

Credentials: a service-account JSON key (``--access-token-file`` or
$GOOGLE_APPLICATION_CREDENTIALS); the project is the key's ``project_id`` unless
$GOOGLE_CLOUD_PROJECT says otherwise. Each instance carries a network tag that one
firewall rule of its own opens exactly the tunnel's ports to; the rule is deleted
with the instance. ``--api-url`` or $GCE_API_URL points both the OAuth2 token
endpoint and the Compute API elsewhere. Host ids are ``ZONE/NAME``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, ContextManager, Iterator

from inlets_py.runtime.core.auth import MAX_SECRET_FILE, SecretFileTooLarge, read_secret_file
from inlets_py.runtime.core.files import temporary_beside, write_new

from ..errors import NotFound, ProvisionError, os_words
from ..firewall import ANY_IPV4, firewall_name, inbound_ports
from ..names import NameRule
from ..state_root import prepare_root, read_own
from .base import ACTIVE, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, label_map, labels_expiry
from .api_url import Endpoint, endpoint_of
from .paging import every_page

if TYPE_CHECKING:  # libcloud is imported where it is used: inletsctl --help reads only PROVIDER
    from libcloud.compute.drivers.gce import GCENodeDriver

    from .api_errors import Fault

KEY_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
PROVIDER = ProviderInfo(
    name="gce", title="GCE", user_data_limit=256 * 1024,  # one metadata value
    token_noun="service-account key",
    credentials=f"a service-account key file (${KEY_ENV})", api_url_env=("GCE_API_URL",),
    region="europe-west2-a", region_note="a zone", size="e2-small",  # zone: London
    ssh_key="USER:PUBLIC-KEY line for the ssh-keys metadata",
    image="projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64",
    firewall_note="VPC firewall rule opening only the tunnel's ports to this instance's network tag",
    names=NameRule("a GCE instance name", letter_first=True),  # [a-z]([-a-z0-9]*[a-z0-9])?, as its tag and rule
)
COMPUTE = "https://www.googleapis.com/compute/v1"


def service_account(key_file: Path | None, key_json: str | None) -> dict[str, str]:
    """The service-account key: --access-token-file, --access-token (the JSON itself), then $GOOGLE_APPLICATION_CREDENTIALS;
    ``source`` says which (with the file's path), for the words of a 401."""
    where = source = "--access-token"
    text = key_json
    if key_file is not None or (not text and os.environ.get(KEY_ENV)):
        path = key_file or Path(os.environ[KEY_ENV])
        where = str(path)
        source = f"--access-token-file {path}" if key_file is not None else f"${KEY_ENV}={path}"
        try:
            text = read_secret_file(path.expanduser()).decode()
        except SecretFileTooLarge:
            raise ProvisionError(f"the GCE service-account key {path} is larger than {MAX_SECRET_FILE // 1024} KiB: "
                                 "give the JSON key file Google made for the service account") from None
        except OSError as exc:
            raise ProvisionError(f"cannot read the GCE service-account key {path}: {os_words(exc)}") from None
        except UnicodeDecodeError:  # its str() is Python's codec message
            raise ProvisionError(f"the GCE service-account key {path} is not text (UTF-8): give the JSON key file "
                                 "Google made for the service account") from None
    if not text:
        raise ProvisionError(
            f"no GCE service-account key: give --access-token-file KEY.json, --access-token JSON, or set ${KEY_ENV}"
        )
    try:
        key = json.loads(text)
        account = {"client_email": str(key["client_email"]), "private_key": str(key["private_key"]),
                   "project_id": os.environ.get(PROJECT_ENV) or str(key.get("project_id") or ""), "source": source}
    except (ValueError, KeyError, TypeError):
        raise ProvisionError(f"{where} is not a service-account JSON key (needs client_email and private_key)") from None
    if not _pem_private_key(account["private_key"]):  # else libcloud fails signing in, as if Google had
        raise ProvisionError(f"the private_key in {where} is not a PEM private key (-----BEGIN PRIVATE KEY-----): "
                             "download the service account's JSON key again")
    if not account["project_id"]:
        raise ProvisionError(f"the GCE key has no project_id: set ${PROJECT_ENV}")
    return account


def _pem_private_key(text: str) -> bool:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(text.encode(), None)
    except (ValueError, TypeError, UnicodeEncodeError):  # not PEM, not a key, encrypted
        return False
    return True


def _driver_class(endpoint: Endpoint | None) -> type[GCENodeDriver]:
    from libcloud.compute.drivers.gce import GCEConnection, GCENodeDriver

    if endpoint is None:
        return GCENodeDriver

    class Connection(GCEConnection):  # the token request and the API both go to ``endpoint``
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["url"] = endpoint.url
            super().__init__(*args, **kwargs)

    return type("EndpointGCENodeDriver", (GCENodeDriver,), {"connectionCls": Connection})


class GCEProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 3.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, account: dict[str, str], state_root: Path, endpoint: Endpoint | None = None, timeout: float = 30.0,
                 *, credentials: str = PROVIDER.token_noun) -> None:
        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        self.project = account["project_id"]
        self._endpoint = endpoint or Endpoint(True, "www.googleapis.com", 443)
        prepare_root(state_root)  # the token is kept there: a folder of this user's that no one else may write
        _private_token_cache()
        with self._signing_in():
            self._driver = _driver_class(endpoint)(
                account["client_email"], account["private_key"], project=self.project, auth_type="SA",
                credential_file=str(state_root / token_cache_name(account)), timeout=timeout,
            )
        self._base = f"{COMPUTE}/projects/{self.project}"

    def _signing_in(self) -> ContextManager[None]:
        from .api_errors import api_errors

        return api_errors(self.name, self._endpoint.url, "signing in with the service account", _sign_in_fault,
                          credentials=self.credentials, sdk="apache-libcloud")

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        """Errors of the calls inside as one line; first a new token if the one held (or cached by an earlier run)
        has expired, which libcloud would fetch inside the call, its refusal then read as the call's."""
        from .cloud_api import libcloud_errors

        with self._signing_in():
            self._driver.connection.oauth2_credential.access_token  # a property: signs in again once expired
        with libcloud_errors(self.name, self._endpoint, what, self.credentials):
            yield

    def _request(self, path: str, method: str = "GET", body: Any = None, params: Any = None, wait: bool = False) -> Any:
        conn = self._driver.connection
        data = json.dumps(body) if body is not None else None
        call = conn.async_request if wait else conn.request
        answer = call(path, method=method, data=data, params=params)
        if not 200 <= int(answer.status) < 300:  # libcloud reads an error with an empty body as the object ''
            from .cloud_api import ApiError

            raise ApiError(code=int(answer.status), message="", headers=answer.headers)
        return answer.object

    def create(self, plan: Plan) -> Host:
        from libcloud.compute.drivers.gce import GCEDiskType, GCENetwork, GCENodeImage, GCENodeSize, GCEZone

        d, zone = self._driver, plan.region or PROVIDER.region
        tag = firewall_name(plan.name, PROVIDER.firewall_name_max)
        network = GCENetwork("default", "default", None, d, extra={"selfLink": f"{self._base}/global/networks/default"})
        with self._api(f"creating firewall rule {tag!r}"):
            d.ex_create_firewall(
                tag, [{"IPProtocol": "tcp", "ports": [str(p) for p in inbound_ports(plan.spec)]}],
                network=network, source_ranges=[ANY_IPV4], target_tags=[tag],
                description=f"inlets exit server {plan.name}",
            )
        try:
            location = GCEZone(zone, zone, "UP", None, None, d, extra={"selfLink": f"{self._base}/zones/{zone}"})
            size = plan.size or PROVIDER.size
            machine = GCENodeSize(size, size, 0, 0, 0, 0, d, extra={"selfLink": f"{self._base}/zones/{zone}/machineTypes/{size}"})
            image = GCENodeImage(PROVIDER.image, PROVIDER.image, d, extra={"selfLink": f"{COMPUTE}/{PROVIDER.image}"})
            disk = GCEDiskType("pd-balanced", "pd-balanced", location, d,
                               extra={"selfLink": f"{self._base}/zones/{zone}/diskTypes/pd-balanced"})
            metadata = {"items": [{"key": "user-data", "value": plan.user_data}]}
            if plan.ssh_key:
                metadata["items"].append({"key": "ssh-keys", "value": plan.ssh_key})
            with self._api(f"creating instance {plan.name!r}"):
                node = d.create_node(plan.name, machine, image, location, ex_network=network, ex_tags=[tag],
                                     ex_metadata=metadata, ex_labels=label_map(plan), ex_disk_type=disk)
        except BaseException:
            self._delete_firewall(tag)
            raise
        return Host(id=f"{zone}/{plan.name}", name=node.name, provider=self.name, status="PROVISIONING", mode=plan.spec.mode)

    def _split(self, host_id: str) -> tuple[str, str]:
        zone, _, name = host_id.partition("/")
        if not zone or not name:
            raise NotFound(f"gce: no instance {host_id!r} (ids are ZONE/NAME)")
        return zone, name

    def status(self, host_id: str) -> Host:
        zone, name = self._split(host_id)
        with self._api(f"reading instance {host_id}"):
            return self._host(self._request(f"/zones/{zone}/instances/{name}"))

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Delete the instance (waiting on the operation), then the firewall rule made for it."""
        zone, name = self._split(host_id)
        try:
            with self._api(f"reading instance {host_id}"):
                data = self._request(f"/zones/{zone}/instances/{name}")
        except NotFound:
            self._delete_orphan_firewall(name)
            raise
        with self._api(f"deleting instance {host_id}"):
            self._request(f"/zones/{zone}/instances/{name}", "DELETE", wait=True)
        for tag in (data.get("tags") or {}).get("items", []):
            if tag == firewall_name(name, PROVIDER.firewall_name_max):
                self._delete_firewall(tag)

    def delete_leftovers(self, name: str) -> list[str]:
        """The rule of an instance create never recorded (cut short before or while the instance was made): the
        rule stayed, and the next create of the name failed on it (409, already exists)."""
        return [f"firewall rule {firewall_name(name, PROVIDER.firewall_name_max)}"] if self._delete_orphan_firewall(name) else []

    def _delete_orphan_firewall(self, instance: str) -> bool:
        """The rule create made for an instance already gone (deleted in the console, or a delete cut short):
        named after it and targeting only its tag, so a rule of the user's is never taken for it. True: deleted."""
        tag = firewall_name(instance, PROVIDER.firewall_name_max)
        try:
            with self._api(f"reading firewall rule {tag}"):
                rule = self._request(f"/global/firewalls/{tag}")
        except NotFound:
            return False
        if rule.get("targetTags") != [tag]:
            return False
        self._delete_firewall(tag)
        return True

    def _delete_firewall(self, name: str) -> None:
        try:
            with self._api(f"deleting firewall rule {name}"):
                self._request(f"/global/firewalls/{name}", "DELETE", wait=True)
        except NotFound:
            pass

    def list(self) -> list[Host]:
        def page(token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            params = {"filter": f"labels.{TAG}=true", "maxResults": 500} | ({"pageToken": token} if token else {})
            body = self._request("/aggregated/instances", params=params)
            found = [i for scope in (body.get("items") or {}).values() for i in scope.get("instances", [])]
            return found, body.get("nextPageToken")

        with self._api("listing instances"):
            return [self._host(i) for i in every_page(self.name, "listing instances", page)]

    def _host(self, data: dict[str, Any]) -> Host:
        zone = str(data.get("zone", "")).rsplit("/", 1)[-1]
        ip = None
        for nic in data.get("networkInterfaces") or []:
            for access in nic.get("accessConfigs") or []:
                ip = ip or access.get("natIP")
        status = str(data.get("status", "unknown"))
        labels = dict(data.get("labels") or {})
        return Host(
            id=f"{zone}/{data['name']}", name=str(data["name"]), provider=self.name,
            status=ACTIVE if status == "RUNNING" else status, ip=ip, mode=labels.get("inlets-mode"),
            created_at=data.get("creationTimestamp"), expires_at=labels_expiry(labels),
            detail=f"instance status {status!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"zone": zone},
        )


def token_cache_name(account: dict[str, str]) -> str:
    """Where libcloud keeps the token between runs: one file per key, not per project. Per project, a user who gave
    another key (another account, or one with the permission the first lacked) went on using the first key's token
    for up to an hour, and its 403s with it."""
    key = hashlib.sha256(f"{account['client_email']}\n{account['private_key']}".encode()).hexdigest()[:16]
    return f".gce-token-{account['project_id']}-{key}"


def _private_token_cache() -> None:
    """libcloud's token cache (``token_cache_name``) read and written as inletsctl's own secret files: libcloud
    rewrote the file in place, keeping a mode others could read and following a link put at its name, and read a
    token whoever had written it. Its two methods are the ones libcloud's tests replace; only this provider uses
    them."""
    from libcloud.common.google import GoogleOAuth2Credential

    GoogleOAuth2Credential._get_token_from_file = _read_token  # type: ignore[method-assign]
    GoogleOAuth2Credential._write_token_to_file = _write_token  # type: ignore[method-assign]


def _read_token(credential: Any) -> dict[str, Any] | None:
    """The cached token; None (sign in again) when there is none, or it is not this user's file alone to write."""
    try:
        token = json.loads(read_own(Path(credential.credential_file)))
    except (OSError, ValueError):
        return None
    return token if isinstance(token, dict) else None


def _write_token(credential: Any) -> None:
    """A new 0600 file renamed over the old one; a failure only costs a sign-in on the next run, as in libcloud."""
    path = Path(credential.credential_file)
    partial = temporary_beside(path)
    try:
        write_new(partial, json.dumps(credential.token).encode())
        os.replace(partial, path)
    except (OSError, TypeError, ValueError):
        with suppress(OSError):
            partial.unlink(missing_ok=True)


def _sign_in_fault(exc: BaseException) -> Fault | None:
    """Google's sign-in refuses a key (deleted, its account removed, this machine's clock far off) with OAuth2's
    400 invalid_grant (RFC 6749 section 5.2), which libcloud raises as any bad request, its error word dropped: it
    read "signing in ... failed (400)", not that the key was refused. libcloud makes that request from the key
    alone, so a 400 there is the key's."""
    from libcloud.common.google import GoogleBaseError

    from .api_errors import AUTH, Fault, one_line
    from .cloud_api import libcloud_fault

    if isinstance(exc, GoogleBaseError) and exc.http_code == 400:
        return Fault(AUTH, 400, one_line(exc.value))
    return libcloud_fault(exc)


def build(creds: Credentials, state_root: Path) -> GCEProvider:
    account = service_account(creds.token_file, creds.token)
    return GCEProvider(account, state_root, endpoint_of(PROVIDER, creds), creds.api_timeout,
                       credentials=f"{PROVIDER.token_noun} ({account['source']})")
