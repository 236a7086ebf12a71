"""The ``inlets`` command's typer apps; each command module adds its command to one of them."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import print_version

app = typer.Typer(
    name="inlets",
    help="Tunnels over one authenticated TLS websocket. Run a server on a public host, a client inside your network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tcp_app = typer.Typer(help="TCP (and UDP) tunnels: forward ports byte for byte, datagram for datagram.",
                      no_args_is_help=True)
http_app = typer.Typer(help="HTTP tunnels: a Host-routed reverse proxy to your apps.", no_args_is_help=True)


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=print_version("inlets"), is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """Tunnels over one authenticated TLS websocket. Run a server on a public host, a client inside your network."""
