"""Render the cloud-init user-data, systemd units and client command from ``templates/``.

Templates live in the top-level ``templates/`` folder (found by runtime.templating, which
renders the same unit for ``inlets --generate=systemd``), installed as the package
``provisioner.templates`` so that a wheel install finds them too. This environment adds
shell quoting (``| q``) for the client command.
"""

from __future__ import annotations

import base64
import datetime
import lzma
import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from runtime.systemd_quote import exec_command
from runtime.templating import template_dir

from .errors import ProvisionError
from .material import Material
from .spec import TLS_SERVER_NAME, VM_FILES, TunnelSpec, client_upstreams, control_url, server_argv
from .wheel import EmbeddedWheel

SERVICE_USER = "inlets"
#: run by cloud-init on the VM: cloud-init decodes only gzip, the wheel is sent xz-compressed
UNPACK_XZ = "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.decompress(open(sys.argv[1], 'rb').read()))"
CONFIG_DIR = "/etc/inlets"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(template_dir())),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_env.filters["q"] = lambda value: shlex.quote(str(value))


def render(template: str, **values: object) -> str:
    return _env.get_template(template).render(**values)


def systemd_unit(exec_argv: list[str], mode: str) -> str:
    """The unit that runs the exit server (also usable outside cloud-init)."""
    return render(
        "inlets.service.j2", mode=mode, user=SERVICE_USER, exec_start=exec_command(exec_argv), config_dir=CONFIG_DIR
    )


def client_command(
    spec: TunnelSpec, host: str, token_file: Path | str, ca_file: Path | str, inlets: str = "inlets"
) -> str:
    """The exact, copy-pasteable client command line for an exit server at ``host``."""
    return render(
        "client-command.j2",
        inlets=inlets,
        mode=spec.mode,
        url=control_url(host, spec.control_port),
        token_file=token_file,
        ca_file=ca_file,
        server_name=TLS_SERVER_NAME,
        upstreams=client_upstreams(spec),
        ports=",".join(map(str, spec.ports)) if spec.mode == "tcp" else "",
    ).strip()


@dataclass(frozen=True)
class UserDataOptions:
    name: str
    package: str  # pip requirement installed on the VM (ignored when a wheel is embedded)
    wheel: EmbeddedWheel | None = None
    expires_at: datetime.datetime | None = None
    limit: int = 64 * 1024  # bytes the provider accepts


def user_data(spec: TunnelSpec, material: Material, options: UserDataOptions) -> str:
    """``#cloud-config`` that installs the runtime and starts it as a hardened service."""
    expires = None
    if options.expires_at is not None:
        when = options.expires_at.astimezone(datetime.timezone.utc)
        expires = {
            "iso": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "on_calendar": when.strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
    units = {"inlets.service": systemd_unit(server_argv(spec, VM_FILES), spec.mode)}
    if spec.letsencrypt is not None:  # a writable state folder for the certificates (ProtectSystem=strict)
        units["inlets.service.d/letsencrypt.conf"] = render("inlets-letsencrypt.conf.j2")
    if expires:
        units["inlets-expire.service"] = render("inlets-expire.service.j2", expires_at=expires["iso"])
        units["inlets-expire.timer"] = render(
            "inlets-expire.timer.j2", expires_at=expires["iso"], on_calendar=expires["on_calendar"]
        )
    wheel = None
    if options.wheel is not None:
        packed = lzma.compress(options.wheel.data, preset=9 | lzma.PRESET_EXTREME)  # ~15% smaller than gzip
        wheel = {
            "path": f"/opt/inlets/{options.wheel.filename}",
            "xz_path": f"/opt/inlets/{options.wheel.filename}.xz",
            "b64": base64.b64encode(packed).decode(),
            "unpack": UNPACK_XZ,
        }
    text = render(
        "user-data.yaml.j2",
        name=options.name,
        mode=spec.mode,
        user=SERVICE_USER,
        config_dir=CONFIG_DIR,
        files=VM_FILES,
        token=material.token,
        server_cert=material.server.cert.decode(),
        server_key=material.server.key.decode(),
        units=units,
        wheel=wheel,
        package=wheel["path"] if wheel else options.package,
        expires=expires,
    )
    size = len(text.encode())
    if size > options.limit:
        raise ProvisionError(
            f"rendered user-data is {size} bytes, over the provider's limit of {options.limit}"
            + (": drop --embed-wheel and install a published package" if wheel else "")
        )
    return text
