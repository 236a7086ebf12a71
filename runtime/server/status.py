"""``GET /status`` on the control port (``cli/status_view.py`` shows it to a person).

The document says what is connected and how busy it is; it never holds a token,
a key or a client's credentials.
"""

from __future__ import annotations

import datetime
import json
import socket
import time
from typing import Any

from .. import PROTOCOL_VERSION, __version__
from ..core.services import FORWARD_PREFIX, shown_service
from .control import ControlPlane


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def status_document(control: ControlPlane, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    now = time.time()
    clients = []
    for session, info in list(control.clients.items()):
        clients.append(
            {
                "id": info.client_id,
                "remote": info.remote,
                "connected_since": _iso(info.connected_at),
                "services": [shown_service(service) for service in info.services],
                # what it reaches on the server's side (its --local targets): the operator's to know
                "forwards": [target.removeprefix(FORWARD_PREFIX) for target in info.forwards],
                "open_streams": session.open_streams,
                "bytes_in": session.bytes_in,
                "bytes_out": session.bytes_out,
            }
        )
    return {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "mode": control.mode,
        "started": _iso(control.started_at),
        "uptime_seconds": round(now - control.started_at, 1),
        "hostname": socket.gethostname(),
        **(extra or {}),
        "clients": clients,
    }


def status_route(control: ControlPlane):
    def route(headers: object = None) -> tuple[int, str, bytes]:
        body = json.dumps(status_document(control), indent=2).encode() + b"\n"
        return 200, "application/json", body

    return route
