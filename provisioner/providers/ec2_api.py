"""EC2's query API as libcloud speaks it, made to work with AWS and with EC2-compatible APIs
(moto, LocalStack, ...), and its errors told apart by their codes for ``api_errors``."""

from __future__ import annotations

import re
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError
from libcloud.compute.drivers.ec2 import (
    NAMESPACE, VALID_EC2_REGIONS, BaseEC2NodeDriver, EC2Connection, EC2NodeDriver, EC2Response,
)
from libcloud.utils.xml import findall, findtext

from .api_errors import ANSWER, AUTH, NOT_FOUND, QUOTA, RATE_LIMIT, REFUSED, Fault, one_line, retry_after
from .cloud_api import libcloud_words
from .paging import every_page

_CRED_CODES = ("AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "OptInRequired")
_GONE_CODES = ("InvalidInstanceID.NotFound", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound")
_THROTTLE_CODES = ("RequestLimitExceeded", "Throttling")
_XMLNS = re.compile(r'xmlns="http://ec2\.amazonaws\.com/doc/[^"]*"')
#: an AWS region's name (eu-west-1, us-gov-east-1, ap-southeast-7): two letters, words, a number
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")


class _TolerantResponse(EC2Response):
    """EC2-compatible APIs (moto, LocalStack, ...) answer in ``.../doc/2016-11-15`` without
    AWS's trailing slash, or in another API version's namespace; libcloud matches elements by
    the exact namespace and would see nothing, so the namespace is normalised first."""

    def parse_body(self) -> Any:
        if isinstance(self.body, str) and 'xmlns="' + NAMESPACE + '"' not in self.body[:500]:
            self.body = _XMLNS.sub(f'xmlns="{NAMESPACE}"', self.body, count=1)
        return super().parse_body()

    def parse_error(self) -> Any:
        """``Code: message`` found by name (libcloud unpacks exactly two children, without namespace)."""
        try:
            root = ET.XML(self.body.encode() if isinstance(self.body, str) else self.body)
        except ET.ParseError:
            return super().parse_error()
        found: list[tuple[str, str]] = []
        for element in root.iter():
            if _local(element.tag) == "Error":
                fields = {_local(child.tag): child.text or "" for child in element}
                found.append((fields.get("Code", ""), fields.get("Message", "")))
        codes = [f"{code}: {message}" for code, message in found if code]
        if any(code in _CRED_CODES for code, _ in found):
            raise InvalidCredsError(codes[0])
        return "; ".join(codes) or f"HTTP {self.status}"


class _Connection(EC2Connection):
    """RunInstances as a form POST: libcloud sends every call as GET, which puts up to 16 KiB of
    user-data (~30 KB once base64- and URL-encoded) into the URL; AWS takes the same parameters
    in a POST body (signed with SigV4's payload hash), and URLs that long are refused on the way."""

    responseCls = _TolerantResponse

    def request(self, action: str, params: Any = None, data: Any = None, headers: Any = None,
                method: str = "GET", **kwargs: Any) -> Any:
        if method == "GET" and params and params.get("Action") == "RunInstances" and not data:
            body = urllib.parse.urlencode({"Version": self.version, **params})
            headers = {**(headers or {}), "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
            return super().request(action, params={}, data=body, headers=headers, method="POST", **kwargs)
        return super().request(action, params=params, data=data, headers=headers, method=method, **kwargs)


class Driver(EC2NodeDriver):
    """libcloud's EC2 driver over the connection above, in any region AWS names: libcloud's list of regions
    stops at the ones it knew when released (no il-central-1, ca-west-1, mx-central-1, ...), which it refused."""

    connectionCls = _Connection

    def __init__(self, key: str, secret: str | None = None, secure: bool = True, host: str | None = None,
                 port: int | None = None, region: str = "us-east-1", token: str | None = None,
                 signature_version: str | None = None, **kwargs: Any) -> None:
        if region in VALID_EC2_REGIONS or not _REGION.fullmatch(region):  # a name no region has: ValueError
            super().__init__(key, secret, secure, host, port, region, token, signature_version, **kwargs)
            return
        self.region_name, self.token = region, token
        self.api_name, self.country = "ec2_" + region.replace("-", "_"), region
        self.signature_version = signature_version or "4"  # every region opened since 2014 takes only v4
        domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        BaseEC2NodeDriver.__init__(self, key=key, secret=secret, secure=secure, host=host or f"ec2.{region}.{domain}",
                                   port=port, **kwargs)

    def list_nodes(self, ex_node_ids: list[str] | None = None, ex_filters: dict[str, Any] | None = None) -> list[Any]:
        """libcloud's, over every page: it read the first answer alone, and DescribeInstances pages by ``nextToken``
        (moto at 100 reservations, AWS when the answer is large), so list showed 100 of 105 and exit 0."""
        params = {"Action": "DescribeInstances"}
        if ex_node_ids:
            params.update(self._pathlist("InstanceId", ex_node_ids))
        if ex_filters:
            params.update(self._build_filters(ex_filters))

        def page(token: str | None) -> tuple[list[Any], str | None]:
            elem = self.connection.request(self.path, params=params | ({"NextToken": token} if token else {})).object
            nodes = [node for rs in findall(element=elem, xpath="reservationSet/item", namespace=NAMESPACE)
                     for node in self._to_nodes(rs, "instancesSet/item")]
            return nodes, findtext(element=elem, xpath="nextToken", namespace=NAMESPACE) or None

        nodes = every_page("ec2", "listing instances", page)
        addresses = self.ex_describe_addresses(nodes)  # libcloud's: elastic IPs join the public addresses
        for node in nodes:
            node.public_ips.extend(addresses[node.id])
        return nodes


def _local(tag: str) -> str:
    """An element's name without its namespace (AWS sends errors without one, moto with one)."""
    return tag.rpartition("}")[2]


def fault(exc: BaseException) -> Fault | None:
    """EC2 answers errors as ``Code: message``; the code says what happened, whatever the status."""
    if isinstance(exc, InvalidCredsError):
        return Fault(AUTH, message=_line(exc.value))
    if isinstance(exc, BaseHTTPError):
        message = _line(exc.message)
        if message.startswith(_GONE_CODES):
            return Fault(NOT_FOUND, message=message)
        if message.startswith(_THROTTLE_CODES):
            return Fault(RATE_LIMIT, message=message, retry_after=retry_after(exc.headers))
        kind = QUOTA if message.split(":", 1)[0].endswith("LimitExceeded") else REFUSED
        trouble = isinstance(exc.code, int) and exc.code >= 500  # InternalError, Unavailable: shown, and asked again
        return Fault(kind, exc.code if trouble else None, message, retry_after(exc.headers))
    if isinstance(exc, LibcloudError):
        return Fault(ANSWER, message=libcloud_words(exc))
    return None


def _line(text: object) -> str:
    return one_line(text, 400)
