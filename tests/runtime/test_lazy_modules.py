"""core/lazy_modules.py: the deferred modules wait for their first use, and then work as themselves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from inlets_py import runtime

#: Per deferred module: a module only it brings in, and a use of it after the import.
CASES = {
    "importlib.metadata": ("zipfile", "from importlib.metadata import version\n"
                           "assert version('websockets') == websockets.version.version\n"
                           "assert importlib.metadata.version('websockets') == version('websockets')\n"),
    "urllib.request": ("http.client", "from urllib.request import getproxies\n"
                       "assert urllib.request.getproxies() == getproxies() == {'https': 'http://corp:3128'}\n"),
}


def _run(probe: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env={**clean, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("name", sorted(CASES))
def test_websockets_imports_without_loading_it_and_a_use_loads_the_real_module(name: str) -> None:
    brought_in, use = CASES[name]
    probe = (
        "import sys\n"
        f"from {runtime.__name__}.core import lazy_modules\n"
        "lazy_modules.defer()\n"
        "import websockets.asyncio.client, websockets.asyncio.server\n"
        f"print('DEFERRED', type(sys.modules[{name!r}]).__name__, {brought_in!r} in sys.modules)\n"
        f"import {name}, importlib.util\n"
        f"assert importlib.util.find_spec({name!r}).name == {name!r}\n"
        + use +
        f"print('REAL', type(sys.modules[{name!r}]).__name__, {name} is sys.modules[{name!r}])\n"
    )
    assert _run(probe, HTTPS_PROXY="http://corp:3128") == ["DEFERRED _Placeholder False", "REAL module True"]


def test_a_module_already_loaded_is_left_as_it_is() -> None:
    probe = (
        "import sys, importlib.metadata, urllib.request\n"
        "real = [sys.modules['importlib.metadata'], sys.modules['urllib.request']]\n"
        f"from {runtime.__name__}.core import lazy_modules\n"
        "lazy_modules.defer()\n"
        "print(real == [sys.modules['importlib.metadata'], sys.modules['urllib.request']])\n"
    )
    assert _run(probe) == ["True"]


@pytest.mark.parametrize("env, loaded", [({}, False), ({"https_proxy": "http://corp:3128"}, True),
                                         ({"NO_PROXY": ".internal"}, True)])
def test_the_client_reads_urllib_request_only_when_the_environment_names_a_proxy(env: dict[str, str], loaded: bool) -> None:
    """The tunnel client's own imports and its proxy choice: without *_proxy variables, what
    ``getproxies`` would say (no proxy) without loading it."""
    probe = (
        "import sys\n"
        f"from {runtime.__name__}.core import lazy_modules\n"
        "lazy_modules.defer()\n"
        f"import {runtime.__name__}.cli.run.tcp_client, {runtime.__name__}.cli.run.http_client\n"
        f"from {runtime.__name__}.client.outbound_proxy import choose\n"
        "choice = choose(None, 'wss://tunnel.example:8123/connect')\n"
        "print(choice.url, type(sys.modules['urllib.request']).__name__, 'http.client' in sys.modules)\n"
    )
    proxy = "http://corp:3128" if "https_proxy" in env else "None"
    assert _run(probe, **env) == [f"{proxy} {'module' if loaded else '_Placeholder'} {loaded}"]
