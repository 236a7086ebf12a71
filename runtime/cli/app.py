"""The ``inlets`` command's typer apps; each command module adds its command to one of them."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import print_version

app = typer.Typer(
    name="inlets",
    help="Tunnels over one authenticated TLS websocket. Run a server on a public host, a client inside your network.",
    epilog="Each end's options:\n\n  inlets tcp server --help\n\n  inlets tcp client --help\n\n"
           "(http likewise). An exit server on this machine, with the client command to run printed:\n\n"
           "  inletsctl create --provider local --ports 8080",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tcp_app = typer.Typer(help="TCP (and UDP) tunnels: forward ports byte for byte, datagram for datagram.",
                      short_help="TCP and UDP tunnels: ports forwarded byte for byte.", no_args_is_help=True)
http_app = typer.Typer(help="HTTP tunnels: a Host-routed reverse proxy to your apps.", no_args_is_help=True)


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=print_version("inlets"), is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """Tunnels over one authenticated TLS websocket. Run a server on a public host, a client inside your network."""
