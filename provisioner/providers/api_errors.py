"""One mapping from a failed cloud call to the one-line error a user reads.

Every SDK and driver raises its own exception types. A provider supplies only a small
classifier that says what one of them means (a ``Fault``: credentials rejected, not
found, over quota, rate limited, or refused for another reason); ``api_errors`` turns
the fault into the project's wording, so ``hetzner: token rejected (401) while ...``
and ``vultr: credentials rejected while ...`` read alike and say what to do next.
Transport failures and answers that cannot be parsed are classified here, once.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import socket
import ssl
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Callable, Iterator, Mapping

from inlets_py.runtime.core import retry_after as retry_after_header

from ..errors import NotFound, ProvisionError, Transient

AUTH = "auth"  # the credentials were refused
NOT_FOUND = "not found"  # raised as errors.NotFound: callers treat it as "gone"
QUOTA = "quota"  # an account limit (servers, vCPUs, IPs) was reached
RATE_LIMIT = "rate limit"  # too many requests: try again later
NETWORK = "network"  # the API did not answer
REQUEST = "request"  # the request could not be sent as it is
ANSWER = "answer"  # the API answered something we cannot read
REFUSED = "refused"  # any other error the API answered with
SDK = "sdk"  # the installed SDK lacks what our code calls: another version than inletsctl was written for
REDIRECT = "redirect"  # the API answered with a redirect, which inletsctl does not follow

#: how Python words a call that does not fit the callee's signature (a renamed or removed argument)
_SIGNATURE = re.compile(r"unexpected keyword argument|missing \d+ required|positional arguments? but \d+|takes no arguments")
#: words clouds use for an account limit (DigitalOcean, Hetzner, Scaleway, AWS, Azure, GCE, Linode)
_QUOTA_WORDS = re.compile(r"quota|limit ?exceeded|exceeds? .{0,40}limit|limit (?:has been |was )?reached|"
                          r"reached (?:your|the|its) .{0,40}limit", re.I)  # DigitalOcean: "You have reached your droplet limit"
#: ... and for too many requests (GCE answers those with 403, AWS with 503)
_RATE_WORDS = re.compile(r"rate ?limit|throttl|too many requests|slow ?down", re.I)


@dataclass(frozen=True)
class Fault:
    """What a failed call means, in terms every provider shares."""

    kind: str
    status: int | str | None = None  # HTTP status or the SDK's code, shown in brackets
    message: str = ""  # the API's own words, one line
    retry_after: float | None = None  # seconds the API asked us to wait before asking again, when it said
    maybe_done: bool = False  # NETWORK: the request went out, then no answer came (it may be carried out all the same)


def retry_after(headers: Mapping[str, str] | None,
                reset: Callable[[Mapping[str, str]], float | None] | None = None) -> float | None:
    """The wait an answer's ``Retry-After`` asks for (RFC 9110 10.2.3: seconds or an HTTP-date), if it has one. With
    ``reset`` (a 429's), where Retry-After asks no wait, the one ``reset`` reads off the rate-limit headers (their
    names lower-cased) instead: a ``Retry-After: 0`` (or a date past) beside them says nothing they do not."""
    found = {k.lower(): v for k, v in (headers or {}).items()}
    wait = retry_after_header.parse(found.get("retry-after"), datetime.datetime.now(datetime.timezone.utc))
    if wait or reset is None:
        return wait
    later = reset(found)
    return wait if later is None else later


def ratelimit_reset(found: Mapping[str, str]) -> float | None:
    """The wait until ``RateLimit-Reset`` (DigitalOcean's: a Unix time; the IETF draft's: seconds), for
    ``retry_after``'s ``reset``; None without a usable one."""
    try:
        value = float(found.get("ratelimit-reset") or "")
    except ValueError:
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    wait = max(value - time.time(), 1.0) if value > 1e9 else value  # a past reset: the next second
    return min(wait, 3600.0)  # a reset far off (a clock or a header gone wrong) said "wait 3391265 minutes"


Classifier = Callable[[BaseException], "Fault | None"]


class Redirected(Exception):
    """An API's redirect, refused where the SDK would follow it (``refuse_redirect``): a 307 or 308 sends the request
    again, body and all (a create's user-data: the tunnel token and the server's key), to wherever it names."""

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        super().__init__(f"redirect ({status})")
        self.code, self.headers = status, headers


