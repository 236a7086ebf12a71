"""Hetzner Cloud servers through the official ``hcloud`` SDK (libcloud has no Hetzner driver).

Each server gets a Cloud Firewall of its own with exactly the tunnel's ports, deleted
after the server. The endpoint can be pointed elsewhere with ``--api-url`` or
$HCLOUD_ENDPOINT (the variable the hcloud CLI reads).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ContextManager, Mapping

from ..errors import NotFound, ProvisionError
from ..firewall import ANY_IPV4, ANY_IPV6, firewall_name, inbound_rules, made_for
from .api_errors import (
    ANSWER, AUTH, NOT_FOUND, QUOTA, RATE_LIMIT, REFUSED, Fault, api_errors, by_status, not_json, one_line,
    refuse_redirect, retry_after,
)
from .api_url import parse_api_url
from .base import ACTIVE, GONE_TIMEOUT, TAG, Credentials, Host, Plan, ProviderInfo, label_map, labels_expiry

PROVIDER = ProviderInfo(
    token_noun="token",
    name="hetzner", title="Hetzner Cloud", user_data_limit=32 * 1024,  # the API's documented limit for user_data
    credentials="$HCLOUD_TOKEN", token_env=("HCLOUD_TOKEN", "INLETS_ACCESS_TOKEN"), api_url_env=("HCLOUD_ENDPOINT",),
    region="nbg1", size="cx22", image="ubuntu-24.04", ssh_key="name of an SSH key in the project",
    firewall_note="Cloud Firewall opening only the tunnel's ports",
    firewall_name_max=128,  # the API: "Name of the Firewall. Limited to a maximum of 128 characters"
)
DEFAULT_API_URL = "https://api.hetzner.cloud/v1"


class HetznerProvider:
    name = PROVIDER.name
    user_data_limit = PROVIDER.user_data_limit
    poll_interval = 3.0
    keeps_server_key = False
    firewall_note = PROVIDER.firewall_note

    def __init__(self, token: str, api_url: str | None = None, timeout: float = 30.0,
                 *, credentials: str = PROVIDER.token_noun) -> None:
        self.credentials = credentials  # the words for a 401: the noun and where it came from (build)
        from hcloud import Client

        self._url = (api_url or DEFAULT_API_URL).rstrip("/")
        parse_api_url(PROVIDER.name, self._url, PROVIDER.api_url_env[0], "http(s)://HOST[:PORT]/v1")  # before the SDK
        self._client = Client(token=token, api_endpoint=self._url, application_name="inletsctl", timeout=timeout,
                              poll_interval=1.0, poll_max_retries=60)
        # the SDK sends a request again up to 5 times after a timeout (a POST too: a firewall or server made twice)
        # and after a 429/502/504, backing off up to 60 s: one call took minutes, not --timeout's "30 s at most".
        # inletsctl's waits ask again themselves, and a failed create is looked for by name; the SDK has no option
        base = getattr(self._client, "_client", None)
        session = getattr(base, "_session", None)
        if not hasattr(base, "_retry_max_retries") or not isinstance(getattr(session, "hooks", None), dict):
            # before 2.6 (the client split from its ClientBase) neither was there: the redirect refusal was skipped
            # without a word, and the token went along to wherever an answer redirected. Refused instead
            from importlib import metadata

            found = metadata.version("hcloud")
            raise ProvisionError(f"hetzner: the installed hcloud {found} is not a version inletsctl works with (its "
                                 "requests cannot be checked for redirects); install one that is: "
                                 "pip install 'hcloud>=2.6'")
        base._retry_max_retries = 0
        # the SDK's APIException keeps no headers: a 429's Retry-After is read off the answer as it comes
        self._wait: float | None = None
        session.hooks["response"] += [refuse_redirect, self._remember_wait]

    def _remember_wait(self, response: Any, *args: Any, **kwargs: Any) -> None:
        status = response.status_code
        self._wait = retry_after(response.headers, reset=refill_wait) if status == 429 else (
            retry_after(response.headers) if status >= 500 else None)

    def _fault(self, exc: BaseException) -> Fault | None:
        fault = hcloud_fault(exc)
        if fault is not None and fault.kind in (RATE_LIMIT, REFUSED) and fault.retry_after is None and self._wait:
            return replace(fault, retry_after=self._wait)
        return fault

    def _api(self, what: str) -> ContextManager[None]:
        return api_errors(self.name, self._url, what, self._fault, credentials=self.credentials, sdk="hcloud")

    def create(self, plan: Plan) -> Host:
        from hcloud.firewalls import FirewallRule
        from hcloud.images import Image
        from hcloud.locations import Location
        from hcloud.server_types import ServerType
        from hcloud.ssh_keys import SSHKey

        labels = label_map(plan)
        rules = [
            FirewallRule(direction="in", protocol=r.protocol, port=str(r.port), source_ips=[ANY_IPV4, ANY_IPV6],
                         description=f"inlets {r.purpose}")
            for r in inbound_rules(plan.spec)
        ]
        name = firewall_name(plan.name, PROVIDER.firewall_name_max)
        with self._api(f"creating firewall for {plan.name!r}"):
            firewall = self._client.firewalls.create(name=name, rules=rules, labels={TAG: "true"}).firewall
        try:
            with self._api(f"creating server {plan.name!r}"):
                created = self._client.servers.create(
                    plan.name,
                    server_type=ServerType(name=plan.size or PROVIDER.size),
                    image=Image(name=PROVIDER.image),
                    location=Location(name=plan.region or PROVIDER.region),
                    ssh_keys=[SSHKey(name=plan.ssh_key)] if plan.ssh_key else None,
                    user_data=plan.user_data,
                    labels=labels,
                    firewalls=[firewall],
                )
        except BaseException:
            try:
                self._delete_firewall(firewall.id)
            except ProvisionError:  # the first error is the one to show; a server made all the same holds it anyway
                pass
            raise
        return Host(id=str(created.server.id), name=plan.name, provider=self.name, status="initializing", mode=plan.spec.mode)

    def status(self, host_id: str) -> Host:
        if not host_id.isdigit():
            raise NotFound(f"hetzner: no server with id {host_id!r} (ids are numbers)")
        with self._api(f"reading server {host_id}"):
            return self._host(self._client.servers.get_by_id(int(host_id)))

    def delete(self, host_id: str, timeout: float = GONE_TIMEOUT) -> None:
        """Delete the server, wait until it is gone, then delete the firewall made for it."""
        if not host_id.isdigit():
            raise NotFound(f"hetzner: no server with id {host_id!r} (ids are numbers)")
        with self._api(f"reading server {host_id}"):
            server = self._client.servers.get_by_id(int(host_id))
            firewall_ids = [f.firewall.id for f in (server.public_net.firewalls or [])] if server.public_net else []
        with self._api(f"deleting server {host_id}"):
            self._client.servers.delete(server)
        from ..wait import wait_until_gone

        wait_until_gone(self, host_id, timeout)
        for firewall_id in firewall_ids:
            with self._api(f"reading firewall {firewall_id}"):
                name = self._client.firewalls.get_by_id(firewall_id).name or ""
            if made_for(name, str(server.name or ""), PROVIDER.firewall_name_max):
                self._delete_firewall(firewall_id)

    def delete_leftovers(self, name: str) -> list[str]:
        """The firewall ``create`` made for the server ``name``, already gone: named inlets-NAME, labelled inlets, and
        applied to nothing, so that a firewall of the user's (shared, or merely named alike) is never taken for it."""
        wanted = firewall_name(name, PROVIDER.firewall_name_max)
        with self._api(f"reading firewall {wanted}"):
            found = self._client.firewalls.get_all(name=wanted)
        removed = []
        for firewall in found:
            ours = made_for(firewall.name, name, PROVIDER.firewall_name_max) and (firewall.labels or {}).get(TAG) == "true"
            if ours and not firewall.applied_to:
                self._delete_firewall(int(firewall.id))
                removed.append(f"firewall {wanted}")
        return removed

    def _delete_firewall(self, firewall_id: int) -> None:
        from hcloud.firewalls import Firewall

        try:
            with self._api(f"deleting firewall {firewall_id}"):
                self._client.firewalls.delete(Firewall(id=firewall_id))
        except NotFound:
            pass

    def list(self) -> list[Host]:
        with self._api("listing servers"):
            return [self._host(s) for s in self._client.servers.get_all(label_selector=TAG)]

    def _host(self, server: Any) -> Host:
        ipv4 = server.public_net.ipv4 if server.public_net else None
        ip = ipv4.ip if ipv4 is not None else None
        labels = dict(server.labels or {})
        status = str(server.status)
        return Host(
            id=str(server.id), name=str(server.name), provider=self.name, status=ACTIVE if status == "running" else status,
            ip=ip, mode=labels.get("inlets-mode"), expires_at=labels_expiry(labels),
            created_at=server.created.strftime("%Y-%m-%dT%H:%M:%SZ") if server.created else None,
            detail=f"server status {status!r}" + (f", ip {ip}" if ip else ", no public IP yet"),
            extra={"labels": ",".join(f"{k}={v}" for k, v in labels.items())},
        )


