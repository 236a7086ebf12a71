"""``GET /status`` on the control port, and how ``inlets status`` shows it.

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
                "services": info.services,
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
    def route() -> tuple[int, str, bytes]:
        body = json.dumps(status_document(control), indent=2).encode() + b"\n"
        return 200, "application/json", body

    return route


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def render_table(doc: dict[str, Any]) -> str:
    """The status as a person reads it: one header line, one row per client."""
    lines = [
        f"inlets {doc.get('mode', '?')} server {doc.get('version', '?')} on {doc.get('hostname', '?')}, "
        f"up {_duration(float(doc.get('uptime_seconds', 0)))} (since {doc.get('started', '?')})",
    ]
    clients = doc.get("clients", [])
    if not clients:
        lines.append("no clients connected")
        return "\n".join(lines)
    rows = [("CLIENT", "REMOTE", "CONNECTED SINCE", "SERVICES", "STREAMS", "IN", "OUT")]
    for client in clients:
        rows.append(
            (
                str(client.get("id", "")),
                str(client.get("remote", "")),
                str(client.get("connected_since", "")),
                ",".join(client.get("services", [])) or "-",
                str(client.get("open_streams", 0)),
                _size(int(client.get("bytes_in", 0))),
                _size(int(client.get("bytes_out", 0))),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def render_holdings(documents: dict[str, dict[str, Any]]) -> str:
    """Which of these servers each client holds (by its client id): a client serving through a
    balancer should hold every one, else the balancer sends some users where it is not."""
    held: dict[str, list[str]] = {}
    for server, doc in documents.items():
        for client in doc.get("clients", []):
            servers = held.setdefault(str(client.get("id", "?")), [])
            if server not in servers:
                servers.append(server)
    if not held:
        return f"no client holds any of the {len(documents)} servers"
    lines = []
    for client_id, servers in held.items():
        missing = [s for s in documents if s not in servers]
        lines.append(f"client {client_id} holds {len(servers)}/{len(documents)} servers: {', '.join(servers)}"
                     + (f" (not {', '.join(missing)})" if missing else ""))
    return "\n".join(lines)
