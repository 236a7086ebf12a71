"""How inletsctl talks to people: progress on stderr, summaries and tables on stdout."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable


def command_word(program: str) -> str:
    """How printed commands name this installation's ``inlets`` or ``inletsctl``: the bare word when the shell's PATH
    finds that very program, else its full path. Printed bare, they failed as printed when inletsctl was run by its
    path (a venv not activated: "inletsctl: command not found"), or ran another program of that name."""
    mine = Path(sys.executable).with_name(program)
    found = shutil.which(program)
    try:
        if not mine.exists() or (found is not None and os.path.samefile(found, mine)):
            return program
    except OSError:
        pass
    return str(mine)


class Progress:
    """Progress on stderr: a spinner on a terminal; elsewhere (logs, CI, a pipe, a dumb terminal) few plain lines.

    ``progress(step)`` prints the step once. ``progress(step, detail)`` is a wait that is
    still going (detail: what was seen, the elapsed time and the timeout): on a terminal
    the spinner shows every update; elsewhere the step is printed only once it has lasted
    ``grace`` seconds, then again every ``every`` seconds, so a wait of a second prints
    nothing and a wait of minutes prints a line now and then. ``rich`` is imported here, by the
    commands that show progress, not by ``inletsctl --help``.
    """

    def __init__(self, quiet: bool = False, grace: float = 2.0, every: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console

        self._console = Console(stderr=True, highlight=False)
        self._quiet = quiet
        self._grace, self._every, self._clock = grace, every, clock
        self._step = ""
        self._since = 0.0  # when the current step began
        self._printed: float | None = None  # when it was last printed
        self._status = None
        # rich draws nothing on a dumb terminal (TERM=dumb: Emacs' shell, some CI consoles): create showed no progress
        if self._console.is_terminal and not self._console.is_dumb_terminal and not quiet:
            self._status = self._console.status("starting")
            self._status.start()

    def __call__(self, step: str, detail: str = "") -> None:
        if self._quiet:
            return
        text = f"{step} ({detail})" if detail else step
        if self._status is not None:
            self._status.update(text)
            return
        now = self._clock()
        if step != self._step:
            self._step, self._since, self._printed = step, now, None
        if self._printed is None:
            due = not detail or now - self._since >= self._grace
        else:
            due = bool(detail) and now - self._printed >= self._every
        if due:
            self._printed = now
            print(f"inletsctl: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the spinner. A terminal that closed (EIO) is no error of create's: raised here, it took the place of
        what create was saying (the server it left, the command that deletes it) and the exit status with it."""
        status, self._status = self._status, None
        if status is not None:
            try:
                status.stop()
            except OSError:
                pass


def print_summary(summary: dict[str, Any], token: str | None) -> None:
    rows = [
        ("name", summary["name"]),
        ("provider", summary["provider"]),
        ("id", summary["id"]),
        ("ip", summary["ip"]),
        ("mode", summary["mode"]),
        ("ports" if summary["mode"] == "tcp" else "domains",
         ",".join(map(str, summary["ports"])) if summary["mode"] == "tcp" else ",".join(summary["domains"]) or "(any host)"),
        ("public", " ".join(summary["endpoints"]) + (" (load balancer)" if summary.get("replicas") else "")
         + (f" (served at {summary['served_at']}: curl -H 'Host: {summary['domains'][0]}' "
            f"http://{summary['served_at']}/)" if summary.get("served_at") else "")),
        *([("replicas", " ".join(f"{r['name']}={r['ip']}" for r in summary["replicas"]))] if summary.get("replicas") else []),
        ("expires", summary["expires_at"] or "never (no --ttl)"),
        ("token", f"kept in {summary['token_file']} (--show-token prints it)" if token is None else token),
        ("CA", summary["ca_file"]),
    ]
    print(f"Exit server {summary['name']} is ready.\n")
    for key, value in rows:
        print(f"  {key:<9} {value}")
    print("\nConnect a client (copy and paste):\n")
    print(f"  {summary['client_command']}\n")
    status_commands = summary.get("status_commands") or ([summary["status_command"]] if summary.get("status_command") else [])
    if status_commands:
        print("See its clients and traffic" + (" (one command per replica):\n" if len(status_commands) > 1 else ":\n"))
        for command in status_commands:
            print(f"  {command}")
        print()
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
