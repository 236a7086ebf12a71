"""Wait, bounded in time, until a new exit server is up: VM active, then /healthz over pinned TLS.

Where the cloud's user-data could not hold the runtime wheel, the wait also delivers it
(provisioner/wheel_receiver.py takes it on the VM) once the VM answers on the control port.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

from inlets_py.runtime.core.hosts import authority
from inlets_py.runtime.core.probe import Answer, CertificateRefused, Dial, Endpoint, ProbeError, Unreachable, get
from inlets_py.runtime.core.tls import EXIT_SERVER_NAME, X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID

from .errors import NotFound, ProvisionError, Transient
from .providers.base import ACTIVE, FAILED, GONE_TIMEOUT, Balancer, Balancing, Host, Provisioner
from .wheel import ServerWheel
from .wheel_receiver import PATH as RECEIVER_PATH


class Progress(Protocol):
    """Reports a step, or a wait still going with what was seen (see output.Progress)."""

    def __call__(self, step: str, detail: str = "") -> None: ...


class Watched(Protocol):
    """What can be waited on until it is gone: a provider's hosts (or its balancers, seen as hosts)."""

    name: str
    poll_interval: float

    def status(self, host_id: str) -> Host: ...


class WaitTimeout(ProvisionError):
    """The deadline passed; the message says what was seen last."""


@dataclass(frozen=True)
class Delivery:
    """The wheel ``create`` sends to the VM's receiver, and the token that authorises it."""

    wheel: ServerWheel
    token: str


def https_get(
    host: str, port: int, path: str, ca_file: Path, token: str | None = None, timeout: float = 5.0,
    method: str = "GET", body: bytes = b"",
) -> Answer:
    """GET over TLS verified against ``ca_file`` with the exit-server name (not the IP), through the proxy the
    environment names for it (as libcloud's API calls and the printed client command go)."""
    try:
        return get(Endpoint(host, port, True, ""), path, ca_file=ca_file, server_name=EXIT_SERVER_NAME, token=token,
                   timeout=timeout, method=method, body=body, dial=_proxy_dial(host, port))
    except CertificateRefused as exc:  # the probe's words name the client's --tls-ca, which inletsctl has not
        if exc.verify_code in (X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID):
            raise  # a certificate ended, or a clock wrong: said in words that fit inletsctl too
        raise ProbeError(f"the server at {authority(host, port)} is not the exit server inletsctl made: its "
                         "certificate is not signed by the CA made for it (another machine on that address?)") from None


def _proxy_dial(host: str, port: int) -> Dial | None:
    """The environment's proxy for the exit server, as its client will take it. A setting that can never work is
    this create's error at once, not a reason to poll until the timeout (it was, 600 s by default). The client's
    dialer is imported here: it brings websockets, which every other command of inletsctl does without."""
    from inlets_py.runtime.client.proxy_dial import dialer_for

    try:
        return dialer_for(f"wss://{authority(host, port)}")
    except ProbeError as exc:
        raise ProvisionError(f"{exc}: the client command would fail the same way; fix or unset it") from None


def healthz_problem(host: str, port: int, ca_file: Path) -> ProbeError | None:
    """None when /healthz answers 200; otherwise what went wrong (``Unreachable``: nothing listens yet)."""
    try:
        answer = https_get(host, port, "/healthz", ca_file, timeout=3.0)
    except ProbeError as exc:
        return exc
    return None if answer.status == 200 else ProbeError(f"/healthz answered {answer.status}")


def healthz_error(host: str, port: int, ca_file: Path) -> str | None:
    """None when /healthz answers 200; otherwise what went wrong, in a few words."""
    problem = healthz_problem(host, port, ca_file)
    return None if problem is None else str(problem)


