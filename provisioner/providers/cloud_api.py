"""What the libcloud provider modules share: endpoint override, strict answers, their error classifier.

Each libcloud driver raises its own exception types (some lose the HTTP status);
``strict_responses`` gives a driver's connection a response class that keeps the
driver's body parsing but raises ``ApiError`` with the status and the API's own
message, so every provider maps errors the same way.
"""

from __future__ import annotations

import json
from typing import Any, ContextManager

import libcloud.http
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError, ProviderError

from .api_errors import ANSWER, AUTH, Fault, api_errors, by_status, not_json, one_line, refuse_redirect, retry_after
from .api_url import Endpoint


def _refuse_redirects() -> None:
    """Every libcloud connection's session raises Redirected at a redirect (``api_errors`` says it in one line):
    libcloud followed them (requests' default), and a 307 or 308 to another host got the request again, a create's
    user-data with the tunnel token and the server's key in it. On the class: libcloud makes a connection's session
    anew when it reconnects."""
    connection = libcloud.http.LibcloudBaseConnection
    made = connection.__init__
    if getattr(made, "refuses_redirects", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        self.session.hooks["response"].append(refuse_redirect)

    __init__.refuses_redirects = True  # type: ignore[attr-defined]
    connection.__init__ = __init__  # type: ignore[method-assign]


_refuse_redirects()


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


def error_words(body: Any) -> str:
    """An error answer's words: the API's message from JSON, else what the page is (a gateway's HTML)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        json.loads(text)
    except ValueError:
        return not_json(text) if text.strip() else ""
    return api_message(text)


def keep_status(connection: Any) -> None:
    """For a driver that keeps its own error types (DigitalOcean's): an error answer it cannot parse (a gateway's
    HTML page, JSON without a 'message') raises ApiError with its status, where the driver's MalformedResponseError
    or KeyError lost it: a proxy's 502 while create waited ended create, not asked again, and a 401 page was
    "not JSON: check --api-url"."""
    base = connection.responseCls

    def parse_error(self: Any) -> Any:
        try:
            return base.parse_error(self)
        except (MalformedResponseError, KeyError, TypeError):
            raise ApiError(code=int(self.status), message=error_words(self.body) or f"HTTP {self.status}",
                           headers=self.headers) from None

    connection.responseCls = type(f"StatusKept{base.__name__}", (base,), {"parse_error": parse_error})


def strict_responses(connection: Any) -> None:
    """Make ``connection`` raise ApiError(status, message) on every non-2xx answer."""
    base = connection.responseCls

    def parse_error(self: Any) -> Any:
        raise ApiError(code=int(self.status), message=error_words(self.body) or f"HTTP {self.status}", headers=self.headers)

    def success(self: Any) -> bool:
        return 200 <= int(self.status) < 300

    connection.responseCls = type(f"Strict{base.__name__}", (base,), {"parse_error": parse_error, "success": success})


def point(connection: Any, endpoint: Endpoint | None, timeout: float = 30.0) -> Endpoint:
    """Send a libcloud connection's requests to ``endpoint`` (or keep its default), under its path if it has one
    (a gateway's /prefix: it was dropped, and the requests went to the gateway's root)."""
    connection.timeout = timeout
    if endpoint is not None:
        connection.host, connection.port, connection.secure = endpoint.host, endpoint.port, endpoint.secure
        connection.request_path = endpoint.path  # prefixed to every action (libcloud's morph_action_hook)
        connection.connect()  # drivers connect to their default host in the constructor
    return Endpoint(bool(connection.secure), connection.host, int(connection.port), connection.request_path or "")


def libcloud_fault(exc: BaseException) -> Fault | None:
    """What a libcloud driver's exception means (``strict_responses`` keeps the status and message)."""
    if isinstance(exc, InvalidCredsError):
        return Fault(AUTH, message=api_message(exc.value))
    if isinstance(exc, BaseHTTPError):
        return by_status(exc.code, exc.message, retry_after(exc.headers))
    if isinstance(exc, ProviderError):  # drivers that keep their own error types (GCE)
        if isinstance(exc.http_code, int) and 200 <= exc.http_code < 300:  # a 200 that is not JSON: a proxy's page
            return Fault(ANSWER, message=not_json(exc.value))
        message = api_message(exc.value) if isinstance(exc.value, (dict, list)) else one_line(exc.value)
        return by_status(exc.http_code, message)
    if isinstance(exc, LibcloudError):
        return Fault(ANSWER, message=libcloud_words(exc))
    return None


def libcloud_words(exc: LibcloudError) -> str:
    """A libcloud error's own words: its str() is a repr naming the driver object."""
    if isinstance(exc, MalformedResponseError):  # libcloud's words: "Failed to parse JSON" or "... XML"
        return not_json(exc.body, "XML" if "XML" in str(exc.value) else "JSON")
    return one_line(exc.value)


def libcloud_errors(provider: str, endpoint: Endpoint, what: str, credentials: str = "credentials") -> ContextManager[None]:
    """Driver and transport exceptions of a libcloud provider as one-line ProvisionErrors."""
    return api_errors(provider, endpoint.url, what, libcloud_fault, credentials=credentials, sdk="apache-libcloud")
