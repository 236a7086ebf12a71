"""The runtime's import graph: no cycles, and a client that never loads the server's code.

The graph is the one the server wheel is built from (provisioner/wheel.py): every import of
every module, those inside functions included; for cycles ``if TYPE_CHECKING:`` blocks too
(the HTTP front and server once depended on each other through type hints alone).
"""

from __future__ import annotations

import subprocess
import sys

from inlets_py import runtime
from inlets_py.provisioner.wheel import import_graph

CLIENT_COMMANDS = ("cli/tcp_client", "cli/http_client", "cli/run/tcp_client", "cli/run/http_client")
#: What a client must never import: the server side, the HTTP reverse proxy and its parser (the HTTP
#: client is a byte bridge), ACME, prometheus.
SERVER_SIDE = ("server/", "acme/", "http/server", "http/front", "http/exchange", "http/exchange_state", "http/upgrade", "http/leg",
               "http/guard", "http/parser", "http/request_reader", "http/header_values", "http/routing", "http/write", "cli/tcp_server", "cli/http_server", "cli/run/tcp_server",
               "cli/run/http_server", "cli/server_config")


def closure(graph: dict[str, tuple[set[str], set[str]]], roots: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(modules, third-party top-level packages) that importing ``roots`` may load."""
    seen: set[str] = set()
    third_party: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            modules, absolute = graph[name]
            todo += modules
            third_party |= absolute
    return seen, third_party


def test_the_graph_sees_relative_imports_across_subpackages() -> None:
    graph = import_graph()
    assert "core/mux" in graph["core/session"][0]
    assert {"cli/app", "cli/handoff"} <= graph["cli/tcp_server"][0]
    assert {"server/tcp", "core/__init__", "cli/__init__"} <= graph["cli/run/tcp_server"][0]
    assert "prometheus_client" in graph["server/metrics"][1]


def cycle(graph: dict[str, tuple[set[str], set[str]]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth first), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module][0]):
            if (found := visit(imported)) is not None:
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if (found := visit(module)) is not None:
            return found
    return None


def test_the_runtime_has_no_import_cycle_not_even_through_type_hints() -> None:
    graph = import_graph(type_checking=True)
    assert len(graph) > 40
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found or [])


def test_a_cycle_through_a_type_hint_is_found(tmp_path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "http").mkdir()
    (tmp_path / "http" / "__init__.py").write_text("")
    (tmp_path / "http" / "server.py").write_text("from .front import Front\n")
    (tmp_path / "http" / "front.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .server import Server\n")
    assert cycle(import_graph(tmp_path)) is None
    assert cycle(import_graph(tmp_path, type_checking=True)) == ["http/front", "http/server", "http/front"]


def test_the_client_commands_import_no_server_code() -> None:
    modules, third_party = closure(import_graph(), CLIENT_COMMANDS)
    leaked = sorted(m for m in modules if m.startswith(SERVER_SIDE))
    assert not leaked, f"a client command imports server code: {leaked}"
    assert not {"prometheus_client", "httptools"} & third_party
    assert {"client/dialer", "client/tcp_upstreams", "client/http_upstreams", "core/mux"} <= modules


def test_a_client_process_loads_neither_the_server_nor_its_http_parser_nor_prometheus() -> None:
    """``inlets tcp client --help`` and ``inlets http client --help`` parsed as a user runs them (in a fresh
    process, here without the fork: cli/handoff.py), with the command's body imported as it runs."""
    package = runtime.__name__
    for mode in ("tcp", "http"):
        probe = (
            "import sys\n"
            f"from {package}.cli.main import _run\n"
            f"sys.argv = ['inlets', '{mode}', 'client', '--help']\n"
            "assert _run(sys.argv[1:]) == 0\n"
            f"import {package}.cli.run.{mode}_client\n"
            f"loaded = sorted(m for m in sys.modules if m.startswith(('{package}.server', '{package}.acme', "
            f"'{package}.http.server', '{package}.http.front', '{package}.http.parser', '{package}.http.request_reader', '{package}.http.response_reader', 'httptools', "
            "'prometheus_client')))\n"
            "print('LOADED', loaded)\n"
        )
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"inlets {mode} client" in result.stdout
        assert result.stdout.rstrip().endswith("LOADED []"), result.stdout[-500:]


def test_the_server_commands_load_no_client_code_nor_prometheus() -> None:
    """The websockets library's client module brings python-socks (an outbound proxy: the client's
    job); prometheus-client comes with the first scrape (``test_metrics``). Neither is a server's weight."""
    package = runtime.__name__
    probe = (
        "import sys\n"
        f"import {package}.cli.tcp_server, {package}.cli.http_server, {package}.cli.run.tcp_server, {package}.cli.run.http_server\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith(('{package}.client', 'websockets.asyncio.client', "
        "'python_socks', 'prometheus_client')))\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("LOADED []"), result.stdout[-500:]
