"""The options the ``inlets`` commands share, declared once (typer reads them from the type hints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..core.ports import parse_port


def port_flag(value: str | int) -> int:
    """The ``parser=`` of every port flag of both CLIs (inlets, inletsctl): ``parse_port``'s rule, so
    "٣", "+80", " 80" or "8_0" get one line naming the rule instead of becoming a port."""
    port = parse_port(str(value))
    if port is None:
        raise typer.BadParameter(f"{str(value)!r} is not a port: give 1-65535 in the digits 0-9")
    return port


def path_flag(value: str | Path) -> Path:
    """The ``parser=`` of every path flag of both CLIs, which typer would turn from '' (``--token-file "$UNSET"``)
    into the current folder: "token file . is a directory" named a path the user never typed."""
    if isinstance(value, str) and not value.strip():
        raise typer.BadParameter("the path is empty: give a file or folder, or leave the flag out")
    return Path(value)


def count_flag(high: int) -> Callable[[str | int], int]:
    """The ``parser=`` of a count flag (streams, MiB, replicas): a whole number from 1 to ``high`` in the digits
    0-9, as ports and durations are (``int()`` took "８" or "٣" as 8 and 3, and --generate wrote them as given)."""

    def parse(value: str | int) -> int:
        text = str(value)
        if not (text.isascii() and text.isdecimal()) or not 1 <= int(text) <= high:
            raise typer.BadParameter(f"{text!r} is not a whole number from 1 to {high} in the digits 0-9")
        return int(text)

    return parse


def count_option(*names: str, high: int = 1_000_000, help: str) -> Any:
    """A count flag: parsed by ``count_flag``, shown as N in --help with its range."""
    return typer.Option(*names, parser=count_flag(high), metavar="N", help=f"{help} (1 to {high})")


def print_version(name: str) -> Callable[[bool], None]:
    """The ``--version`` callback of both CLIs: ``NAME VERSION`` on stdout, then exit 0 before any other flag is read."""

    def callback(given: bool) -> None:
        if given:
            from .. import __version__

            typer.echo(f"{name} {__version__}")
            raise typer.Exit()

    return callback


def path_option(help: str, *names: str) -> Any:
    """A file or folder flag: parsed by ``path_flag``, shown as <path> in --help."""
    return typer.Option(*names, parser=path_flag, metavar="<path>", help=help)


def port_option(help: str, *names: str) -> Any:
    """A port flag: parsed by ``port_flag``, shown as PORT in --help."""
    return typer.Option(*names, parser=port_flag, metavar="PORT", help=help)


ControlAddr = Annotated[Optional[str], typer.Option(
    help="Control-plane bind address (default: every interface, IPv4 and IPv6).")]
ControlPort = Annotated[int, port_option("Control-plane (websocket) port.")]
DataAddr = Annotated[
    Optional[str], typer.Option(help="Data-plane bind address; 127.0.0.1 keeps tunnelled services private to this host.")
]
Token = Annotated[Optional[str], typer.Option(help="Auth token (prefer --token-file or $INLETS_TOKEN).")]
TokenFile = Annotated[
    Optional[Path], path_option("File holding the token (server: one per line, re-read on SIGHUP).")
]
TlsCert = Annotated[Optional[Path], path_option(
    "TLS certificate (PEM) for the control plane (re-read with --tls-key on SIGHUP).")]
TlsKey = Annotated[Optional[Path], path_option("TLS private key (PEM).")]
AutoTls = Annotated[bool, typer.Option(help="Generate a CA and server certificate (reused on restart).")]
AutoTlsPath = Annotated[
    Optional[Path], typer.Option(help="Where --auto-tls keeps its files [default: ~/.local/share/inlets/auto-tls, "
                                      "or $XDG_DATA_HOME/inlets/auto-tls where that is an absolute path].")
]
AutoTlsSan = Annotated[Optional[list[str]], typer.Option(help="Name or IP the certificate is for (repeatable).")]
Plaintext = Annotated[bool, typer.Option(help="Plain ws://, only behind a TLS-terminating proxy.")]
MaxClientStreams = Annotated[
    int, count_option(help="Streams one client may have open at once (more are refused).")
]
TrustedProxies = Annotated[Optional[str], typer.Option(
    help="Reverse proxies in front (addresses or CIDRs, e.g. 127.0.0.1) whose X-Forwarded-For names the client, "
    "for failed-login limits and logs; an HTTP data-port connection from one counts to the total cap only.")]
LoginLimitExempt = Annotated[Optional[str], typer.Option(
    help="Sources (addresses or CIDRs, e.g. 10.0.0.0/8) the control port's failed-login limit never holds back: "
    "their wrong tokens are logged but not counted, so a guesser behind the same NAT cannot keep them out; "
    "a guesser among them is not slowed either.")]
MaxHandshakes = Annotated[int, count_option(
    help="Control-port connections not yet authenticated, at once (more are closed at once).")]
MaxHandshakesPerSource = Annotated[Optional[int], count_option(
    help="Of those, from one address, an IPv6 one's /64 (a --trusted-proxies address counts to the total only); "
         "default 16, or the total if lower")]
MaxClientBuffer = Annotated[int, count_option(
    "--max-client-buffer",
    help="MiB one client's streams may make the server hold, all together, beyond each stream's first 256 KiB "
    "(for users that have not taken the data yet).")]
#: A client's --max-streams; the TCP client's help adds its --local forwards (the HTTP client has none).
MaxServerStreams = Annotated[int, count_option(
    "--max-streams", help="Streams the server may have open on this client at once (more are refused).")]
MaxBuffer = Annotated[int, count_option(
    "--max-buffer",
    help="MiB the server's streams may make this client hold, all together, beyond each stream's first 256 KiB "
    "(for upstreams that have not taken the data yet).")]
AllowIps = Annotated[
    Optional[str], typer.Option(help="Only these sources may use the data plane: 10.0.0.0/8,2001:db8::/32.")
]
ProxyProtocolOpt = Annotated[
    Optional[str], typer.Option(help="Send a PROXY protocol header (v1|v2) with the real source to the upstream.")
]
LbProxyProtocol = Annotated[
    Optional[str], typer.Option(help="Expect a PROXY protocol header (v1|v2) from a load balancer in front.")
]
Generate = Annotated[
    Optional[str], typer.Option(help="Print a systemd unit (systemd) or Kubernetes YAML (k8s_yaml) running these flags.")
]
Replicas = Annotated[Optional[int], count_option(
    high=100, help="With --generate=k8s_yaml: a StatefulSet of this many servers, a Service for each one's "
    "control plane (a client gives one --url per replica) and one balancing the data plane over all.")]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error.")]
LogFormat = Annotated[str, typer.Option(help="text (key=value) or json.")]
