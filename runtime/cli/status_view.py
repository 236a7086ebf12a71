"""How ``inlets status`` shows a server's status document to a person: a table, and which servers
each client holds. The CLI's own (the server only serves the JSON: ``server/status.py``)."""

from __future__ import annotations

from typing import Any

from ..core.services import shown_service


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


def _text(value: object) -> str:
    """A value as one cell of the terminal: control characters (a newline, an ANSI escape) as Python writes them
    in a string, ``\\n`` and ``\\x1b``. Printed raw, a newline in a client id began a row of its own
    that the columns did not count, and an escape sequence could clear or recolour the operator's screen."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def render_table(doc: dict[str, Any]) -> str:
    """The status as a person reads it: one header line, one row per client."""
    lines = [
        _text(f"inlets {doc.get('mode', '?')} server {doc.get('version', '?')} on {doc.get('hostname', '?')}, "
              f"up {_duration(float(doc.get('uptime_seconds', 0)))} (since {doc.get('started', '?')})"),
    ]
    clients = doc.get("clients", [])
    if not clients:
        lines.append("no clients connected")
        return "\n".join(lines)
    # bytes over the client's connection, each way: "IN" read as the data plane's direction="in" (from the public
    # side), which is this table's "TO CLIENT" for a remote forward
    rows = [("CLIENT", "REMOTE", "CONNECTED SINCE", "SERVICES", "STREAMS", "FROM CLIENT", "TO CLIENT")]
    for client in clients:
        rows.append(
            (
                _text(client.get("id", "")),
                _text(client.get("remote", "")),
                _text(client.get("connected_since", "")),
                _text(",".join([*map(shown_service, client.get("services", [])),  # an older server sent http:::1
                                *(f"forward:{target}" for target in client.get("forwards", []))]) or "-"),
                str(client.get("open_streams", 0)),
                _size(int(client.get("bytes_in", 0))),
                _size(int(client.get("bytes_out", 0))),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def render_holdings(documents: dict[str, dict[str, Any]], servers: list[str] | None = None) -> str:
    """Which of these servers each client holds (by its client id): a client serving through a
    balancer should hold every one, else the balancer sends some users where it is not. ``servers``:
    every server asked, those that did not answer (no document) included, so they count as not held."""
    if servers is not None:
        documents = {server: documents.get(server, {}) for server in servers}
    held: dict[str, list[str]] = {}
    for server, doc in documents.items():
        for client in doc.get("clients", []):
            servers = held.setdefault(_text(client.get("id", "?")), [])
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
