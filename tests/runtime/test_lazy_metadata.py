"""core/lazy_metadata.py: importlib.metadata waits for its first use, and then works as itself."""

from __future__ import annotations

import subprocess
import sys

from inlets_py import runtime


def test_websockets_imports_without_loading_it_and_a_use_loads_the_real_module() -> None:
    probe = (
        "import sys\n"
        f"from {runtime.__name__}.core import lazy_metadata\n"
        "lazy_metadata.defer()\n"
        "import websockets.asyncio.client, websockets.asyncio.server\n"
        "print('DEFERRED', type(sys.modules['importlib.metadata']).__name__, 'zipfile' in sys.modules)\n"
        "import importlib.metadata, importlib.util\n"
        "assert importlib.util.find_spec('importlib.metadata').name == 'importlib.metadata'\n"
        "from importlib.metadata import version\n"
        "print('USED', version('websockets') == websockets.version.version, importlib.metadata.version('websockets') == version('websockets'))\n"
        "print('REAL', type(sys.modules['importlib.metadata']).__name__, importlib.metadata is sys.modules['importlib.metadata'])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["DEFERRED _Placeholder False", "USED True True", "REAL module True"]


def test_a_module_already_loaded_is_left_as_it_is() -> None:
    probe = (
        "import sys, importlib.metadata\n"
        "real = sys.modules['importlib.metadata']\n"
        f"from {runtime.__name__}.core import lazy_metadata\n"
        "lazy_metadata.defer()\n"
        "print(sys.modules['importlib.metadata'] is real)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