def refuse_redirect(response: object, *args: object, **kwargs: object) -> None:
    """A ``requests`` response hook: raise Redirected for a redirect instead of following it."""
    if getattr(response, "is_redirect", False):
        raise Redirected(int(response.status_code), dict(response.headers))  # type: ignore[attr-defined]


def redirect_fault(exc: BaseException) -> Fault | None:
    """A redirect answer, whichever SDK got it (Redirected, or a libcloud error with a 3xx status)."""
    code, headers = getattr(exc, "code", None), getattr(exc, "headers", None) or {}
    if not isinstance(code, int) or not 300 <= code < 400:
        return None
    location = next((v for k, v in headers.items() if k.lower() == "location"), "")
    return Fault(REDIRECT, code, one_line(location, 120))


def unreadable_retry_after(exc: BaseException) -> Fault | None:
    """An error answer whose ``Retry-After`` libcloud cannot read (``soon``: its RateLimitReachedError does
    float() of it): the ValueError it raises while making its exception read as "a value in it is not what the API
    documents", and a 429 ended create. Taken as that status with no usable Retry-After."""
    if not isinstance(exc, (ValueError, OverflowError)):
        return None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        where = (frame.f_globals.get("__name__"), frame.f_code.co_name)
        if where == ("libcloud.common.exceptions", "exception_from_message"):  # the answer's status and headers
            code, headers = frame.f_locals.get("code"), frame.f_locals.get("headers") or {}
            if not isinstance(code, int):
                return None
            usable = {k: v for k, v in headers.items() if str(k).lower() != "retry-after"}
            if code == 429:  # libcloud's message is its own "429 Rate limit exceeded"
                return Fault(RATE_LIMIT, code, "", retry_after(usable, reset=ratelimit_reset))
            return by_status(code, one_line(frame.f_locals.get("message") or ""))
        tb = tb.tb_next
    return None


def one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def by_status(status: int | None, message: str, wait: float | None = None) -> Fault:
    """The usual meaning of an HTTP error status (and of quota wording in its message); ``wait``: its Retry-After."""
    if status == 404:
        return Fault(NOT_FOUND, status)
    if status == 429 or _RATE_WORDS.search(message):
        return Fault(RATE_LIMIT, status, message, wait)
    if status in (401, 403) and not _QUOTA_WORDS.search(message):
        return Fault(AUTH, status, message)
    if _QUOTA_WORDS.search(message):
        return Fault(QUOTA, status, message)
    return Fault(REFUSED, status, message, wait)


def transport_fault(exc: BaseException) -> Fault | None:
    """What no SDK classifies itself: no answer, a request that cannot be sent, an answer that cannot be read.

    ``requests`` is imported here, on the way to an error (the SDK that raised ``exc`` has loaded it already),
    not with this module, which provider modules import beside their declarations."""
    import requests

    if isinstance(exc, (requests.exceptions.InvalidHeader, UnicodeEncodeError)):
        return Fault(REQUEST, message="a header holds characters HTTP cannot carry (a line break, a control "
                                      "character or a letter outside Latin-1)")
    if isinstance(exc, json.JSONDecodeError):  # requests' own is a RequestException too: the API answered
        return Fault(ANSWER, message=not_json(exc.doc))
    if isinstance(exc, requests.exceptions.RequestException):
        return Fault(NETWORK, message=network_words(exc), maybe_done=_sent(exc))
    return answer_fault(exc)


def sdk_fault(exc: BaseException, sdk: str | None = None) -> Fault | None:
    """Our own call that the installed SDK does not have (a renamed method, a removed argument): every such
    AttributeError or TypeError read as 'its JSON is not shaped as the API documents', which sent users to
    --api-url. Only what is raised outside the SDK counts: inside it the same exceptions come from an answer
    of the wrong shape. ``sdk``: the distribution the caller calls (a TypeError does not name it)."""
    if _raised_inside_a_package(exc):
        return None
    if isinstance(exc, AttributeError):
        dist = _distribution(getattr(exc, "obj", None))  # None for a JSON value (None, dict, str, ...) or our own object
        owner = exc.obj if isinstance(exc.obj, (type, ModuleType)) else type(exc.obj)
        why = f"it has no {getattr(owner, '__name__', owner)}.{exc.name}" if exc.name else one_line(exc)
    elif isinstance(exc, TypeError) and sdk and _SIGNATURE.search(str(exc)):
        dist, why = sdk, one_line(exc)  # "InstanceUtilsV1API.create_server() got an unexpected keyword argument 'x'"
    else:
        return None
    if dist is None:
        return None
    from ..wheel import canonical_name, own_requirements  # what pyproject.toml asks of it, as the wheel declares it

    try:
        installed = f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        installed = dist
    wanted = own_requirements().get(canonical_name(dist))
    fix = f"pip install '{wanted}'" if wanted else f"reinstall inletsctl so pip picks a {dist} it works with"
    return Fault(SDK, message=f"the installed {installed} is not a version inletsctl works with ({why}); "
                              f"install one that is: {fix}")


