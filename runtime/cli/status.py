"""``inlets status``: a server's clients, services, streams and traffic, as a table or JSON."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from ..client.outbound_proxy import ProxyConfigError
from ..client.proxy_dial import dialer_for
from ..client.diagnose import printable
from ..core.auth import (TokenError, logins_refused, read_token_lines, read_tokens, several_tokens, token_refused,
                         warn_if_others_can_read)
from ..core.hosts import HostError, check_host
from ..core.jsonload import RepeatedKey, loads as load_json
from ..core.probe import ProbeError, Unreachable, get, parse_url
from ..core.tls import TlsConfigError, client_context
from .app import app
from .client_config import PROXY_INSTEAD, proxy_password_from, proxy_setting
from .config import fail
from .durations import seconds_option
from .client_options import Proxy, ProxyPasswordFile, TlsCa, TlsServerName
from .status_view import render_holdings, render_table
from .options import path_option
from .usage import shown


@app.command("status")
def status(
    url: Annotated[list[str], typer.Option(  # not the clients' text: status serves nothing and never reconnects
        "--url", metavar="<url>", help="Server URL: wss://HOST:8123 (a path is kept as a prefix). Repeat it for "
        "each server behind one balancer.")],
    token: Annotated[Optional[str], typer.Option(help="Auth token (prefer --token-file or $INLETS_TOKEN).")] = None,
    token_file: Annotated[Optional[list[Path]], path_option(
        "File holding the token: one for every --url, or one per --url in order.")] = None,
    tls_ca: TlsCa = None,
    tls_server_name: TlsServerName = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the server's /status JSON; with several --url, "
                                        '{"servers": {URL: its JSON}, "errors": {URL: why}} ("errors" only when '
                                        "one did not answer); on any failure, that object.")] = False,
    timeout: Annotated[float, seconds_option("Seconds to wait for the server.", 0.1)] = 5.0,
    proxy: Proxy = None,
    proxy_password_file: ProxyPasswordFile = None,
) -> None:
    """Show a server's clients, their services, streams and traffic. With several --url (servers behind
    one balancer), each server's, then which servers each client holds; a server that does not answer is
    named on stderr, the others still shown, and the exit status is 1.

    Example: inlets status --url wss://203.0.113.10:8123 --token-file token.txt --tls-ca ca.crt
    """
    def refused(message: str) -> NoReturn:  # a flag no server can be asked with: each --url's error under --json
        _fail(message, 2, json_, {}, dict.fromkeys(url, message))

    if proxy is not None and not proxy.strip():  # refuse_blank's line, which exits before --json could print
        refused(f"--proxy is empty: {PROXY_INSTEAD}")
    try:  # bad flags: one line before any server is asked
        if tls_server_name is not None:
            check_host(tls_server_name, "--tls-server-name")
        if tls_ca is not None:
            client_context(tls_ca)
        password_from = proxy_password_from(proxy_password_file)  # what a 407 names
        proxy = proxy_setting(proxy, proxy_password_file)
    except (HostError, TlsConfigError, TokenError, ProxyConfigError) as exc:
        refused(str(exc))
    if len(set(url)) != len(url):  # one entry per server in the holdings: a repeat read as "holds 1/1 servers"
        refused("the same --url is given twice: each server once")
    files: list[Path | None] = list(token_file or [None])
    if len(files) not in (1, len(url)):
        refused(f"--token-file given {len(files)} times for {len(url)} --url: give one for every server, or one per "
                "--url")
    pairs = list(zip(url, files * len(url) if len(files) == 1 else files))
    if len(url) == 1:
        ((server, file),) = pairs
        try:
            document = _status(server, token, file, tls_ca, tls_server_name, timeout, False, proxy, password_from)
        except _Failed as exc:  # --json: the object two --url print when neither answered, not an empty stdout
            _fail(str(exc), exc.status, json_, {}, {server: str(exc)})
        typer.echo(json.dumps(document, indent=2) if json_ else render_table(document))
        return
    # Several servers (behind one balancer): one that is down is what status is asked about then, so it is
    # named on stderr while the others' clients are still shown; exit 1 when any did not answer.
    documents: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for server, file in pairs:
        try:
            documents[server] = _status(server, token, file, tls_ca, tls_server_name, timeout, True, proxy, password_from)
        except _Unanswered as exc:
            errors[server] = str(exc)
            print(f"inlets: error: {shown(str(exc))}", file=sys.stderr, flush=True)
        except _Failed as exc:  # its token file, its --url: the servers not asked yet are in neither
            _fail(str(exc), exc.status, json_, documents, errors | {server: str(exc)})
    if json_:
        typer.echo(json.dumps({"servers": documents, **({"errors": errors} if errors else {})}, indent=2))
    else:
        for server, document in documents.items():
            typer.echo(f"{server}\n{render_table(document)}\n")
        typer.echo(render_holdings(documents, servers=url))
    if errors:
        raise SystemExit(1)


class _Failed(Exception):
    """Why a server could not be asked (its token file, its --url): exit status 2, as every command's bad input."""

    status = 2


class _Unanswered(_Failed):
    """A server that did not give its status (down, refused the token, not a tunnel): exit status 1."""

    status = 1


def _fail(message: str, status: int, json_: bool, documents: dict[str, dict], errors: dict[str, str]) -> NoReturn:
    """The one-line error and its exit status; with --json, first the object several --url print, ``errors`` saying
    why: a script reads JSON on every outcome (one --url down printed nothing, two printed that object)."""
    if json_:
        typer.echo(json.dumps({"servers": documents, "errors": errors}, indent=2))
    fail(message, status)