def refill_wait(found: Mapping[str, str]) -> float | None:
    """A 429's wait until one request is back, for ``retry_after``'s ``reset`` (Hetzner's 429s have no Retry-After).
    Hetzner's docs: the remaining count "increases gradually" (one a second at the default 3600 an hour) until
    RateLimit-Reset, the Unix time it is full again; so a request is back after (reset - now) / (limit - remaining)."""
    try:
        limit, remaining = int(found["ratelimit-limit"]), int(found.get("ratelimit-remaining") or 0)
        reset = float(found["ratelimit-reset"])
    except (KeyError, ValueError):
        return None
    if limit <= remaining or reset != reset:  # nothing missing, or NaN: no hint
        return None
    return min(max((reset - time.time()) / (limit - remaining), 1.0), 3600.0)


def hcloud_fault(exc: BaseException) -> Fault | None:
    """What the hcloud SDK's APIException means (its code is the API's error code, or an HTTP status)."""
    from hcloud import APIException

    if not isinstance(exc, APIException):
        return None
    content = exc.details.get("content") if isinstance(exc.details, dict) else None
    if isinstance(exc.code, int) and isinstance(content, bytes):  # no JSON error: the SDK gives the HTTP reason
        if isinstance(exc.__cause__, (TypeError, ValueError)):  # a body that is not JSON (a proxy's page): its status
            if 200 <= exc.code < 300:  # says what happened, as a JSON one's does (a gateway's 502 is asked again)
                return Fault(ANSWER, exc.code, not_json(content))
            return by_status(exc.code, not_json(content))
        return by_status(exc.code, one_line(exc.message))
    message = one_line(exc.message)
    if exc.code in ("not_found", 404):
        return Fault(NOT_FOUND, exc.code)
    if exc.code in ("unauthorized", "forbidden", 401, 403):
        return Fault(AUTH, exc.code, message)
    if exc.code in ("rate_limit_exceeded", 429):
        return Fault(RATE_LIMIT, exc.code, message)
    if exc.code == "resource_limit_exceeded":
        return Fault(QUOTA, exc.code, message)
    if exc.code in _TROUBLE:  # the API's own trouble: waits ask again, and the user reads "try again later"
        return Fault(REFUSED, _TROUBLE[exc.code], message)
    return Fault(REFUSED, exc.code, message)


#: Hetzner's error codes for trouble of its own, as the HTTP status they come with (a create's wait gave up on a
#: booting server at the first "unavailable", where every other provider's 5xx is asked again)
_TROUBLE = {"service_error": 500, "server_error": 500, "bad_gateway": 502, "unavailable": 503, "maintenance": 503,
            "timeout": 504}


def build(creds: Credentials, state_root: Path) -> HetznerProvider:
    token, words = PROVIDER.token_from(creds)
    return HetznerProvider(token, PROVIDER.api_url(creds), creds.api_timeout, credentials=words)
