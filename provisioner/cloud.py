"""What the cloud provider modules share: endpoint override, one-line API errors, tags.

Each libcloud driver raises its own exception types (some lose the HTTP status);
``strict_responses`` gives a driver's connection a response class that keeps the
driver's body parsing but raises ``ApiError`` with the status and the API's own
message, so every provider maps errors the same way.
"""

from __future__ import annotations

import datetime
import json
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import requests
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError, ProviderError

from runtime.core.ports import url_port

from .errors import NotFound, ProvisionError
from .providers.base import TAG, Plan, expiry_tag


class ApiError(BaseHTTPError):
    """An HTTP error answer from a cloud API: status code and the API's message."""


def api_message(body: Any) -> str:
    """The first human message in a JSON error body (every cloud nests it differently)."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return str(body if isinstance(body, str) else body.decode(errors="replace")).strip()[:300]
    if isinstance(body, dict):
        for key in ("message", "reason", "error_message", "error", "errors", "detail"):
            if key in body and body[key]:
                found = api_message(body[key])
                field = body.get("field")
                return f"{field}: {found}" if isinstance(field, str) and found else found
        for value in body.values():
            found = api_message(value) if isinstance(value, (dict, list)) else ""
            if found:
                return found
        return ""
    if isinstance(body, list):
        return "; ".join(filter(None, (api_message(item) for item in body[:3])))
    return str(body)


def strict_responses(connection: Any) -> None:
    """Make ``connection`` raise ApiError(status, message) on every non-2xx answer."""
    base = connection.responseCls

    def parse_error(self: Any) -> Any:
        raise ApiError(code=int(self.status), message=api_message(self.body) or f"HTTP {self.status}", headers=self.headers)

    def success(self: Any) -> bool:
        return 200 <= int(self.status) < 300

    connection.responseCls = type(f"Strict{base.__name__}", (base,), {"parse_error": parse_error, "success": success})


@dataclass(frozen=True)
class Endpoint:
    secure: bool
    host: str
    port: int
    path: str = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}{self.path}"


def parse_api_url(provider: str, api_url: str, env: str) -> Endpoint:
    """``http(s)://HOST[:PORT][/PATH]`` or a one-line error naming the option and variable."""
    parsed = urllib.parse.urlsplit(api_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ProvisionError(f"invalid {provider} API URL {api_url!r} (--api-url or ${env}): use http(s)://HOST[:PORT]")
    secure = parsed.scheme == "https"
    try:
        port = url_port(parsed, 443 if secure else 80)
    except ValueError as exc:
        raise ProvisionError(f"invalid {provider} API URL {api_url!r} (--api-url or ${env}): {exc}") from None
    return Endpoint(secure, parsed.hostname, port, parsed.path.rstrip("/"))


def point(connection: Any, endpoint: Endpoint | None, timeout: float = 30.0) -> Endpoint:
    """Send a libcloud connection's requests to ``endpoint`` (or keep its default)."""
    connection.timeout = timeout
    if endpoint is not None:
        connection.host, connection.port, connection.secure = endpoint.host, endpoint.port, endpoint.secure
        connection.connect()  # drivers connect to their default host in the constructor
    return Endpoint(bool(connection.secure), connection.host, int(connection.port))


@contextmanager
def api_errors(provider: str, endpoint: Endpoint, what: str) -> Iterator[None]:
    """Turn driver, SDK and transport exceptions into one-line ProvisionErrors."""
    try:
        yield
    except ProvisionError:
        raise
    except InvalidCredsError as exc:
        raise ProvisionError(f"{provider}: credentials rejected while {what}: {api_message(exc.value)}") from None
    except BaseHTTPError as exc:
        if exc.code == 404:
            raise NotFound(f"{provider}: not found while {what}") from None
        if exc.code in (401, 403):
            raise ProvisionError(f"{provider}: credentials rejected ({exc.code}) while {what}: {exc.message}") from None
        raise ProvisionError(f"{provider}: {what} failed ({exc.code}): {exc.message}") from None
    except ProviderError as exc:  # drivers that keep their own error types (GCE)
        message = api_message(exc.value) if isinstance(exc.value, (dict, list)) else " ".join(str(exc.value).split())[:300]
        if exc.http_code == 404:
            raise NotFound(f"{provider}: not found while {what}") from None
        if exc.http_code in (401, 403):
            raise ProvisionError(f"{provider}: credentials rejected ({exc.http_code}) while {what}: {message}") from None
        raise ProvisionError(f"{provider}: {what} failed ({exc.http_code}): {message}") from None
    except requests.exceptions.RequestException as exc:
        raise ProvisionError(
            f"{provider}: cannot reach the API at {endpoint.url} while {what} ({exc.__class__.__name__})"
        ) from None
    except (LibcloudError, ValueError, KeyError, TypeError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise ProvisionError(f"{provider}: unexpected answer while {what}: {text}") from None


def tag_list(plan: Plan) -> list[str]:
    """Tags for clouds with free-form string tags: ``inlets``, ``inlets-mode:tcp``, expiry."""
    tags = [TAG, f"inlets-mode:{plan.spec.mode}"]
    if plan.expires_at is not None:
        tags.append(expiry_tag(plan.expires_at))
    return tags


def label_map(plan: Plan) -> dict[str, str]:
    """Labels for clouds with key=value labels (lowercase keys, no colons)."""
    labels = {TAG: "true", "inlets-mode": plan.spec.mode}
    if plan.expires_at is not None:
        labels["inlets-expires"] = str(int(plan.expires_at.timestamp()))
    return labels


def labels_expiry(labels: dict[str, str]) -> str | None:
    value = labels.get("inlets-expires", "")
    if not value.isdigit():
        return None
    when = datetime.datetime.fromtimestamp(int(value), datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def mode_from_tags(tags: list[str]) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith("inlets-mode:")), None)
