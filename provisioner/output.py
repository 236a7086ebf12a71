"""How inletsctl talks to people: progress on stderr, summaries and tables on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


class Progress:
    """One line per new message on stderr (a spinner on a terminal); repeats are not reprinted."""

    def __init__(self, quiet: bool = False) -> None:
        self._console = Console(stderr=True, highlight=False)
        self._quiet = quiet
        self._last = ""
        self._status = None
        if self._console.is_terminal and not quiet:
            self._status = self._console.status("starting")
            self._status.start()

    def __call__(self, message: str) -> None:
        if self._quiet or message == self._last:
            return
        self._last = message
        if self._status is not None:
            self._status.update(message)
        else:
            print(f"inletsctl: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def print_summary(summary: dict[str, Any], token: str | None) -> None:
    rows = [
        ("name", summary["name"]),
        ("provider", summary["provider"]),
        ("id", summary["id"]),
        ("ip", summary["ip"]),
        ("mode", summary["mode"]),
        ("ports" if summary["mode"] == "tcp" else "domains",
         ",".join(map(str, summary["ports"])) if summary["mode"] == "tcp" else ",".join(summary["domains"]) or "(any host)"),
        ("public", " ".join(summary["endpoints"])),
        ("expires", summary["expires_at"] or "never (no --ttl)"),
        ("token", f"kept in {summary['token_file']} (--show-token prints it)" if token is None else token),
        ("CA", summary["ca_file"]),
    ]
    print(f"Exit server {summary['name']} is ready.\n")
    for key, value in rows:
        print(f"  {key:<9} {value}")
    print("\nConnect a client (copy and paste):\n")
    print(f"  {summary['client_command']}\n")
    print("Delete it when done:\n")
    print(f"  {summary['delete_command']}")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
