"""Wait, bounded in time, until a new exit server is up: VM active, then /healthz over pinned TLS."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

from runtime.certs import EXIT_SERVER_NAME
from runtime.probe import Answer, Endpoint, ProbeError, Unreachable, get

from .errors import NotFound, ProvisionError
from .providers.base import ACTIVE, FAILED, Host, Provisioner

class Progress(Protocol):
    """Reports a step, or a wait still going with what was seen (see output.Progress)."""

    def __call__(self, step: str, detail: str = "") -> None: ...


class WaitTimeout(ProvisionError):
    """The deadline passed; the message says what was seen last."""


def https_get(
    host: str, port: int, path: str, ca_file: Path, token: str | None = None, timeout: float = 5.0
) -> Answer:
    """GET over TLS verified against ``ca_file`` with the exit-server name (not the IP)."""
    return get(Endpoint(host, port, True, ""), path, ca_file=ca_file, server_name=EXIT_SERVER_NAME, token=token,
               timeout=timeout)


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
    provider: Provisioner, host: Host, ca_file: Path, timeout: float, progress: Progress, interval: float = 2.0
) -> Host:
    """Poll the provider, then /healthz, until both are good or ``timeout`` seconds pass."""
    started = time.monotonic()
    deadline = started + timeout

    def waited() -> str:
        return f"{time.monotonic() - started:.0f}s of {timeout:.0f}s"

    seen = host.detail or f"status {host.status!r}"
    while True:
        try:
            host = _merge(host, provider.status(host.id))
            seen = host.detail or f"status {host.status!r}"
        except NotFound:
            seen = "not visible in the API yet"
        if host.status == FAILED:
            raise ProvisionError(f"exit server {host.name!r} failed: {seen}")
        if host.status == ACTIVE and host.ip:
            break
        progress(f"waiting for {host.provider} to start {host.name!r}", f"{seen}; {waited()}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {host.name!r} to become active; last seen: {seen}")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    port = host.control_port or 8123
    assert host.ip is not None
    while True:
        problem = healthz_problem(host.ip, port, ca_file)
        if problem is None:
            return host
        try:
            current = provider.status(host.id)
            if current.status == FAILED:
                raise ProvisionError(f"exit server {host.name!r} failed: {current.detail}")
        except NotFound:
            raise ProvisionError(f"exit server {host.name!r} disappeared while waiting for its tunnel") from None
        seen = "not listening yet" if isinstance(problem, Unreachable) else str(problem)  # starting, not failing
        progress(f"waiting for the tunnel server at https://{host.ip}:{port}/healthz", f"{seen}; {waited()}")
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout:.0f}s: {host.name!r} is {host.status} at {host.ip} but "
                f"https://{host.ip}:{port}/healthz never answered (last: {problem})"
            )
        time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))


def _merge(old: Host, new: Host) -> Host:
    """Keep what create() knew (local addresses, ports) when status() omits it."""
    for name in ("name", "data_addr", "control_port", "mode"):
        if not getattr(new, name):
            setattr(new, name, getattr(old, name))
    return new


def wait_until_gone(provider: Provisioner, host_id: str, timeout: float, progress: Progress, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            host = provider.status(host_id)
        except NotFound:
            return
        if host.status == FAILED:
            return
        progress(f"waiting for {host.name or host_id} to be deleted", f"{host.detail or host.status}; "
                 f"{time.monotonic() - deadline + timeout:.0f}s of {timeout:.0f}s")
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {host_id} to be deleted (last: {host.detail})")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


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
