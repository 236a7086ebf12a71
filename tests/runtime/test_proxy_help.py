"""``--proxy``'s help names the variables a client reads, in the order it reads them, as the README does."""

from __future__ import annotations

import re

import pytest
from helpers.process import inlets
from helpers.readme_commands import README

#: a variable's name, not a part of a longer one ($INLETS_PROXY_PASSWORD)
_VARIABLE = re.compile(r"(?<![A-Z_])([A-Z]+_PROXY)(?![A-Z_])")


def _order(text: str) -> list[str]:
    return [name for name in dict.fromkeys(_VARIABLE.findall(text)) if name != "NO_PROXY"]


@pytest.mark.parametrize("command", [["tcp", "client"], ["http", "client"], ["status"]])
def test_proxy_help_names_the_variables_in_the_order_the_readme_and_the_client_read_them(command: list[str]) -> None:
    """The help said "$HTTPS_PROXY / $ALL_PROXY": a $WSS_PROXY or $SOCKS_PROXY the client takes first was not in it."""
    readme = next(line for line in README.read_text().splitlines() if line.startswith("Without `--proxy`"))
    result = inlets(*command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    proxy_help = text[text.index("--proxy <"):text.index("--proxy-password-file")]
    assert _order(readme) == ["WSS_PROXY", "WS_PROXY", "SOCKS_PROXY", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"]
    assert _order(proxy_help) == _order(readme), proxy_help
