"""``--generate=systemd|k8s_yaml``: print what runs this very command as a service.

The artifact runs exactly the flags given, minus ``--generate``, with two changes:
the token is always read from a file (never inlined in a unit or a Deployment), and
relative paths become absolute (systemd) or Secret mounts (Kubernetes).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from .ports import parse_port_list
from .templating import render

KINDS = ("systemd", "k8s_yaml")
TOKEN_PATH = "/etc/inlets/token"
K8S_SECRET_DIR = "/var/run/secrets/inlets"
#: Options whose value is a file the service must read.
FILE_OPTIONS = ("--token-file", "--tls-cert", "--tls-key", "--tls-ca", "--upstream-ca")


class GenerateError(ValueError):
    """The flags cannot be turned into a service definition; the message says why."""


def split_argv(argv: list[str]) -> list[tuple[str, str | None]]:
    """``['--a', '1', '--b=2', '--flag']`` -> ``[('--a','1'), ('--b','2'), ('--flag', None)]``."""
    pairs: list[tuple[str, str | None]] = []
    index = 0
    while index < len(argv):
        item = argv[index]
        if item.startswith("--") and "=" in item:
            name, value = item.split("=", 1)
            pairs.append((name, value))
        elif item.startswith("--") and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            pairs.append((item, argv[index + 1]))
            index += 1
        else:
            pairs.append((item, None))
        index += 1
    return pairs


def _without_generate(argv: list[str]) -> list[tuple[str, str | None]]:
    return [(name, value) for name, value in split_argv(argv) if name != "--generate"]


def _token_value(pairs: list[tuple[str, str | None]]) -> str | None:
    for name, value in pairs:
        if name == "--token":
            return value
    return None


def _name(command: list[str]) -> str:
    """inlets-tcp-server, inlets-http-client, ..."""
    return "inlets-" + "-".join(re.sub(r"[^a-z0-9]", "", part.lower()) for part in command)


def _command() -> list[str]:
    """How the service starts inlets: the ``inlets`` on PATH, the one beside this Python, or ``python -m runtime``."""
    found = shutil.which("inlets") or (str(p) if (p := Path(sys.executable).with_name("inlets")).exists() else None)
    return [found] if found else [sys.executable, "-m", "runtime"]


SERVICE_USER = "inlets"
HOME_DIRS = ("/home/", "/root/", "/run/user/")


def systemd_unit(command: list[str], argv: list[str]) -> str:
    """A unit for ``inlets <command> <argv>``, run as the system user ``inlets``.

    Files are referenced where they are (absolute paths, read-only to the service), so
    SIGHUP re-reads a rotated token file; they must be owned by ``inlets`` (0600).
    ``--token X`` becomes ``--token-file /etc/inlets/token``, for the operator to write.
    """
    pairs = _without_generate(argv)
    args: list[str] = []
    files: list[str] = []
    for name, value in pairs:
        if name == "--token":
            name, value = "--token-file", TOKEN_PATH
        if name in FILE_OPTIONS and value is not None:
            value = str(Path(value).expanduser().resolve())
            files.append(value)
        args.append(name)
        if value is not None:
            args.append(value)
    if not any(name in ("--token", "--token-file") for name, _ in pairs):  # from $INLETS_TOKEN: a file instead
        args += ["--token-file", TOKEN_PATH]
        files.append(TOKEN_PATH)
    return render(
        "inlets.service.j2",
        description=f"inlets {' '.join(command)}",
        exec_start=shlex.join([*_command(), *command, *args]),
        user=SERVICE_USER,
        mode=command[0],
        server=command[-1] == "server",
        read_only_paths=sorted({str(Path(f).parent) for f in files}),
        protect_home="read-only" if any(f.startswith(HOME_DIRS) for f in files) else "true",
        setup_hint=f"useradd --system --no-create-home {SERVICE_USER}; chown {SERVICE_USER}: {' '.join(sorted(set(files)))}; chmod 600 {' '.join(sorted(set(files)))}",
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def k8s_yaml(command: list[str], argv: list[str], image: str = "ghcr.io/inlets-py/inlets:latest") -> str:
    """A Secret (token and TLS files), a Deployment and, for servers, a Service."""
    pairs = _without_generate(argv)
    name = _name(command)
    secret: dict[str, str] = {}
    args: list[str] = [*command]
    token = _token_value(pairs) or os.environ.get("INLETS_TOKEN", "").strip() or None
    ports: list[int] = []
    for option, value in pairs:
        if option == "--token":
            continue
        if option in FILE_OPTIONS and value is not None:
            key = option.lstrip("-")
            try:
                data = Path(value).expanduser().read_bytes()
            except OSError as exc:
                raise GenerateError(f"cannot read {option} {value}: {exc.strerror or exc}") from None
            if option == "--token-file":
                token = data.decode().strip()
                continue
            secret[key] = _b64(data)
            value = f"{K8S_SECRET_DIR}/{key}"
        try:
            if option in ("--control-port", "--port") and value:
                ports += parse_port_list(value)
            if option == "--allow-ports" and value:  # TCP data ports the Service should expose
                ports += parse_port_list(value)
        except ValueError as exc:
            raise GenerateError(f"{option}: {exc}") from None
        args.append(option)
        if value is not None:
            args.append(value)
    if token is None:
        raise GenerateError("no token: give --token-file (or --token / $INLETS_TOKEN) so it goes into the Secret")
    secret["token"] = _b64(token.encode())
    args += ["--token-file", f"{K8S_SECRET_DIR}/token"]
    server = command[-1] == "server"
    if server and not ports:
        ports = [8123] + ([8000] if command[0] == "http" else [])
    elif server and command[0] == "http" and not any(o == "--port" for o, _ in pairs):
        ports.append(8000)
    elif server and not any(o == "--control-port" for o, _ in pairs):
        ports.insert(0, 8123)
    return render(
        "k8s.yaml.j2",
        name=name,
        image=image,
        args=[json.dumps(a) for a in args],
        secret=sorted(secret.items()),
        secret_dir=K8S_SECRET_DIR,
        server=server,
        ports=sorted(set(ports)),
    )


def generate(kind: str, command: list[str], argv: list[str]) -> str:
    if kind == "systemd":
        return systemd_unit(command, argv)
    if kind == "k8s_yaml":
        return k8s_yaml(command, argv)
    raise GenerateError(f"--generate must be one of {', '.join(KINDS)}, got {kind!r}")
