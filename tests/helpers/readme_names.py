"""The log events and metric names the README quotes, and those the code logs and the servers expose.

The README quotes log lines (``event=NAME key=value ...``) and metric names (``NAME{label,label}`` or a selector
``NAME{label="value"}``) for readers to grep and alert on; a name the code does not write matches nothing, silently.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from helpers.readme_commands import README, ROOT

#: a quoted ``key=value``: the value a "quoted string" or a run to the next blank (``...`` and ``N`` included)
_FIELD = re.compile(r'(?<![\w.-])(\w+)=("[^"]*"|[^\s",]*)')


def readme_quotes() -> list[str]:
    """The README's inline code spans and fenced code lines, where it quotes what a program prints."""
    prose, quotes, fenced = [], [], False
    for line in README.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        else:
            (quotes if fenced else prose).append(line)
    quotes += re.findall(r"`([^`]+)`", "\n".join(prose))  # a span may wrap onto the next line
    return [" ".join(quote.split()) for quote in quotes]


def readme_events() -> list[tuple[str, dict[str, str]]]:
    """Each ``event=NAME`` the README quotes, with the fields it quotes after it: (NAME, {key: value})."""
    found = []
    for quote in readme_quotes():
        for part in re.split(r"(?=\bevent=)", quote):
            if (at := re.match(r"event=(\w+)(.*)", part)) is not None:
                found.append((at[1], dict(_FIELD.findall(at[2]))))
    return found


def _format_strings(tree: ast.AST) -> list[str]:
    """A module's string literals (adjacent ones joined, as Python joins them), f-strings' fields as ``{}``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            found.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def _modules() -> list[Path]:
    return sorted((ROOT / "runtime").rglob("*.py")) + sorted((ROOT / "provisioner").rglob("*.py"))


@dataclass
class Logged:
    """One event as the code logs it: the keys its lines carry and the string literals of the modules logging it
    (where a closed-set value such as ``action=next_client`` is written as an argument)."""

    keys: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)


def code_events() -> dict[str, Logged]:
    """Each event the code logs (over every line logging it). A line that takes its event name as an argument
    (``event=%s``) is counted for each identifier-like literal of its module."""
    logged: dict[str, Logged] = {}
    for path in _modules():
        strings = _format_strings(ast.parse(path.read_text()))
        for string in strings:
            for part in re.split(r"(?=\bevent=)", string):
                if (at := re.match(r"event=(\w+|%s|\{\})(.*)", part, re.S)) is None:
                    continue
                keys = set(re.findall(r"(?<![\w.-])(\w+)=", at[2]))
                names = [at[1]] if at[1] not in ("%s", "{}") else [s for s in strings if re.fullmatch(r"[a-z]+(_[a-z]+)+", s)]
                for name in names:
                    event = logged.setdefault(name, Logged())
                    event.keys |= keys
                    event.words |= set(strings)
    return logged


def code_fields() -> set[str]:
    """Every ``key=value`` the code writes as such: in a string (``reason=tunnel_down``) or a keyword argument
    (``listener="data"``, a value its log lines then carry)."""
    found: set[str] = set()
    for path in _modules():
        tree = ast.parse(path.read_text())
        for string in _format_strings(tree):
            found.update(f"{key}={value}" for key, value in re.findall(r"(?<![\w.-])(\w+)=(\w+)", string))
        found.update(f"{node.arg}={node.value.value}" for node in ast.walk(tree) if isinstance(node, ast.keyword)
                     and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))
    return found


def code_literals(*paths: str) -> set[str]:
    """Every string literal of these modules: the values they can write where those are a closed set (a reason)."""
    return {string for path in paths for string in _format_strings(ast.parse((ROOT / path).read_text()))}


def readme_metrics() -> list[tuple[str, str | None]]:
    """Each metric the README quotes: (name, what its braces hold, None without them)."""
    found = []
    for quote in readme_quotes():
        for name, braces in re.findall(r"\b((?:tcp|http|udp)_(?:dataplane|controlplane)_\w+)(\{[^}]*\})?", quote):
            found.append((name, braces[1:-1] if braces else None))
    return found


Sample = tuple[str, dict[str, str]]  # (name, labels) of one sample of a scrape


def scrape(body: str) -> list[Sample]:
    """A /metrics answer's samples, each family's name (a histogram's, ``_total``'s stem) with them too."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.append((sample.name, dict(sample.labels)))
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            samples.append((family.name, labels))
    return samples


async def tcp_and_udp_scrape(tls, token: str) -> str:
    """A TCP server carrying a TCP and a UDP port for a client, where a source outside ``--allow-ips`` was refused
    once on each (so the refusal counters have a sample): its /metrics, fetched over its TLS control port."""
    from helpers.tunnel import control_url, free_port, start_client, stop, udp_free_port

    from inlets_py.runtime.cli.server_config import serving_certificate
    from inlets_py.runtime.client.tcp_upstreams import Upstream
    from inlets_py.runtime.core.allowlist import SourceAllowList
    from inlets_py.runtime.core.probe import get, parse_url
    from inlets_py.runtime.core.tls import server_context
    from inlets_py.runtime.core.auth import TokenSet
    from inlets_py.runtime.server.control import ControlConfig
    from inlets_py.runtime.server.dataplane import DataPlaneOptions
    from inlets_py.runtime.server.tcp import TcpTunnelServer

    options = DataPlaneOptions(allow_ips=SourceAllowList([ipaddress.ip_network("127.0.0.2/32")]))
    control = ControlConfig(tokens=TokenSet([token]), host="127.0.0.1", port=0, ssl_context=server_context(tls.cert, tls.key),
                            certificate=serving_certificate(Path(tls.cert), "renew it"))  # as the CLI's, for its end
    server = TcpTunnelServer(control, "127.0.0.1", options=options)
    await server.start()
    tcp, udp = free_port(), udp_free_port()
    client, task = await start_client(control_url(server), token, tls, {
        f"tcp:{tcp}": Upstream("127.0.0.1", 9), f"udp:{udp}": Upstream("127.0.0.1", 9)})
    try:
        for _ in range(100):  # the data ports open as the client's handshake is admitted: at most 2 s
            if f"tcp:{tcp}" in server.listeners and f"udp:{udp}" in server.listeners:
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp)  # from 127.0.0.1: refused (reset)
        with contextlib.suppress(ConnectionResetError):
            await reader.read()
        writer.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as user:
            user.sendto(b"refused", ("127.0.0.1", udp))
        for _ in range(100):
            if server.udp_ports[f"udp:{udp}"].counters.dropped:
                break
            await asyncio.sleep(0.02)
        answer = await asyncio.to_thread(get, parse_url(control_url(server)), "/metrics", ca_file=Path(tls.ca),
                                         token=token)
        return answer.body
    finally:
        await stop(task)
        await server.stop()
