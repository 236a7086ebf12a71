"""What every ``inlets`` command does first: one-line errors, ``--generate``, logging."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

from ..core import logs
from ..core.auth import SecretOption, TokenError


def fail(message: str, status: int = 2) -> NoReturn:
    """One line on stderr, then exit; typer-free, as the process that runs a tunnel never loads typer. Once the log
    is JSON (``setup_logs``), that line is a record of it (``event=fatal_error``): a plain one broke a ``| jq``
    pipeline, and the record of why the process ended was lost. Before (bad flags) it is plain, in either format."""
    from .usage import shown

    if logs.configured() == "json":
        logging.getLogger("inlets").error("event=fatal_error error=%s exit_status=%d", logs.logfmt(shown(message)),
                                          status)
    else:
        print(f"inlets: error: {shown(message)}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def refuse_blank(value: str | None, flag: str, instead: str) -> None:
    """A flag given but blank is refused in one line, not taken as left out: ``--flag "$VAR"`` with VAR unset
    passes "", and read as no flag it silently changed what the command does (every port opened, every interface
    listened on, the proxy or the site's login dropped). ``instead`` says what to give, and what leaving it out does."""
    if value is not None and not value.strip():
        fail(f"{flag} is empty: {instead}")


def user_home() -> Path | None:
    """$HOME, else (blank or relative) the home folder of this user's passwd entry, the one OpenSSH uses; None when
    neither is an absolute path. A blank $HOME (``env HOME= ...``, some service managers) put ~ at the filesystem root:
    the CA and keys in /.local/share/inlets, inletsctl's tokens in /.config/inletsctl; a relative one under the
    current folder."""
    home = os.environ.get("HOME", "")
    if not os.path.isabs(home):
        import pwd

        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:  # a uid with no passwd entry (a container run with --user 12345)
            return None
    return Path(home) if os.path.isabs(home) else None


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/inlets, else ~/.local/share/inlets (``user_home``). A blank or relative $XDG_DATA_HOME is
    ignored, as the XDG Base Directory spec says: a relative one put the CA and keys under whatever folder the server
    started in, a blank one in a folder named by its spaces."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(base):
        return Path(base) / "inlets"
    home = user_home()
    if home is None:
        fail("no home folder to keep inlets' keys in: $HOME is not an absolute path and this user has no home in "
             "/etc/passwd; set HOME or XDG_DATA_HOME, or give --auto-tls-path (--letsencrypt-path)")
    return home / ".local" / "share" / "inlets"


def check_given_once(flags: SimpleNamespace, secrets: tuple[SecretOption, ...]) -> None:
    """Each secret of ``secrets`` given inline or as a file, not both (no file read). In the commands' ``check``, so
    ``--generate``, which would keep one and drop the other, refuses in the same line and status as the run."""
    for secret in secrets:
        attribute = secret.option.lstrip("-").replace("-", "_")  # --bearer-token: flags.bearer_token(_file)
        try:
            secret.check_given_once(getattr(flags, attribute), getattr(flags, f"{attribute}_file") or None)
        except TokenError as exc:
            fail(str(exc))


def maybe_generate(kind: str | None, command: list[str], replicas: int | None = None,
                   flags: dict[str, Any] | None = None) -> None:
    """With --generate, print the service definition for these exact flags and exit. ``flags`` (the command's
    parsed flags) go through the command's own ``check`` first: a unit that would fail at every start is
    refused now, in the words the command would use. Its files are not read: they may exist only where the
    unit will run."""
    if replicas is not None and kind != "k8s_yaml":
        fail("--replicas shapes the Kubernetes YAML: use it with --generate=k8s_yaml (to run several servers "
             "by hand, start each one and give the client one --url per server)")
    if kind is None:
        return
    if flags is not None:
        importlib.import_module(f"{__package__}.run.{'_'.join(command)}").check(SimpleNamespace(**flags))
    try:
        from ..generate.command import GenerateError
        from ..generate.command import generate as generate_service
    except ModuleNotFoundError:  # the exit server's wheel (inletsctl's) carries no generate/
        fail(f"--generate is not in this server-only install of inlets (an exit server's): run `inlets "
             f"{' '.join(command)} --generate ...` where inlets-py is installed in full (pip install . in its checkout)")

    argv = sys.argv[1 + len(command) :]
    try:
        sys.stdout.write(generate_service(kind, command, argv))
    except GenerateError as exc:
        fail(str(exc))
    raise SystemExit(0)


def check_logs(level: str, fmt: str) -> None:
    if level.lower() not in ("debug", "info", "warning", "error"):
        fail(f"--log-level must be debug, info, warning or error, got {level!r}")
    if fmt.lower() not in ("text", "json"):
        fail(f"--log-format must be text or json, got {fmt!r}")


def setup_logs(level: str, fmt: str) -> None:
    check_logs(level, fmt)
    logs.setup(level, fmt)
