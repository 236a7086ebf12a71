"""The ``inletsctl`` command: create, delete, list and status of exit servers.

Every error a user can cause ends as one line on stderr and a non-zero exit. Each command imports what it
runs (create, manage, status) when it runs: --help and the flag checks need only the providers' declarations.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from inlets_py.runtime.cli.durations import seconds_option
from inlets_py.runtime.cli.handoff import drop_stdout
from inlets_py.runtime.cli.options import count_option, port_option, print_version
from inlets_py.runtime.cli.usage import shown, usage_line

from . import flags, output
from .errors import ProvisionError, StatusFailed, UsageError, command_starts, finished, interrupted_status, os_words
from .providers import Credentials
from .providers.base import API_TIMEOUT
from .providers import registry
from .state import STATE_ENV, ServerState, inletsctl_command, state_root

app = typer.Typer(
    name="inletsctl",
    help="Create exit servers for inlets tunnels and print the exact client command that connects to them.",
    epilog="Start on this machine, no cloud account needed:\n\n  inletsctl create --provider local --ports 8080\n\n"
           "then run the client command it prints. `inletsctl COMMAND --help` shows each command's options and examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)



@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=print_version("inletsctl"), is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """Create exit servers for inlets tunnels and print the exact client command that connects to them."""


StateDir = Annotated[
    Optional[Path], typer.Option(parser=flags.path_flag, metavar="PATH",
                                 help=f"Where secrets and metadata are kept [default: ${STATE_ENV}, else "
                                 "$XDG_CONFIG_HOME/inletsctl (~/.config/inletsctl)].")
]
Provider = Annotated[Optional[str], typer.Option(help=registry.providers_help() + ".")]
TokenFile = Annotated[Optional[Path], typer.Option(parser=flags.path_flag, metavar="PATH", help="File holding the cloud access token (tried first); " + registry.credentials_help() + ".")]
Token = Annotated[Optional[str], typer.Option(help="Cloud access token (prefer --access-token-file or the environment).")]
ApiUrl = Annotated[Optional[str], typer.Option(help=f"Cloud API endpoint (tests, proxies, private regions) [env: {registry.api_url_help()}].")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
SecretFile = Annotated[Optional[Path], typer.Option(parser=flags.path_flag, metavar="PATH", help="ec2: file holding the secret access key (the key id goes in --access-token[-file]) [env: AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials].")]
Secret = Annotated[Optional[str], typer.Option(help="ec2: the secret access key (prefer --secret-key-file or the environment).")]
_EC2 = registry.info("ec2")
Region = Annotated[Optional[str], typer.Option(help=f"ec2: the region to look in [{registry.region_sources(_EC2)}].")]


def _creds(token_file: Optional[Path], token: Optional[str], api_url: Optional[str], **more: object) -> Credentials:
    """The credential flags, each inline secret refused when it is the next flag (``--access-token --json``): typer
    took "--json" as the cloud token, and --json was lost. As ``inlets`` refuses ``--bearer-token --rewrite-host``."""
    from inlets_py.runtime.core.auth import TokenError, refuse_left_out

    try:
        for value, flag in ((token, "--access-token"), (more.get("secret"), "--secret-key")):
            if isinstance(value, str):
                refuse_left_out(value, flag, f"{flag}-file")
    except TokenError as exc:
        raise UsageError(str(exc)) from None
    return Credentials(token_file, token, api_url, **more)  # type: ignore[arg-type]


def _api_timeout(timeout: float) -> float:
    """One API call may take API_TIMEOUT seconds, or all of --timeout when that is shorter (nan: checked later)."""
    return min(API_TIMEOUT, timeout) if timeout > 0 else API_TIMEOUT


def _ssh_options(provider: str, host: Optional[str], *rest: object) -> object:
    """The --provider ssh flags, checked (other providers refuse them: flags.refuse_foreign)."""
    if provider != "ssh":
        return None
    from .ssh_connect import SshOptions

    return SshOptions.from_flags(host, *rest)  # type: ignore[arg-type]


@app.command(cls=flags.SpellingCommand, short_help="Create an exit server and print the client command for it.",
    epilog=(
        "Examples:\n\n"
        "  inletsctl create --provider local --ports 8080\n\n"
        "  inletsctl create my-tunnel --provider digitalocean --ports 80,443 --ttl 2h\n\n"
        "  DIGITALOCEAN_ACCESS_TOKEN=... inletsctl create --provider digitalocean --mode http --domain example.com\n\n"
        "  AWS_PROFILE=work inletsctl create --provider ec2 --region eu-west-1 --ports 80,443\n\n"
        "  inletsctl create --provider ssh --host root@203.0.113.10 --ssh-key ~/.ssh/id_ed25519 --ports 80,443\n\n"
        "  HCLOUD_TOKEN=... inletsctl create --provider hetzner --mode http --domain example.com\n\n"
        "  inletsctl create ha-tunnel --provider digitalocean --ports 80,443 --replicas 2"
    )
)
def create_cmd(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="Name of the exit server [default: a random readable name].")] = None,
    provider: Provider = "local",
    mode: Annotated[str, typer.Option(help="tcp (ports) or http (domains).")] = "tcp",
    ports: Annotated[Optional[str], typer.Option(help="TCP data ports, e.g. 80,443 [default: 80,443; local: 8080].")] = None,
    domain: Annotated[Optional[list[str]], typer.Option(help="Domain served in --mode http (repeatable).")] = None,
    upstream: Annotated[Optional[str], typer.Option(help="What the printed client forwards to: a host (tcp) [127.0.0.1] or a URL (http) [http://127.0.0.1:8080].")] = None,
    http_port: Annotated[Optional[int], port_option("HTTP data-plane port [default: 80; local: 8000].")] = None,
    letsencrypt: Annotated[Optional[bool], typer.Option("--letsencrypt/--no-letsencrypt", help="http: HTTPS on 443 with Let's Encrypt certificates for each --domain, port 80 redirecting [default: on for a cloud provider with --domain on port 80]. Point the domains' DNS at the server; using it accepts the CA's terms.")] = None,
    letsencrypt_email: Annotated[Optional[str], typer.Option(help="Contact address for the Let's Encrypt account (expiry notices).")] = None,
    letsencrypt_issuer: Annotated[str, typer.Option(help="prod, staging (for trials: no rate limits, untrusted certificates) or an ACME directory URL.")] = "prod",
    letsencrypt_ca: Annotated[Optional[Path], typer.Option(parser=flags.path_flag, metavar="PATH", help="PEM bundle the server verifies a private --letsencrypt-issuer's HTTPS with (e.g. step-ca's root); copied to the server.")] = None,
    control_port: Annotated[Optional[int], port_option("Control port [default: 8123; local: a free port].")] = None,
    region: Annotated[Optional[str], typer.Option(help=f"Cloud region [{registry.region_help()}].")] = None,
    plan: Annotated[Optional[str], typer.Option(help=f"VM size [{registry.size_help()}].")] = None,
    ssh_key: Annotated[Optional[str], typer.Option(help=registry.ssh_key_help() + ".")] = None,
    access_token_file: TokenFile = None,
    access_token: Token = None,
    secret_key_file: SecretFile = None,
    secret_key: Secret = None,
    api_url: ApiUrl = None,
    host: Annotated[Optional[str], typer.Option(help="ssh: USER@HOST of the existing host to install the exit server on.")] = None,
    ssh_port: Annotated[int, port_option("ssh: SSH port of --host.", "--port", "--ssh-port")] = 22,
    host_key_fingerprint: Annotated[Optional[str], typer.Option(help="ssh: pin the host key (SHA256:... as ssh-keygen -lf prints it) instead of known_hosts.")] = None,
    accept_new_host_key: Annotated[bool, typer.Option("--accept-new-host-key", help="ssh: trust a host key not in known_hosts yet, and add it there.")] = False,
    known_hosts: Annotated[Optional[Path], typer.Option(parser=flags.path_flag, metavar="PATH", help="ssh: known_hosts file [default: ~/.ssh/known_hosts].")] = None,
    supervisor: Annotated[str, typer.Option(help="ssh: systemd, plain (a restart loop, for hosts without systemd as PID 1), or auto.")] = "auto",
    remote_python: Annotated[str, typer.Option(help="ssh: the host's Python; the exit server's venv reuses the packages it has (nothing downloaded when it has them all).")] = "python3",
    data_addr: Annotated[Optional[str], typer.Option(help="ssh: address the data ports listen on [default: all interfaces].")] = None,
    ttl: Annotated[Optional[str], typer.Option(help="Lifetime, e.g. 30m, 2h, 1d: the server stops and powers off then.")] = None,
    timeout: Annotated[float, seconds_option("Seconds to wait for the VM and its tunnel server (each API call waits 30 s at most, less when this is shorter).", 0.001)] = 600.0,
    delete_on_failure: Annotated[bool, typer.Option("--delete-on-failure", help="Delete the VM if it never comes up.")] = False,
    replicas: Annotated[int, count_option(high=registry.MAX_REPLICAS, help="Exit servers sharing one token and CA behind the cloud's load balancer (health-checked on the data ports); the printed client connects to every one [" + registry.replicas_help() + "; other providers refuse it].")] = 1,
    runtime_spec: Annotated[Optional[str], typer.Option(help="pip requirement the VM installs instead of this inletsctl's server wheel [default: the wheel, in the user-data or sent by create].")] = None,
    embed_wheel: Annotated[bool, typer.Option("--embed-wheel", hidden=True, help="Kept for old scripts: the wheel is the default now.")] = False,
    show_token: Annotated[bool, typer.Option("--show-token", help="Print the token too.")] = False,
    json_output: Json = False,
    state_dir: StateDir = None,
) -> None:
    """Create an exit server, wait until its tunnel answers, print the client command."""
    try:
        flags.refuse_empty(ctx)
        provider = registry.check(provider or "")
        flags.refuse_foreign(ctx, provider)
        from .create import CreateOptions, create, credential_flags, interrupted_when_ready
        from .replicas import check as check_replicas

        check_replicas(provider, replicas)  # before the provider's own flags are read
        opts = CreateOptions(
            provider=provider, state_root=state_root(state_dir), name=name, mode=mode, ports=ports,
            domains=list(domain or []), http_port=http_port, upstream=upstream, control_port=control_port, region=region, size=plan,
            ssh_key=ssh_key, ttl=ttl, timeout=timeout, delete_on_failure=delete_on_failure,
            runtime_spec=runtime_spec, replicas=replicas,
            letsencrypt=letsencrypt, letsencrypt_email=letsencrypt_email, letsencrypt_issuer=letsencrypt_issuer,
            letsencrypt_ca=letsencrypt_ca,
            creds=_creds(
                access_token_file, access_token, api_url, secret_file=secret_key_file, secret=secret_key, region=region,
                api_timeout=_api_timeout(timeout), ssh=_ssh_options(provider, host, ssh_port, ssh_key, host_key_fingerprint, accept_new_host_key,
                                 known_hosts, supervisor, remote_python, data_addr),
            ),
        )
        progress = output.Progress(quiet=json_output)
        try:
            summary = create(opts, progress)
        except BaseException:
            progress.close()
            raise
    except ProvisionError as exc:  # --json prints one object, as ``status --json`` does: what was known, error, state
        if json_output:
            from .errors import STATE_INVALID

            output.print_json(exc.result if isinstance(exc, StatusFailed) else {  # a flag refused before create ran
                "name": name, "provider": provider, "id": None, "ip": None, "error": str(exc), "state": STATE_INVALID})
        raise
    try:  # the server is up and recorded: a Ctrl-C while it is printed must not leave the user with nothing
        progress.close()
        token = ServerState(opts.state_root, summary["name"]).token() if show_token else None
        if json_output:
            output.print_json(summary | ({"token": token} if token else {}))
        else:
            output.print_summary(summary, token)
            if summary.get("firewall"):
                print(f"\nFirewall: {summary['firewall']}")
        sys.stdout.flush()  # a full disk is found out here, where the server it made can still be named
        finished()
    except KeyboardInterrupt as exc:
        raise interrupted_when_ready(exc, summary["name"], opts.state_root, credential_flags(opts.creds)) from None
    except BrokenPipeError:
        raise
    except OSError as exc:  # stdout on a full disk: the server is up all the same
        drop_stdout()
        raise ProvisionError(f"exit server {summary['name']!r} is ready, but its summary could not be written "
                             f"({os_words(exc)}); see its client command with: "
                             f"{inletsctl_command('status', summary['name'], opts.state_root)}"
                             f"{credential_flags(opts.creds)}") from None


@app.command(cls=flags.SpellingCommand, short_help="Delete an exit server and its local state.",
    epilog=(
        "Examples:\n\n"
        "  inletsctl delete brave-otter-3f2a\n\n"
        "  inletsctl delete --provider digitalocean --ip 203.0.113.10\n\n"
        "  inletsctl delete --provider digitalocean --id 12345678"
    )
)
def delete_cmd(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="Name of the exit server.")] = None,
    id: Annotated[Optional[str], typer.Option("--id", help="Provider id of the VM (with --provider).")] = None,
    ip: Annotated[Optional[str], typer.Option(help="Public IP of the VM (with --provider).")] = None,
    provider: Provider = None,
    access_token_file: TokenFile = None,
    access_token: Token = None,
    secret_key_file: SecretFile = None,
    secret_key: Secret = None,
    region: Region = None,
    api_url: ApiUrl = None,
    timeout: Annotated[float, seconds_option("Seconds to wait until the VM is gone (each API call waits 30 s at most, less when this is shorter).", 0.001)] = 300.0,
    state_dir: StateDir = None,
) -> None:
    """Delete an exit server, wait until it is gone, and remove its local state."""
    from . import manage

    flags.refuse_empty(ctx)
    root = state_root(state_dir)
    progress = output.Progress()
    try:
        done = manage.delete(
            root,
            _creds(access_token_file, access_token, api_url, secret_file=secret_key_file, secret=secret_key, region=region,
                   api_timeout=_api_timeout(timeout)),
            progress,
            name=name, host_id=id, ip=ip, provider_name=provider, timeout=timeout,
        )
    except KeyboardInterrupt as exc:  # it exited 130 without a word, the server perhaps half deleted
        what = repr(name) if name is not None else f"--id {id}" if id is not None else f"--ip {ip}"
        again = inletsctl_command("delete", name, root) if name is not None and provider is None else "the same delete"
        raise ProvisionError(f"interrupted while deleting {what}, which may be partly deleted: run {again} again to "
                             "finish", exit_code=interrupted_status(exc)) from None
    finally:
        progress.close()
    print(done)


@app.command(cls=flags.SpellingCommand, short_help="List exit servers, in the cloud and in local state.",
    epilog="Examples:\n\n  inletsctl list\n\n  inletsctl list --provider digitalocean --prune\n\n  inletsctl list --json"
)
def list_cmd(
    ctx: typer.Context,
    provider: Provider = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete exit servers whose --ttl has passed.")] = False,
    access_token_file: TokenFile = None,
    access_token: Token = None,
    secret_key_file: SecretFile = None,
    secret_key: Secret = None,
    region: Region = None,
    api_url: ApiUrl = None,
    json_output: Json = False,
    state_dir: StateDir = None,
) -> None:
    """List exit servers: the cloud (by tag) joined with local state, flagging one-sided ones."""
    from . import manage
    from .errors import STATE_INVALID

    notes: list[str] = []
    pruned: list[str] = []
    failed = 0
    try:
        flags.refuse_empty(ctx)
        root = state_root(state_dir)
        creds = _creds(access_token_file, access_token, api_url, secret_file=secret_key_file, secret=secret_key,
                       region=region)
        rows = manage.list_servers(root, creds, provider, notes)
        if prune:
            progress = output.Progress(quiet=json_output)
            try:
                pruned, failed = manage.prune(root, creds, rows, progress)
            finally:
                progress.close()
            rows = manage.list_servers(root, creds, provider, [])
    except ProvisionError as exc:  # --json still prints one object, as on success: --provider's cloud failed, or
        # (state "invalid", as --provider nosuch) a flag given empty, a state folder that cannot be read
        result, state = (exc.result, exc.state) if isinstance(exc, StatusFailed) else ({}, STATE_INVALID)
        if json_output:
            output.print_json({"servers": result.get("servers", []), "notes": notes, "pruned": pruned,
                               "error": str(exc), "state": state})
        raise
    if json_output:
        output.print_json({"servers": rows, "notes": notes, "pruned": pruned})
    else:
        for line in notes + pruned:
            print(line, file=sys.stderr)
        if rows:
            output.print_table(rows, ["name", "provider", "id", "ip", "mode", "status", "created", "expires", "where"])
            for row in rows:  # why a server could not be asked (an ssh host's key file, say): the table has no room
                if row.get("detail"):
                    print(f"{row['name']}: {row['status']}: {row['detail']}", file=sys.stderr)
        else:
            print("no exit servers")
    if failed:
        raise ProvisionError(f"{failed} expired exit server{'s' if failed > 1 else ''} could not be deleted (see "
                             "'could not delete' above): fix that, then run inletsctl list --prune again")


@app.command(cls=flags.SpellingCommand, short_help="Ask an exit server how it is.", epilog="Examples:\n\n  inletsctl status brave-otter-3f2a\n\n  inletsctl status brave-otter-3f2a --json")
def status_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the exit server.")],
    access_token_file: TokenFile = None,
    access_token: Token = None,
    secret_key_file: SecretFile = None,
    secret_key: Secret = None,
    region: Region = None,
    api_url: ApiUrl = None,
    json_output: Json = False,
    state_dir: StateDir = None,
) -> None:
    """Ask an exit server how it is (its /status, or /healthz where /status is missing)."""
    from .errors import STATE_INVALID
    from .status import status

    try:
        flags.refuse_empty(ctx)
        creds = _creds(access_token_file, access_token, api_url, secret_file=secret_key_file, secret=secret_key,
                       region=region)
        result = status(state_root(state_dir), creds, name)
    except ProvisionError as exc:
        if json_output:  # one object every time: what was learned, with the error and its state word (a flag given
            # empty, credentials unusable: "invalid", as list says it)
            output.print_json(exc.result if isinstance(exc, StatusFailed)
                              else {"name": name, "error": str(exc), "state": STATE_INVALID})
        raise
    replicas = result.get("replicas", [])
    if json_output:
        output.print_json(result)  # a server down too: a script reads that it is, then the exit status
    elif "error" not in result:
        _print_status(result)
    if "error" in result:
        raise ProvisionError(result["error"])
    down = [r for r in replicas if "server" not in r]  # a group serving with a replica down is degraded: as with
    if down:  # ``inlets status --url A --url B``, exit 1, so ``inletsctl status ha || alert`` sees it
        names = ", ".join(f"{r['name']} ({r['error']})" for r in down)
        print(f"inletsctl: error: {len(down)} of {len(replicas)} replicas of {name} did not answer: {names}",
              file=sys.stderr)
        raise SystemExit(1)


def _print_status(result: dict) -> None:
    from inlets_py.runtime.cli.status_view import render_holdings, render_table  # the same view as ``inlets status``

    for key in ("name", "provider", "id", "ip", "vm"):  # "vm" under the word for what its provider runs it on
        label = registry.info(result["provider"]).runs_on if key == "vm" else key
        print(f"{label:<9} {result[key]}")
    if result.get("client_command"):
        print(f"{'client':<9} {result['client_command']}")
    replicas = result.get("replicas", [])
    for replica in replicas:
        answer = "answered" if "server" in replica else replica["error"]
        print(f"{'replica':<9} {replica['name']} {replica['ip']} ({replica['vm']}; {answer})")
    if replicas:  # each replica's own clients: the first one's alone hid a client holding only another replica
        documents = {r["name"]: r["server"]["status"] for r in replicas
                     if isinstance(r.get("server", {}).get("status"), dict)}
        for replica, document in documents.items():
            print(f"\n{replica}\n{render_table(document)}")
        print()
        print(render_holdings(documents, servers=[r["name"] for r in replicas]))
        return
    server = result["server"]
    if server["endpoint"] == "/healthz":
        print(f"{'server':<9} /healthz answered {server['http_status']} {server['body']}".rstrip())
    elif isinstance(server["status"], dict):
        print()
        print(render_table(server["status"]))
    else:
        print(f"{'server':<9} /status answered {server['status']}")


# typer names commands after the functions; keep Python's builtins unshadowed.
for _command in app.registered_commands:
    _command.name = _command.callback.__name__.removesuffix("_cmd")  # type: ignore[union-attr]


def _say(line: str) -> None:
    """The error line on stderr; a stderr that cannot take it (the terminal closed: EIO) must not turn the exit
    status into 1 with a traceback (a SIGHUP's 129, a Ctrl-C's 130 are what a caller acts on)."""
    try:
        typer.echo(shown(line), err=True)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors and ProvisionErrors as one line on stderr, non-zero exit."""
    command_starts()
    try:
        status = app(args=argv, prog_name="inletsctl", standalone_mode=False)
        sys.stdout.flush()  # here, not at the interpreter's exit, so that a failed write is said below
        finished()
    except BrokenPipeError:  # `inletsctl list | head -1`: the reader wanted no more
        drop_stdout()
        sys.exit(1)
    except typer.TyperException as exc:  # click usage errors: bad flags and values
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message(), err=True)
            sys.exit(2)
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "inletsctl"
        typer.echo(shown(f"{command}: error: {usage_line(exc)} (see --help)"), err=True)
        sys.exit(2)
    except ProvisionError as exc:
        _say(f"inletsctl: error: {exc}")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort) as exc:
        sys.exit(interrupted_status(exc))
    except OSError as exc:  # the output could not be written (a full disk): one line, not a traceback
        drop_stdout()
        where = f" ({exc.filename})" if exc.filename else " writing the output"
        _say(f"inletsctl: error: {os_words(exc)}{where}: make room (or write elsewhere) and run it again")
        sys.exit(1)
    if status == 130:  # typer's status for a KeyboardInterrupt no command caught (a SIGTERM's is 143)
        status = interrupted_status()
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
