"""Flags as typed: none may be empty, and ``create`` refuses one its provider does not read.

A flag a provider ignores (``--supervisor`` on local, ``--region`` on ssh) would look done
while nothing happened, so it is an error naming the providers that read it; which
providers read what comes from their declarations (``PROVIDER`` in each module).
"""

from __future__ import annotations

import typer
import click
from typer.core import TyperCommand

from inlets_py.runtime.cli.options import path_flag  # noqa: F401 - the parser= of path flags, as inlets's

from .errors import UsageError
from .providers import registry

#: create's parameters only ``--provider ssh`` reads
SSH_ONLY = frozenset(("host", "ssh_port", "host_key_fingerprint", "accept_new_host_key", "known_hosts", "supervisor",
                      "remote_python", "data_addr"))
#: create's parameters every cloud reads (a cloud: a provider that sends user-data)
CLOUD_ONLY = frozenset(("access_token_file", "access_token", "api_url", "runtime_spec"))
#: create's parameters read by the providers that declare a default for them (ProviderInfo's field)
DECLARED = {"region": "region", "plan": "size", "ssh_key": "ssh_key"}


class SpellingCommand(TyperCommand):
    """Keeps the arguments as typed, so an error names a flag the way the user spelt it (``--ssh-port``, not
    ``--port``): click records only that a parameter came from the command line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["inletsctl.args"] = tuple(args)
        return super().parse_args(ctx, args)


def _spelling(opts: list[str], args: tuple[str, ...]) -> str:
    """The spelling of ``opts`` in ``args`` (the last one given, as click takes the last value); else the first."""
    given = [a.partition("=")[0] for a in args if a.partition("=")[0] in opts]
    return given[-1] if given else opts[0]


def typed(ctx: typer.Context) -> dict[str, str]:
    """The options given on the command line: parameter name -> the flag as the user typed it."""
    args: tuple[str, ...] = ctx.meta.get("inletsctl.args", ())
    return {p.name: _spelling(p.opts, args) for p in ctx.command.params if p.param_type_name == "option" and p.name
            and getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE"}


def refuse_empty(ctx: typer.Context) -> None:
    """``--flag ''`` is a mistake (an unset variable, say), never the flag's default."""
    for name, flag in typed(ctx).items():
        value = ctx.params.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]  # a repeatable flag: each one
        if any(isinstance(v, str) and not v.strip() for v in values):
            hint = f"choose one of {', '.join(registry.PROVIDERS)}" if name == "provider" else "give a value, or leave it out"
            raise UsageError(f"{flag} is empty: {hint}")


def readers(name: str) -> tuple[str, ...] | None:
    """The providers that read create's parameter ``name``; None: every provider."""
    if name in SSH_ONLY:
        return ("ssh",)
    if name in ("secret_key_file", "secret_key"):
        return ("ec2",)
    infos = [registry.info(p) for p in registry.PROVIDERS]
    if name in CLOUD_ONLY:
        return tuple(p.name for p in infos if p.user_data_limit)
    if name in DECLARED:
        return tuple(p.name for p in infos if getattr(p, DECLARED[name]))
    return None


def refuse_foreign(ctx: typer.Context, provider: str) -> None:
    """One line for a typed flag ``provider`` does not read, naming the providers that do."""
    for name, flag in typed(ctx).items():
        names = readers(name)
        if names is not None and provider not in names:
            # --port (ssh's SSH port) beside --ports: given to another provider it most likely meant the data ports
            meant = " (the SSH port); did you mean --ports (the data ports)?" if flag == "--port" else ""
            raise UsageError(f"{flag} does not apply to --provider {provider}: it is for {', '.join(names)}{meant}")
