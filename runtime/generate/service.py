"""``--generate=systemd|k8s_yaml``: print what runs this very command as a service.

The artifact runs exactly the flags given, minus ``--generate``, with two changes:
every secret (the token, a site's basic-auth password or bearer token, a proxy
password) is read from a file, never inlined in a unit's command line or a
Deployment's args, whether it was given inline, as a file or in the environment; and
relative paths become absolute (systemd) or Secret mounts (Kubernetes).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from ..core.auth import SECRETS, TOKEN
from ..core.ports import parse_port
from . import reachable
from .flags import (FoundSecret, GenerateError, Pairs, environment_proxy, split_secrets, warn_of_credential_headers,
                    without_generate)
from .systemd_quote import UnitValueError, exec_command, path_value
from .templating import render

SECRET_DIR = "/etc/inlets"  # systemd: where the operator writes secrets given inline or in the environment
TOKEN_PATH = f"{SECRET_DIR}/token"
K8S_SECRET_DIR = "/var/run/secrets/inlets"
#: Options whose value is a file the service must read.
FILE_OPTIONS = ("--tls-cert", "--tls-key", "--tls-ca", "--upstream-ca", "--letsencrypt-ca",
                *(s.file_option for s in SECRETS))
#: Of those, certificates: no secret, so the setup line leaves one the unit's user can read already as it is.
#: Handing it over with chmod 600 made a shared one, such as /etc/ssl/certs/ca-certificates.crt, unreadable to
#: every other user of the host (their TLS checks failed); the service only needs to read it.
PUBLIC_FILE_OPTIONS = ("--tls-cert", "--tls-ca", "--upstream-ca", "--letsencrypt-ca")
#: Options whose value is a folder the service writes (its certificates). ProtectSystem=strict leaves only the
#: StateDirectory writable, so without a ReadWritePaths= of its own such a server failed at every start.
WRITTEN_DIR_OPTIONS = ("--auto-tls-path", "--letsencrypt-path")

#: ``python -m`` this package runs ``inlets`` (runtime/__main__.py).
RUNTIME_PACKAGE = __name__.rsplit(".", 2)[0]


def name_of(command: list[str]) -> str:
    """inlets-tcp-server, inlets-http-client, ..."""
    return "inlets-" + "-".join(re.sub(r"[^a-z0-9]", "", part.lower()) for part in command)


def _command() -> list[str]:
    """How the service starts inlets: the ``inlets`` beside this Python (the installation running now), else the one
    on PATH, else ``python -m`` the runtime package. PATH's came first: ``/opt/inlets/bin/inlets ... --generate``
    wrote another installation (an older one, or one its user cannot reach) into the unit."""
    beside = Path(sys.executable).with_name("inlets")
    found = str(beside) if beside.exists() else shutil.which("inlets")
    return [found] if found else [sys.executable, "-m", RUNTIME_PACKAGE]


SERVICE_USER = "inlets"
HOME_DIRS = ("/home/", "/root/", "/run/user/")
#: hidden from the service by the unit's own PrivateTmp=true (templates/inlets.service.j2)
PRIVATE_TMP_DIRS = ("/tmp/", "/var/tmp/")


def _runtime_paths(command: list[str]) -> list[str]:
    """What the unit runs: the command, the Python a script of it names and this one (a venv's is often a link
    into a pyenv elsewhere), the environment and the Python installation under it (its standard library), and
    this package (the checkout, if editable)."""
    python = [p for p in (reachable.interpreter(command[0]), sys.executable) if p]
    paths = [command[0], *python, sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parent)]
    return list(dict.fromkeys(paths))


def _check_not_private_tmp(runtime: list[str], files: list[tuple[str, str]]) -> None:
    """Refuse a unit that could not start: PrivateTmp=true gives the service an empty /tmp of its own."""
    for option, path in [("", p) for p in runtime] + files:
        hidden = next((p for p in (path, os.path.realpath(path)) if (p + "/").startswith(PRIVATE_TMP_DIRS)), None)
        if hidden is None:
            continue
        top = next(d for d in PRIVATE_TMP_DIRS if (hidden + "/").startswith(d)).rstrip("/")
        if not option:
            raise GenerateError(
                f"this inlets runs from {hidden}, under {top}, which the unit's PrivateTmp=true hides from the "
                "service: install it elsewhere (python3 -m venv /opt/inlets && /opt/inlets/bin/pip install .) "
                "and run /opt/inlets/bin/inlets ... --generate=systemd"
            )
        raise GenerateError(f"{option} {path} is under {top}, which the unit's PrivateTmp=true hides from the "
                            f"service: keep it elsewhere (e.g. {SECRET_DIR}/) and give that path")


def _check_reachable(runtime: list[str], files: list[tuple[str, str]], dirs: list[tuple[str, str]]) -> None:
    """Refuse a unit its user could not start: a folder it cannot enter on the way to what it runs or reads failed
    every start with "Permission denied" (see reachable.py). The files and folders the setup line hands to the
    user need only their way in; what this inlets runs must itself be readable (and a program runnable) by it."""
    for path in runtime:
        if found := reachable.blocked(path, SERVICE_USER, reachable.READ | reachable.EXECUTE):  # run, or list and enter
            raise GenerateError(
                f"this inlets needs {found.named()}, but {found.reason(SERVICE_USER)}: install inlets where every "
                "user can read it, with a Python every user can run (e.g. /usr/bin/python3 -m venv /opt/inlets && "
                "/opt/inlets/bin/pip install .), and run /opt/inlets/bin/inlets ... --generate=systemd"
            )
    for option, path in files + dirs:
        if not (found := reachable.blocked(path, SERVICE_USER)):
            continue
        if (option, path) in dirs:
            fix = (f"leave {option} out (the unit keeps its certificates in its StateDirectory, /var/lib/inlets) "
                   f"or give a folder user {SERVICE_USER} can enter")
        else:
            fix = (f"keep it in a folder user {SERVICE_USER} can enter (e.g. {SECRET_DIR}/, 0750 root:{SERVICE_USER}) "
                   "and give that path")
        raise GenerateError(f"{option} {found.named()}: {found.reason(SERVICE_USER)}: {fix}")


def systemd_unit(command: list[str], argv: list[str]) -> str:
    """A unit for ``inlets <command> <argv>``, run as the system user ``inlets``.

    Files are referenced where they are (absolute paths, read-only to the service), so
    SIGHUP re-reads a rotated token file; they must be owned by ``inlets`` (0600). A
    secret given inline or in the environment becomes a file in /etc/inlets for the
    operator to write: ``--token X`` becomes ``--token-file /etc/inlets/token``.
    """
    pairs, secrets = split_secrets(command, environment_proxy(command, without_generate(command, argv)))
    if not any(found.secret is TOKEN for found in secrets):  # none given here: the operator writes the file
        secrets.append(FoundSecret(TOKEN, None, None))
    for found in secrets:  # a secret given inline or in the environment: a file in /etc/inlets for the operator
        pairs.append((found.option, found.file or f"{SECRET_DIR}/{found.key}"))
    to_write = [f"{SECRET_DIR}/{found.key}" for found in secrets if found.file is None]
    args: list[str] = []
    named_files: list[tuple[str, str]] = []
    written_dirs: list[tuple[str, str]] = []
    for name, value in pairs:
        if name in FILE_OPTIONS and value is not None:  # absolute, a link kept: certbot's live/ links move on renewal
            if value.strip() in ("", "."):  # made absolute, the current folder: the unit failed at every start
                raise GenerateError(f"{name} is empty: give the file's path")
            value = os.path.abspath(Path(value).expanduser())
            named_files.append((name, value))
        elif name in WRITTEN_DIR_OPTIONS and value:
            value = str(Path(value).expanduser().resolve())
            written_dirs.append((name, value))
        args.append(name)
        if value is not None:
            args.append(value)
    inlets = _command()
    runtime = _runtime_paths(inlets)
    files = [path for _, path in named_files]
    real_files = [real for f in files if (real := os.path.realpath(f)) != f]  # a link's target: read there too
    dirs = [path for _, path in written_dirs]
    needed = runtime + files + dirs + [os.path.realpath(p) for p in runtime + files + dirs]
    try:  # systemd's quoting and escaping: no value can add a directive or expand a specifier
        exec_start = exec_command([*inlets, *command, *args])
        _check_line_length(f"ExecStart={exec_start}")
        for file in files:  # named in the setup hint's comment line too; checked first, so an error names the file
            path_value(file)
        # a folder it both reads and writes is only a ReadWritePaths=: given both, systemd keeps the read-only one
        # (namespace.c drop_duplicates: "the more restrictive mode" wins), and --auto-tls failed at every start
        read_only_paths = sorted({path_value(str(Path(f).parent), optional=True) for f in files + real_files
                                  if str(Path(f).parent) not in dirs})
        read_write_paths = sorted({path_value(d) for d in dirs})  # made by the setup hint; a missing one fails the start
    except UnitValueError as exc:
        raise GenerateError(f"cannot write a systemd unit: {exc}") from None
    _check_not_private_tmp(runtime, named_files + written_dirs)  # after quoting: a path with a line break is refused above
    _check_reachable(runtime, named_files, written_dirs)
    handed = [path for option, path in named_files if not _readable_certificate(option, path)]
    unit = render(
        "inlets.service.j2",
        description=f"inlets {' '.join(command)}",
        exec_start=exec_start,
        user=SERVICE_USER,
        mode=command[0],
        binds_below_1024=_binds_below_1024(command, pairs),
        read_only_paths=read_only_paths,
        read_write_paths=read_write_paths,
        protect_home=_protect_home(needed, dirs),
        setup_hint=_setup_hint(handed, dirs, to_write),
    )
    warn_of_credential_headers(pairs, "the unit's ExecStart, which every user of this host can read (systemctl show, "
                               "ps)")
    if to_write:  # stdout is the unit, redirected to a file: only stderr reaches the user now
        print(f"inlets: write these secrets, each on the first line of its file, once the unit's setup comment has "
              f"made them 0600: {', '.join(to_write)}", file=sys.stderr)
    return unit


#: systemd reads no unit-file line of this many bytes or more (LONG_LINE_MAX): the whole unit then fails to load
LONG_LINE_MAX = 1 << 20


def _check_line_length(line: str) -> None:
    """A line too long for systemd was written without a word, and the unit never loaded ("No buffer space
    available"), though the command itself ran with the same flags."""
    size = len(line.encode("utf-8", "surrogateescape"))
    if size >= LONG_LINE_MAX:
        raise UnitValueError(f"its {line.partition('=')[0]}= line would be {size} bytes, and systemd loads no unit "
                             f"with a line of {LONG_LINE_MAX} bytes or more (a % or $ is written twice there): give "
                             "fewer or shorter flag values")


def _binds_below_1024(command: list[str], pairs: Pairs) -> bool:
    """May the service bind a port under 1024, the one use of its CAP_NET_BIND_SERVICE (else it gets none)?

    A client: its ``--local 443:HOST:PORT`` (without the right its unit failed at every start with "cannot listen on
    127.0.0.1:443 for --local: Permission denied"). A server: its --control-port; a TCP server's data ports, which a
    client names, so any port unless --allow-ports lists them; an HTTP server's --port and, with --letsencrypt-domain,
    --https-port, whose defaults there are 80 and 443 (the others' defaults, 8123 and 8000, need no right)."""
    given = dict(pairs)  # the last of a repeated flag, as the command takes it
    if command[-1] != "server":
        texts = [value.partition(":")[0] for option, value in pairs if option == "--local" and value]
    elif command[0] == "tcp" and given.get("--allow-ports") is None:
        return True
    elif command[0] == "tcp":
        texts = [given.get("--control-port") or "8123", *given["--allow-ports"].split(",")]  # type: ignore[union-attr]
    else:
        letsencrypt = "--letsencrypt-domain" in given
        texts = [given.get("--control-port") or "8123", given.get("--port") or ("80" if letsencrypt else "8000")]
        if letsencrypt:
            texts.append(given.get("--https-port") or "443")
    return any(port is None or port < 1024 for port in (parse_port(text.strip()) for text in texts if text.strip()))


def _readable_certificate(option: str, path: str) -> bool:
    """A certificate the unit's user can read now: the setup line leaves it alone (see PUBLIC_FILE_OPTIONS)."""
    return option in PUBLIC_FILE_OPTIONS and os.path.isfile(path) and not reachable.blocked(
        path, SERVICE_USER, reachable.READ)


def _protect_home(needed: list[str], dirs: list[str]) -> str:
    """ProtectHome= that hides nothing the service needs: it writes ``dirs``, reads the rest."""
    if any((p + "/").startswith(HOME_DIRS) for p in dirs + [os.path.realpath(d) for d in dirs]):
        return "false"  # ReadWritePaths= cannot undo ProtectHome=read-only
    return "read-only" if any((p + "/").startswith(HOME_DIRS) for p in needed) else "true"


def _setup_hint(files: list[str], dirs: list[str] | None = None, made: list[str] | None = None) -> str:
    """The shell line that makes the service user and hands it the files (and the folders it writes), each path
    shell-quoted so the line can be pasted as it is. It lands in a comment, which systemd ignores whole (no %
    specifiers there), and path_value has refused line breaks, quotes and backslashes in these paths already.

    ``made``: the files of secrets given inline or in the environment, which nobody has written yet: the line makes
    them empty before handing them over (its chown failed on them), so each secret goes into a file already 0600.
    Made 0600 from the start (umask 077; ``touch`` keeps a secret already there) in a folder only root and the service
    enter: ``touch`` under umask 022 made each 0644 in a 0755 folder, and a user who opened one before the chmod
    kept reading what went into it."""
    hint = f"useradd --system --user-group --no-create-home {SERVICE_USER}"
    if made:
        hint += (f"; install -d -m 0750 -o root -g {SERVICE_USER} {SECRET_DIR}"
                 f"; (umask 077 && touch {shlex.join(made)})")
    if files:  # a certificate its user can read already is not among them
        paths = shlex.join(sorted(set(files)))
        hint += f"; chown {SERVICE_USER}: {paths}; chmod 600 {paths}"
    if dirs:
        folders = shlex.join(sorted(set(dirs)))
        hint += f"; mkdir -p {folders}; chown {SERVICE_USER}: {folders}; chmod 700 {folders}"
    return hint