def _distribution(obj: object) -> str | None:
    """The installed distribution that defines ``obj`` (a module, a class, or an instance of one)."""
    name = obj.__name__ if isinstance(obj, ModuleType) else obj.__module__ if isinstance(obj, type) else type(obj).__module__
    top = (name or "").split(".")[0]
    if top in sys.stdlib_module_names or top in ("builtins", __name__.split(".")[0]):
        return None
    from ..wheel import distributions_of  # top-level import name -> distributions, read once

    found = distributions_of().get(top)
    return found[0] if found else None


def _raised_inside_a_package(exc: BaseException) -> bool:
    """Whether the innermost frame outside the standard library that raised ``exc`` is an installed package's."""
    from ..wheel import distributions_of  # read once, and only on an error (not at every start)

    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        top = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if top not in sys.stdlib_module_names:
            return top != __name__.split(".")[0] and top in distributions_of()
    return False


def answer_fault(exc: BaseException) -> Fault | None:
    """An answer parsed into the wrong shape: what is wrong with it, in words (never Python's)."""
    if isinstance(exc, KeyError):
        return Fault(ANSWER, message=f"it has no {exc.args[0]!r} field" if exc.args else "a field is missing")
    if isinstance(exc, json.JSONDecodeError):
        return Fault(ANSWER, message="it is not JSON")
    if isinstance(exc, (TypeError, AttributeError)):
        return Fault(ANSWER, message="its JSON is not shaped as the API documents")
    if isinstance(exc, ValueError):
        return Fault(ANSWER, message="a value in it is not what the API documents")
    return None


