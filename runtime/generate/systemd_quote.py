"""Values written into systemd unit files, quoted and escaped by systemd's own rules.

A value pasted into a unit as it is can change the unit: a line break starts a new
directive (``ExecStartPre=...`` as root), ``%`` starts a specifier (``%2F`` in a URL
becomes an error, or another value), ``$`` in a command line is an environment
variable, and a space splits a path list. systemd.syntax(7) and systemd.service(5)
define the escapes; this module writes them, so every value reaches the program (or
the setting) byte for byte. Used by ``inlets --generate=systemd`` and by inletsctl's
units alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

#: words systemd takes as they are: no quotes, escapes, specifiers or variables in them
_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
#: A command-line byte that is not UTF-8 (a Latin-1 file name) is this plus the byte (Python's surrogateescape).
#: Written raw, systemd ignored the whole line ("String is not UTF-8 clean") and printing it in a UTF-8 locale raised.
_ESCAPED_BYTE = 0xDC00
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


class UnitValueError(ValueError):
    """The value cannot be written into a unit at all; the message says which and why."""


def exec_word(word: str) -> str:
    """One argument of ``ExecStart=``: double-quoted with C escapes when needed, ``%`` as
    ``%%`` and ``$`` as ``$$``, so systemd passes exactly ``word`` to the program."""
    if _PLAIN.fullmatch(word):
        return word
    out = []
    for char in word:
        if char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif _ESCAPED_BYTE <= ord(char) <= _ESCAPED_BYTE + 0xFF:  # a byte not UTF-8: systemd's \xNN, not raw
            out.append(f"\\x{ord(char) - _ESCAPED_BYTE:02x}")
        elif char in "%$":
            out.append(char * 2)
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def exec_path(path: str, prefix: str = "") -> str:
    """The program of ``ExecStart=`` (its first word, after systemd's ``prefix`` such as ``@``): unquoted, unescaped
    and its specifiers expanded (``%`` as ``%%``), but no ``$`` variable in it, and one holding a quote, a backslash
    or a control character is refused at load ("Executable name contains special characters"): refused here."""
    if not path.startswith("/"):
        raise UnitValueError(f"ExecStart needs an absolute program path, got {path!r}")
    if any(char in "\"'\\" or ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise UnitValueError(f"the program {path!r} has a quote, backslash or control character in its path, which "
                             "systemd cannot run: install it under a path without them")
    escaped = "".join(f"\\x{ord(char) - _ESCAPED_BYTE:02x}" if _ESCAPED_BYTE <= ord(char) <= _ESCAPED_BYTE + 0xFF
                      else "%%" if char == "%" else char for char in path)
    return prefix + escaped if _PLAIN.fullmatch(path) else f'"{prefix}{escaped}"'


def exec_command(argv: Iterable[str]) -> str:
    """The value of ``ExecStart=`` that runs ``argv`` as given (the first word is the program)."""
    words = list(argv)
    if not words:
        raise UnitValueError("ExecStart needs an absolute program path, got none")
    if "$" in words[0]:  # argv[0], a copy of the path, has its $ expanded at start: "@" gives it apart, $ as $$
        return " ".join([exec_path(words[0], "@"), *(exec_word(word) for word in words)])
    return " ".join([exec_path(words[0]), *(exec_word(word) for word in words[1:])])


def path_value(path: str, *, optional: bool = False) -> str:
    """One path of ``ReadOnlyPaths=`` (and the other path lists): quoted when it holds a space, ``%`` as ``%%``.

    ``optional`` adds systemd's ``-`` prefix (inside the quotes, where systemd looks for it),
    so a folder not made yet lets the service start and say which file it misses, instead of
    failing the whole unit with status=226/NAMESPACE.

    These settings take quotes but no escapes, so a path with a quote, a backslash or a
    control character cannot be written; it is refused rather than changed.
    """
    if not path.startswith("/"):
        raise UnitValueError(f"{path!r} is not an absolute path")
    if any(char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise UnitValueError(f"the path {path!r} has a quote, backslash or control character: systemd cannot take it")
    if any(_ESCAPED_BYTE <= ord(char) <= _ESCAPED_BYTE + 0xFF for char in path):
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise UnitValueError(f"the path {shown} is not UTF-8 (a byte such as Latin-1's), which a unit's paths cannot "
                             "hold: rename it (or give a link to it) with a UTF-8 or ASCII name")
    escaped = ("-" if optional else "") + path.replace("%", "%%")
    return escaped if _PLAIN.fullmatch(path) else f'"{escaped}"'


def text_value(text: str) -> str:
    """Free text (``Description=``, a comment): one line, ``%`` as ``%%``."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise UnitValueError(f"{text!r} has a line break or control character: a unit line cannot hold it")
    return text.replace("%", "%%")