def _status(url: str, token: str | None, token_file: Path | None, tls_ca: Path | None, tls_server_name: str | None,
            timeout: float, several: bool, proxy: str | None = None,
            password_from: str | None = None) -> dict:
    """One server's /status document; a one-line error naming the server when there are several."""
    where = f"{url}: " if several else ""
    try:  # bad input: exit 2, as every command does
        tokens = read_token_lines(token_file) if token_file is not None and token is None else [
            (1, read_tokens(token, token_file)[0])]  # --token with --token-file: read_tokens refuses it
        secret = tokens[0][1]
        if token_file is not None:
            warn_if_others_can_read(token_file)
            if len(tokens) > 1:  # a server's rotation file: only its first token is sent
                print(f"inlets: warning: {where}{shown(several_tokens(len(tokens), token_file, tokens[0][0]))}",
                      file=sys.stderr, flush=True)
        endpoint = parse_url(url)
        dial = dialer_for(url, proxy, password_from)  # through the proxy the client would take (--proxy, else the environment)
    except (TokenError, ProbeError) as exc:
        raise _Failed(f"{where}{exc}") from None
    try:
        answer = get(endpoint, "/status", ca_file=tls_ca, server_name=tls_server_name, token=secret, timeout=timeout,
                     deadline=timeout, dial=dial)
    except TlsConfigError as exc:
        raise _Failed(f"{where}{exc}") from None
    except Unreachable as exc:  # through a proxy, its own words name the proxy instead
        hint = "" if dial else ": check that the server is running and that --url names its control port (8123 unless set)"
        raise _Unanswered(f"{where}{exc}{hint}")
    except ProbeError as exc:  # once the proxy granted the tunnel, the failure came through it: it may be the cause
        via = f"through proxy {dial.shown}: " if dial is not None and dial.granted else ""
        raise _Unanswered(f"{where}{via}{exc}")
    if answer.status == 401:
        first_of = (len(tokens), token_file) if token_file is not None and len(tokens) > 1 else None
        raise _Unanswered(f"{where}{token_refused(first_of)}")
    if answer.status == 429:  # every login from this address, the right token's too, for its Retry-After
        raise _Unanswered(f"{where}{logins_refused(answer.retry_after)}: try again then")
    if 300 <= answer.status < 400:  # as the client says it
        to = f" to {printable(answer.location, 300)}" if answer.location else ""
        raise _Unanswered(f"{where}{endpoint.where} answers a redirect (HTTP {answer.status}){to}, which a "
                          "tunnel server never sends: check --url")
    if answer.status == 404:
        raise _Unanswered(f"{where}/status answered HTTP 404: is --url a tunnel server's control port "
                          "(wss://HOST:8123)?")
    if answer.status != 200:  # one line of the answer, never a page of HTML
        words = _summary(answer.status, answer.body)
        raise _Unanswered(f"{where}/status answered HTTP {answer.status}" + (f": {words}" if words else ""))
    try:
        document = load_json(answer.body)
    except RepeatedKey as exc:  # which of the two is meant? Python's parser took the last, others the first
        raise _Unanswered(f"{where}/status answered JSON that names {exc.shown} twice in one object: "
                          "is --url a tunnel server?") from None
    except ValueError:
        raise _Unanswered(f"{where}/status did not answer JSON: is --url a tunnel server?")
    if not _is_status(document) or not _standard(document):
        raise _Unanswered(f"{where}/status answered JSON that is not a tunnel server's status: "
                          "is --url a tunnel server?")
    return document


def _standard(document: object) -> bool:
    """Whether ``--json`` can print it as standard JSON: Python's parser takes NaN, Infinity and 1e400 anywhere in
    the answer, and ``json.dumps`` wrote them back as NaN and Infinity, which other JSON parsers (jq) refuse."""
    try:
        json.dumps(document, allow_nan=False)
    except ValueError:
        return False
    return True


def _is_status(document: object) -> bool:
    """Whether JSON has the shape the table reads (``server/status.py``): anything else at ``/status``, such as
    another service behind the same proxy, got a Python traceback from the table instead of one line."""
    if not isinstance(document, dict):
        return False
    if not _count(document.get("uptime_seconds", 0), float):
        return False
    clients = document.get("clients", [])
    if not isinstance(clients, list):
        return False
    for client in clients:
        if not isinstance(client, dict):
            return False
        services = client.get("services", [])
        if not isinstance(services, list) or not all(isinstance(service, str) for service in services):
            return False
        if not all(_count(client.get(key, 0), int) for key in ("open_streams", "bytes_in", "bytes_out")):
            return False
    return True


def _count(value: object, kind: type) -> bool:
    """Whether a number is one the server can send: finite, not negative, below 2**63 (a 400-digit integer passed
    ``isinstance`` and then raised OverflowError, a traceback, where the table made it a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, kind)):
        return False
    return 0 <= value < 2**63  # False for NaN and Infinity too; math.isfinite(10**400) raised OverflowError


def _summary(status: int, body: str) -> str:
    """An error answer in a few words: an HTML page's title (a reverse proxy's: nginx's 502 page began with a bare
    '<html>', which was all the user saw), else the first line; without the status number said again."""
    title = re.search(r"<title>(.*?)</title>", body, re.IGNORECASE | re.DOTALL)
    text = title.group(1) if title else (body.strip().splitlines() or [""])[0]
    return " ".join(text.split()).removeprefix(str(status)).strip()[:200]