def not_json(body: object, form: str = "JSON") -> str:
    """An answer that is not JSON (or the XML an API such as EC2's speaks), with how it begins (an HTML error
    page, a proxy's text)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    return f"it is not {form} (it begins {one_line(text, 60)!r})" if text.strip() else f"it is empty, not {form}"


def _sent(exc: BaseException) -> bool:
    """The request went out before the connection failed (no answer in time, or the connection cut while waiting
    for one), so the API may carry it out all the same; not so when no connection was made."""
    import requests
    from urllib3.exceptions import ProtocolError  # "Connection aborted.", "Connection broken": an answer cut

    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return False
    chain = list(causes(exc))
    if any(isinstance(c, (socket.gaierror, ConnectionRefusedError)) for c in chain):
        return False
    # http.client's RemoteDisconnected (no answer at all) is a ConnectionResetError
    return any(isinstance(c, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ProtocolError))
               for c in chain)


def network_words(exc: BaseException) -> str:
    """What a request that got no answer met: 'connection refused', 'no answer in time', ..."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "timed out connecting"
    if isinstance(exc, requests.exceptions.Timeout):
        return "no answer in time"
    chain = list(causes(exc))
    tls = next((c for c in chain if isinstance(c, ssl.SSLError)), None)
    if isinstance(exc, requests.exceptions.SSLError) or tls is not None:
        why = (getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or "") if tls else ""
        return "the TLS handshake failed" + (f" ({str(why).lower().replace('_', ' ')})" if why else "")
    if any(isinstance(c, socket.gaierror) for c in chain):
        return "the host name does not resolve"
    failed = next((c for c in chain if isinstance(c, OSError) and isinstance(c.errno, int) and c.errno > 0), None)
    if failed is not None:
        return os.strerror(failed.errno).lower()
    return "the connection failed"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (requests wraps urllib3, which wraps the socket's error)."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]


def error_for(provider: str, where: str, what: str, fault: Fault, credentials: str = "credentials") -> ProvisionError:
    """The one-line error for ``fault`` while doing ``what`` against the API at ``where``."""
    code = f" ({fault.status})" if fault.status is not None else ""
    detail = f": {fault.message}" if fault.message else ""
    if fault.kind == NOT_FOUND and what.startswith("listing "):
        # a list is never missing: a 404 names the endpoint wrong, and callers took it for "no such server" (delete
        # removed the state of a create cut short); the cloud's own answer is asked the same way
        return ProvisionError(f"{provider}: the API at {where} answered not found{code} while {what}, which "
                              f"{provider}'s API never does for a list: check that --api-url (or its variable) names "
                              "the API's root")
    if fault.kind == NOT_FOUND and what.startswith("creating "):
        # "not found while creating droplet 'x'" named neither what was missing nor what to check
        return ProvisionError(f"{provider}: the API at {where} answered not found{code} while {what}{detail}: check "
                              "that --api-url (or its variable) names the API's root, and that the --region, --plan "
                              f"and image asked for exist on {provider}")
    if fault.kind == NOT_FOUND:
        return NotFound(f"{provider}: not found while {what}{detail}")
    if fault.kind == AUTH:
        return ProvisionError(f"{provider}: {credentials} rejected{code} while {what}{detail}; check them (revoked, "
                              "expired, or without the permission this needs?), or give others")
    if fault.kind == QUOTA:
        return ProvisionError(f"{provider}: {what} failed{code}, an account limit was reached{detail}; "
                              f"delete servers you no longer need or ask {provider} to raise the limit")
    if fault.kind == RATE_LIMIT:
        return Transient(f"{provider}: the API is limiting requests{code} while {what}{detail}; "
                         f"wait {_wait_words(fault.retry_after, 'a minute')} and try again", retry_after=fault.retry_after)
    if fault.kind == NETWORK and fault.maybe_done:  # it was reached: "cannot reach" sent users to check the address
        return Transient(f"{provider}: the request to the API at {where} while {what} went out, then "
                         f"{fault.message}; check the network (and --api-url if you set it), then try again",
                         maybe_done=True)
    if fault.kind == NETWORK:
        return Transient(f"{provider}: cannot reach the API at {where} while {what}: {fault.message}; check the "
                         "network (and --api-url if you set it), then try again")
    if fault.kind == REQUEST:
        return ProvisionError(f"{provider}: cannot send the request while {what}: {fault.message}; check the "
                              f"{credentials} and --api-url")
    if fault.kind == SDK:
        return ProvisionError(f"{provider}: {what} failed: {fault.message}")
    if fault.kind == REDIRECT:
        to = f" to {fault.message}" if fault.message else ""
        return ProvisionError(f"{provider}: the API at {where} answered with a redirect{code}{to} while {what}; inletsctl "
                              "follows none (it would send the request, secrets and all, elsewhere): check --api-url "
                              "(or its variable), and give the API's own address")
    if fault.kind == ANSWER:
        return ProvisionError(f"{provider}: unexpected answer from {where} while {what}{detail}; try again later, "
                              "or check --api-url if you set it")
    if isinstance(fault.status, int) and fault.status >= 500:  # the cloud's own trouble: a wait asks again
        return Transient(f"{provider}: {what} failed{code}{detail}; the API had trouble of its own: try again "
                         f"{'in ' + _wait_words(fault.retry_after, '') if fault.retry_after else 'later'}",
                         retry_after=fault.retry_after)
    return ProvisionError(f"{provider}: {what} failed{code}{detail}")


def _wait_words(seconds: float | None, otherwise: str) -> str:
    if not seconds:
        return otherwise
    # rounded up: an HTTP-date's wait has a fraction of a second ("0s"), and a shorter wait meets the refusal again
    return f"{math.ceil(seconds)}s" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"


@contextmanager
def api_errors(provider: str, where: str, what: str, classify: Classifier,
               credentials: str = "credentials", sdk: str | None = None) -> Iterator[None]:
    """Turn what ``classify`` (then ``sdk_fault`` and ``transport_fault``) recognises into one-line ProvisionErrors;
    ``sdk``: the distribution the calls inside go to (``hcloud``), named when its signatures do not fit them."""
    try:
        yield
    except ProvisionError:
        raise
    except Exception as exc:
        fault = (redirect_fault(exc) or unreadable_retry_after(exc) or classify(exc) or sdk_fault(exc, sdk)
                 or transport_fault(exc))
        if fault is None:
            raise
        raise error_for(provider, where, what, fault, credentials) from None
