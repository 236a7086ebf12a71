"""``--api-url`` (or a provider's ``$..._API_URL``) read once, the same way for every provider.

Kept apart from cloud_api so the SDK providers (Hetzner, Scaleway) check the URL, and every provider module
reads it, without loading libcloud.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inlets_py.runtime.core.hosts import is_loopback, is_utf8
from inlets_py.runtime.core.ports import url_port

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Credentials, ProviderInfo


@dataclass(frozen=True)
class Endpoint:
    secure: bool
    host: str
    port: int
    path: str = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}{self.path}"


def parse_api_url(provider: str, api_url: str, env: str, hint: str = "http(s)://HOST[:PORT]") -> Endpoint:
    """``http(s)://HOST[:PORT][/PATH]`` or a one-line error naming the option and variable: urlsplit's own
    ValueError ("Invalid IPv6 URL") was a traceback, and a port of 0 or 99999 was blamed on the network later."""
    authority = re.split(r"[/?#]", api_url.partition("//")[2] if "//" in api_url else api_url, maxsplit=1)[0]
    if "@" in authority:  # checked before the URL is echoed in any error: it may hold a password
        raise UsageError(f"invalid {provider} API URL (--api-url or ${env}, not shown): it holds a user name or "
                         f"password (USER:PASSWORD@), which inletsctl never sends: give {hint}")
    where = f"invalid {provider} API URL {api_url!r} (--api-url or ${env})"
    try:
        parsed = urllib.parse.urlsplit(api_url)
        hostname = parsed.hostname
    except ValueError:
        hostname = None
    if hostname is None or parsed.scheme not in ("http", "https"):
        raise UsageError(f"{where}: use {hint}")
    if not is_utf8(api_url):  # it went to the network, to fail there as "cannot reach the API"
        raise UsageError(f"{where}: it holds a byte that is not UTF-8 (Latin-1's, say): type it again as UTF-8")
    secure = parsed.scheme == "https"
    try:
        port = url_port(parsed, 443 if secure else 80)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if not secure and not is_loopback(hostname):
        raise UsageError(f"{where}: plain http:// to a host that is not this machine would send the access token and "
                         "the user-data (the tunnel token, the server's key) in cleartext: use https://, or http:// "
                         "only to a loopback address (a local proxy or test API)")
    return Endpoint(secure, hostname, port, parsed.path.rstrip("/"))


def endpoint_of(provider: ProviderInfo, creds: Credentials) -> Endpoint | None:
    """The endpoint ``--api-url`` or the provider's variable names; None: the cloud's own."""
    url = provider.api_url(creds)
    return parse_api_url(provider.name, url, provider.api_url_env[0]) if url else None
