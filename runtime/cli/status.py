"""``inlets status``: a server's clients, services, streams and traffic, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.auth import TokenError, read_tokens
from ..core.probe import ProbeError, get, parse_url
from ..server.status import render_table
from .app import app
from .config import fail
from .options import TlsCa, TlsServerName, Url


@app.command("status")
def status(
    url: Url,
    token: Annotated[Optional[str], typer.Option(help="Auth token (prefer --token-file or $INLETS_TOKEN).")] = None,
    token_file: Annotated[Optional[Path], typer.Option(help="File holding the token.")] = None,
    tls_ca: TlsCa = None,
    tls_server_name: TlsServerName = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the server's JSON as is.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the server.")] = 5.0,
) -> None:
    """Show a server's clients, their services, streams and traffic.

    Example: inlets status --url wss://203.0.113.10:8123 --token-file token.txt --tls-ca ca.crt
    """
    try:
        secret = read_tokens(token, token_file)[0]
        endpoint = parse_url(url)
        answer = get(endpoint, "/status", ca_file=tls_ca, server_name=tls_server_name, token=secret, timeout=timeout)
    except (TokenError, ProbeError) as exc:
        fail(str(exc), 1)
    if answer.status == 401:
        fail("the server refused the token (HTTP 401): check --token/--token-file", 1)
    if answer.status != 200:
        fail(f"/status answered HTTP {answer.status}: {answer.body.strip()[:200]}", 1)
    try:
        document = json.loads(answer.body)
    except ValueError:
        fail("/status did not answer JSON: is --url a tunnel server?", 1)
    typer.echo(json.dumps(document, indent=2) if json_ else render_table(document))
