"""Load ``importlib.metadata`` on first use instead of at import: 2.6 MiB of every idle process.

websockets' version module runs ``import importlib.metadata`` when imported and, in a released
build, never reads it; the import alone brings email, zipfile, csv and pathlib into memory
(2.6 MiB of RSS measured on the client and on the server, issue 17's idle-memory targets). A
placeholder stands in ``sys.modules`` until one of its attributes is read, which imports the real
module (it then replaces the placeholder, and the placeholder forwards to it).

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

NAME = "importlib.metadata"


class _Placeholder(types.ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        return getattr(_load(self), attribute)


def _load(placeholder: _Placeholder) -> types.ModuleType:
    if sys.modules.get(NAME) is placeholder:
        del sys.modules[NAME]
    return importlib.import_module(NAME)  # also sets importlib.metadata to the real module


def defer() -> None:
    """Stand the placeholder in for ``importlib.metadata`` unless something has already loaded it."""
    if NAME in sys.modules:
        return
    placeholder = _Placeholder(NAME, "importlib.metadata, loaded on first use (runtime/core/lazy_metadata.py)")
    placeholder.__spec__ = ModuleSpec(NAME, None)
    sys.modules[NAME] = placeholder
    importlib.metadata = placeholder  # type: ignore[attr-defined]  # what ``import importlib.metadata`` binds