def wait_until_ready(
    provider: Provisioner, host: Host, ca_file: Path, timeout: float, progress: Progress, interval: float = 2.0,
    *, delivery: Delivery | None = None, why: Callable[[Host], str] | None = None,
    deleted: Callable[[], bool] | None = None,
) -> Host:
    """Poll the provider, then /healthz, until both are good or ``timeout`` seconds pass.

    ``why(host)`` is appended to a timeout once the VM is up: how to read the cause on it. ``deleted()`` says
    whether the host was deleted meanwhile (its local state gone): a host the API does not show is then gone,
    not late.
    """
    started = time.monotonic()
    deadline = started + timeout
    seen = host.detail or f"status {host.status!r}"
    while True:
        pause = interval
        try:
            host = _merge(host, provider.status(host.id))
            seen = host.detail or f"status {host.status!r}"
        except NotFound:
            if deleted is not None and deleted():
                raise ProvisionError(f"exit server {host.name!r} disappeared while waiting for it to start") from None
            seen = "not visible in the API yet"
        except Transient as exc:  # a 429, a 5xx or a network blip is no reason to give up on (or delete) a booting VM
            seen, pause = f"the API failed ({exc})", _pause(interval, exc)
        if host.status == FAILED:
            raise ProvisionError(f"exit server {host.name!r} failed: {seen}")
        if host.status == ACTIVE and host.ip:
            break
        progress(f"waiting for {host.provider} to start {host.name!r}", f"{seen}; {_waited(started, timeout)}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {seconds(timeout)}s waiting for {host.name!r} to become active; last seen: {seen}")
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
    port = host.control_port or 8123
    ip = host.ip
    assert ip is not None
    hint = f"; {why(host)}" if why else ""
    if delivery is not None:
        target = f"https://{authority(ip, port)}{RECEIVER_PATH}"
        _poll(lambda: deliver_error(ip, port, ca_file, delivery), provider, host, target, "never took the runtime wheel",
              started, timeout, progress, hint)
        progress(f"delivered the runtime wheel to {host.name!r}")
    _poll(lambda: healthz_problem(ip, port, ca_file), provider, host, f"https://{authority(ip, port)}/healthz", "never answered",
          started, timeout, progress, hint)
    return host


def seconds(value: float) -> str:
    """A --timeout as the user gave it: ``0.05``, ``600``, ``1000000`` (``:g`` wrote 1e+06, ``:.0f`` wrote 0 for 0.05)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _waited(started: float, timeout: float) -> str:
    return f"{time.monotonic() - started:.0f}s of {seconds(timeout)}s"


def _pause(interval: float, exc: Transient) -> float:
    """The time to the next ask after ``exc``: the poll interval, or longer if the API said when (Retry-After).
    Asking sooner only meets the same refusal, and may count against the limit again."""
    return max(interval, exc.retry_after or 0.0)


def _poll(
    check: Callable[[], ProbeError | str | None], provider: Provisioner, host: Host, target: str, never: str,
    started: float, timeout: float, progress: Progress, hint: str,
) -> None:
    """Call ``check`` until it returns None (done), the VM is gone or failed, or the deadline passes.

    The tunnel is asked every half second, the cloud's API only every poll interval (or after its Retry-After)."""
    deadline = started + timeout
    ask_api = time.monotonic()
    while True:
        error = check()
        if error is None:
            return
        if time.monotonic() >= ask_api:
            ask_api = time.monotonic() + provider.poll_interval
            try:
                current = provider.status(host.id)
                if current.status == FAILED:
                    raise ProvisionError(f"exit server {host.name!r} failed: {current.detail}")
            except NotFound:
                raise ProvisionError(f"exit server {host.name!r} disappeared while waiting for its tunnel") from None
            except Transient as exc:  # the tunnel's own answer is what is waited for
                ask_api = time.monotonic() + _pause(provider.poll_interval, exc)
        seen = "not listening yet" if isinstance(error, Unreachable) else str(error)  # starting, not failing
        progress(f"waiting for the tunnel server at {target}", f"{seen}; {_waited(started, timeout)}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {seconds(timeout)}s: {host.name!r} is {host.status} at {host.ip} but {target} {never} "
                f"(last: {error}){hint}"
            )
        time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))


def deliver_error(host: str, port: int, ca_file: Path, delivery: Delivery) -> ProbeError | str | None:
    """None once the VM's receiver took the wheel; otherwise what went wrong.

    A refusal (wrong token, another digest) is final: the receiver will never take it."""
    try:
        answer = https_get(host, port, RECEIVER_PATH, ca_file, token=delivery.token, timeout=30.0, method="PUT",
                           body=delivery.wheel.data)
    except ProbeError as exc:
        return exc
    if answer.status in (401, 422):
        raise ProvisionError(f"the exit server at {host} refused the runtime wheel: {answer.status} {answer.body.strip()}")
    return None if answer.status == 200 else f"{RECEIVER_PATH} answered {answer.status}"


