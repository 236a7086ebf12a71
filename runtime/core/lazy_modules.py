"""Load standard modules that libraries import and rarely use on first use instead of at import.

Each costs every idle process its memory for its whole life (issue 17's idle-memory targets):
- ``importlib.metadata``: websockets' version module imports it and, in a released build, never
  reads it; the import alone brings email, zipfile, csv and pathlib (2.6 MiB of RSS measured on
  the client and on the server).
- ``urllib.request``: websockets' proxy module imports it for ``getproxies``, which runs only when
  a proxy is looked up in the environment (``outbound_proxy.choose`` does that only when a
  ``*_proxy`` variable is set); with it come http.client, email, tempfile and shutil (1.9 MiB of
  the client's RSS, measured).

A placeholder stands in ``sys.modules`` until one of its attributes is read, which imports the
real module (it then replaces the placeholder, and the placeholder forwards to it).
``importlib.util.LazyLoader`` cannot do this on Python 3.11: the import statement itself reads the
module's ``__spec__``, which a lazy module counts as first use. The placeholder carries its own
``__spec__``, so only a real use loads the module.
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.machinery import ModuleSpec
from typing import Any

DEFERRED = ("importlib.metadata", "urllib.request")


class _Placeholder(types.ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        return getattr(_load(self), attribute)


def _load(placeholder: _Placeholder) -> types.ModuleType:
    name = placeholder.__name__
    if sys.modules.get(name) is placeholder:
        del sys.modules[name]
    return importlib.import_module(name)  # also sets the parent package's attribute to the real module


def defer(names: tuple[str, ...] = DEFERRED) -> None:
    """Stand a placeholder in for each of ``names`` that nothing has loaded yet."""
    for name in names:
        if name in sys.modules:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = importlib.import_module(parent_name)  # a package: importlib, urllib (both small)
        placeholder = _Placeholder(name, f"{name}, loaded on first use (runtime/core/lazy_modules.py)")
        placeholder.__spec__ = ModuleSpec(name, None)
        sys.modules[name] = placeholder
        setattr(parent, child, placeholder)  # what ``import parent.child`` binds
