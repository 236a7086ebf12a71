"""``--generate=KIND``: the service definition of each kind, by name."""

from __future__ import annotations

from .k8s import k8s_yaml
from .flags import GenerateError
from .service import systemd_unit

KINDS = ("systemd", "k8s_yaml")


def generate(kind: str, command: list[str], argv: list[str]) -> str:
    if kind == "systemd":
        return systemd_unit(command, argv)
    if kind == "k8s_yaml":
        return k8s_yaml(command, argv)
    raise GenerateError(f"--generate must be one of {', '.join(KINDS)}, got {kind!r}")