def _merge(old: Host, new: Host) -> Host:
    """Keep what create() knew (local addresses, ports) when status() omits it."""
    for name in ("name", "data_addr", "control_port", "mode"):
        if not getattr(new, name):
            setattr(new, name, getattr(old, name))
    return new


def wait_until_gone(
    provider: Watched, host_id: str, timeout: float = GONE_TIMEOUT, progress: Progress | None = None,
    interval: float | None = None, *, started: float | None = None, label: str = "",
) -> None:
    """Poll until ``host_id`` is gone (NotFound; FAILED where the provider says that means gone: a local process that
    exited) or raise WaitTimeout. A cloud VM in a failed state still exists until its delete ends. ``label``: what
    the progress lines and the error call it (the exit server's name) until the API answers with its own name: an
    API that never answered left only the bare id ("waiting for 300244000 to be deleted").

    The one wait of every ``delete``: providers that remove more once the host is gone (a
    firewall) call it before that, and ``inletsctl delete`` after, with the same --timeout
    counted from ``started``. ``interval`` defaults to the provider's poll interval."""
    started = time.monotonic() if started is None else started
    deadline = started + timeout
    interval = provider.poll_interval if interval is None else interval
    there = False  # the last answer showed it: only then is it known to be "still there"
    while True:
        pause = interval
        try:
            host = provider.status(host_id)
        except NotFound:
            return
        except Transient as exc:  # asked again, as while creating
            seen, pause, there = f"the API failed ({exc})", _pause(interval, exc), False
        else:
            if host.status == FAILED and getattr(provider, "failed_is_gone", False):
                return
            label, seen, there = host.name or label, host.detail or f"status {host.status!r}", True
        if progress is not None:
            progress(f"waiting for {label or host_id} to be deleted", f"{seen}; {_waited(started, timeout)}")
        if time.monotonic() >= deadline:
            who = f"{label} ({host_id})" if label and label != host_id else host_id
            if there:
                what = f"is still there {timeout:.0f}s after it was deleted (last seen: {seen})"
            else:  # a 503 the whole time says nothing of the VM: it may well be gone
                what = f"was deleted, but whether it is gone is not known {timeout:.0f}s later: {seen}"
            raise WaitTimeout(f"{provider.name}: {who} {what}; run the delete again later, and look at it in "
                              f"{provider.name} if it stays")
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))


def wait_until_balanced(
    provider: Balancing, balancer: Balancer, timeout: float, progress: Progress, *, started: float | None = None
) -> Balancer:
    """Poll until the balancer is active with an address (``create --replicas``), or raise."""
    started = time.monotonic() if started is None else started
    deadline = started + timeout
    while True:
        pause = provider.poll_interval
        try:
            balancer = provider.balancer_status(balancer.id)
        except NotFound:
            raise ProvisionError(f"load balancer {balancer.name!r} ({balancer.id}) disappeared while starting") from None
        except Transient as exc:  # a 429 or a blip: asked again, as the VMs' waits do (it failed create, left all)
            balancer, pause = replace(balancer, detail=f"the API failed ({exc})"), _pause(pause, exc)
        if balancer.status == FAILED:
            raise ProvisionError(f"load balancer {balancer.name!r} failed: {balancer.detail}")
        if balancer.status == ACTIVE and balancer.ip:
            return balancer
        progress(f"waiting for {provider.name} to start load balancer {balancer.name!r}",
                 f"{balancer.detail}; {_waited(started, timeout)}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {seconds(timeout)}s waiting for load balancer {balancer.name!r} to become "
                              f"active; last seen: {balancer.detail}")
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))


def status_json(host: str, port: int, ca_file: Path, token: str) -> dict[str, object]:
    """The server's authenticated /status, falling back to /healthz where /status is missing."""
    answer = https_get(host, port, "/status", ca_file, token=token)
    if answer.status == 200:
        try:
            return {"endpoint": "/status", "status": json.loads(answer.body)}
        except ValueError:
            return {"endpoint": "/status", "status": answer.body.strip()}
    health = https_get(host, port, "/healthz", ca_file)
    return {"endpoint": "/healthz", "http_status": health.status, "body": health.body.strip()[:500]}
