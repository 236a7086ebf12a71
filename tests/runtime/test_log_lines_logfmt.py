"""Every ``event=`` line the runtime writes is logfmt, whatever its values hold: ``--log-format json`` keeps only
``msg`` of a line that does not parse, so one unquoted sentence (``reason=more protected names than ...``) or a
free-text tail (``serving=expired_until_renewed (browsers refuse it)``) cost a JSON user every field of that line.

Each logging call in ``runtime/`` whose template starts with ``event=`` is found in the source (``ast``), its
placeholders are filled, and the message must parse back with its ``event``. The fill rule for ``%s``:

- ``logfmt(...)``: the value a user or peer could write, ``a b "c"``, quoted as ``logfmt`` quotes it;
- safe by construction (``SAFE``): a bare string constant or a choice between such, a number or bool, a timestamp
  (``iso``/``_iso``/``_retry_at``), the version, a signal's name, a session's name (made with ``logfmt``): a bare
  token;
- a prepared ``key=value`` fragment (``FRAGMENTS``, built with ``logfmt`` where it is made): what it writes;
- anything else: ``a b "c"`` as is, which breaks the line: pass it through ``logfmt()`` (the text of a value that
  needs no quotes is unchanged).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from inlets_py.runtime.core.logs import logfmt, logfmt_fields

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
NEEDS_QUOTING = 'a b "c"'
SAFE_CALLS = {"logfmt", "iso", "_iso", "_retry_at", "bool", "len", "int"}
#: ``self.name``/``session.name``: a Session's name, made with ``logfmt`` (server/control.py); ``event``: the event
#: names admission.py passes.
SAFE_EXPRESSIONS = {"__version__", "sig.name", "self.name", "session.name", "event"}
#: Arguments that are a ``key=value`` fragment made elsewhere (their values quoted there), as they write one.
FRAGMENTS = {
    "subject": 'cert="a b \\"c\\""',
    "self._expired_note(domain)": " serving=expired not_after=2026-01-01T00:00:00Z",
    "'' if asked is None else f' retry_after={asked:.0f}s'": " retry_after=30s",
    "f' suppressed={left_out}' if left_out else ''": " suppressed=3",
    "next_step": ' next="raise --max-streams"',  # client/local_forward.py: _next() quotes it with logfmt
}
_PLACEHOLDER = re.compile(r"%(?:%|[-+ #0]*\d*(?:\.\d+)?([sdifgrx]|o))")


def _safe(node: ast.expr) -> bool:
    """Whether ``node``'s value cannot hold a space, ``"``, ``=`` or ``\\`` (see the module docstring)."""
    if isinstance(node, ast.Constant):
        return not isinstance(node.value, str) or bool(re.fullmatch(r'[!#-<>-\[\]-~]+', node.value))
    if isinstance(node, ast.IfExp):
        return _safe(node.body) and _safe(node.orelse)
    if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        return name in SAFE_CALLS
    return ast.unparse(node) in SAFE_EXPRESSIONS


def _event_calls() -> list[tuple[str, str, list[ast.expr]]]:
    """(where, template, arguments) of each ``log.LEVEL("event=...", ...)`` / ``logger.LEVEL`` / ``.log(level, ...)``."""
    found = []
    for path in sorted(RUNTIME.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in {"log", "logger"}):
                continue
            args = node.args[1:] if node.func.attr == "log" else node.args if node.func.attr in LEVELS else None
            if args and isinstance(args[0], ast.Constant) and str(args[0].value).startswith("event="):
                found.append((f"{path.relative_to(RUNTIME)}:{node.lineno}", args[0].value, args[1:]))
    return found


def _filled(template: str, args: list[ast.expr]) -> str:
    values: list[object] = []
    kinds = [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)]
    assert len(kinds) == len(args), f"{len(kinds)} placeholders, {len(args)} arguments"
    for kind, arg in zip(kinds, args):
        if kind != "s" and kind != "r":
            values.append(7)
        elif isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "logfmt":
            values.append(logfmt(NEEDS_QUOTING))
        elif ast.unparse(arg) in FRAGMENTS:
            values.append(FRAGMENTS[ast.unparse(arg)])
        elif _safe(arg):
            values.append(arg.value if isinstance(arg, ast.Constant) else "token")
        else:
            values.append(NEEDS_QUOTING)
    return template % tuple(values)


CALLS = _event_calls()


def test_the_scan_finds_the_runtimes_log_calls() -> None:
    """A scan that found nothing would pass every line; the runtime has dozens, in every part."""
    assert len(CALLS) > 80
    assert {where.split("/")[0] for where, _, _ in CALLS} >= {"acme", "cli", "client", "core", "http", "server"}


@pytest.mark.parametrize("where, template, args", CALLS, ids=[c[0] for c in CALLS])
def test_each_event_line_reads_back_as_fields(where: str, template: str, args: list[ast.expr]) -> None:
    message = _filled(template, args)
    fields = logfmt_fields(message)
    assert fields.get("event"), f"{where}: {message}"
