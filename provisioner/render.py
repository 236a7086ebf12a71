"""Render the cloud-init user-data, systemd units and client command from ``templates/``.

Templates live in the top-level ``templates/`` folder (found by runtime/generate/templating.py, which
renders the same unit for ``inlets --generate=systemd``), installed as the package
``provisioner.templates`` so that a wheel install finds them too. No value is pasted in
as it is: this environment adds shell quoting (``| q``) for the client command and YAML
quoting (``| yaml``) for values in the user-data, and units get systemd's own quoting
(runtime/generate/systemd_quote.py).

The exit server installs the runtime from the server-only wheel of this inletsctl
(provisioner/wheel.py), its dependencies pinned by a constraints list. The wheel rides in
the user-data where it fits; elsewhere ``create`` delivers it over the control port.
"""

from __future__ import annotations

import base64
import gzip
import datetime
import functools
import json
import lzma
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from inlets_py.runtime.generate.systemd_quote import exec_command

from . import wheel_receiver
from .errors import ProvisionError
from .material import Material
from .spec import LETSENCRYPT_CA, TLS_SERVER_NAME, VM_FILES, TunnelSpec, client_upstreams, control_url, server_argv
from .wheel import ServerWheel, compact_source, constraints

if TYPE_CHECKING:
    import jinja2

SERVICE_USER = "inlets"
#: run by cloud-init on the VM: cloud-init decodes only gzip, the wheel is sent xz-compressed; the .xz
#: (~47 KB, of no use once unpacked) is removed, as it stayed beside the wheel
UNPACK_XZ = ("import lzma, os, sys; open(sys.argv[2], 'wb').write(lzma.decompress(open(sys.argv[1], 'rb').read())); "
             "os.remove(sys.argv[1])")
CONFIG_DIR = "/etc/inlets"
RECEIVER_SCRIPT = "/opt/inlets/receive-wheel.py"
#: HTTP mode with Let's Encrypt: the drop-in giving the server its state folder (scripts/gen_terraform_template.py reads it)
LETSENCRYPT_DROPIN = "inlets.service.d/letsencrypt.conf"
#: TCP mode (UDP rides it): the kernel's cap on a socket's receive buffer, raised to what the UDP ports ask
SYSCTL_FILE = "/etc/sysctl.d/30-inlets-udp.conf"
#: Go's JSON escapes (Terraform's jsonencode()) beyond Python's, so both write the same bytes
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
#: what JSON leaves raw but YAML refuses (DEL, C1 controls) or reads as a line break (NEL)
_NOT_YAML_PRINTABLE = re.compile("[\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def yaml_scalar(value: object) -> str:
    """``value`` as a YAML double-quoted scalar (JSON's escaping: a quote or a line break stays
    inside it), written as Terraform's ``jsonencode()`` writes it for the printable values
    both accept."""
    text = json.dumps(str(value), ensure_ascii=False)
    for char, escape in _GO_ESCAPES.items():
        text = text.replace(char, escape)
    return _NOT_YAML_PRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates' environment, made (and jinja2 imported) on the first render: ``inletsctl --help``,
    ``list`` and ``delete`` render nothing."""
    from inlets_py.runtime.generate.templating import new_environment

    env = new_environment()
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["yaml"] = yaml_scalar
    return env


def render(template: str, **values: object) -> str:
    return _environment().get_template(template).render(**values)


def systemd_unit(exec_argv: list[str], mode: str) -> str:
    """The unit that runs the exit server (also usable outside cloud-init)."""
    return render(
        "inlets.service.j2", mode=mode, user=SERVICE_USER, exec_start=exec_command(exec_argv), config_dir=CONFIG_DIR
    )


def udp_sysctl() -> dict[str, str]:
    """The sysctl.d file raising ``net.core.rmem_max`` to the UDP ports' burst buffer, and the runcmd line applying it
    at the first boot (systemd-sysctl reads it at every later one). The unit's user ``inlets`` is not root, so the
    kernel capped each port's 4 MiB at the image's 212,992 bytes, and a burst of 500 requests lost 243. Raised only
    (a higher value stays), and not fatal: a container's network namespace cannot set it (its host's applies)."""
    from inlets_py.runtime.core.datagram import BURST_RECEIVE_BUFFER as size  # the runtime's value: no higher

    now = f'[ "$(sysctl -n net.core.rmem_max)" -ge {size} ] 2>/dev/null'  # sysctl -p exits 0 when the kernel refused
    apply = (f'{now} || sysctl -p {SYSCTL_FILE} || true; {now} || echo "inlets: net.core.rmem_max stays under {size} '
             '(in a container only its host can raise it): bursts past a UDP port\'s smaller buffer are dropped" >&2')
    return {"path": SYSCTL_FILE, "content": render("inlets-sysctl.conf.j2", rmem_max=size), "apply": apply}


def client_command(
    spec: TunnelSpec, host: str | Sequence[str], token_file: Path | str, ca_file: Path | str, inlets: str = "inlets"
) -> str:
    """The exact, copy-pasteable client command line for an exit server at ``host``; with several
    hosts (replicas sharing one token and CA), one client connected to every one of them."""
    hosts = [host] if isinstance(host, str) else list(host)
    return render(
        "client-command.j2",
        inlets=inlets,
        mode=spec.mode,
        urls=[control_url(h, spec.control_port) for h in hosts],
        token_file=token_file,
        ca_file=ca_file,
        server_name=TLS_SERVER_NAME,
        upstreams=client_upstreams(spec),
        ports=",".join(map(str, spec.ports)) if spec.mode == "tcp" else "",
    ).strip()


@dataclass(frozen=True)
class UserDataOptions:
    name: str
    package: str  # pip requirement installed on the VM (ignored when a wheel is given)
    wheel: ServerWheel | None = None  # the server-only wheel: in the user-data, or delivered (push)
    expires_at: datetime.datetime | None = None
    limit: int = 64 * 1024  # bytes the provider accepts
    push: bool = False  # the wheel is delivered by ``create`` over the control port, not embedded
    constraints: tuple[str, ...] | None = None  # pins for the wheel's dependencies [default: as installed here]


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
        units[LETSENCRYPT_DROPIN] = render("inlets-letsencrypt.conf.j2")
    if expires:
        units["inlets-expire.service"] = render("inlets-expire.service.j2", expires_at=expires["iso"])
        units["inlets-expire.timer"] = render(
            "inlets-expire.timer.j2", expires_at=expires["iso"], on_calendar=expires["on_calendar"]
        )
    wheel = receiver = None
    pins: tuple[str, ...] = ()
    if options.wheel is not None:
        path = f"/opt/inlets/{options.wheel.filename}"
        pins = options.constraints if options.constraints is not None else constraints(options.wheel.requires)
        if options.push:
            receiver = {
                "script_path": RECEIVER_SCRIPT, "script": receiver_script(), "port": str(spec.control_port),
                "sha256": options.wheel.sha256, "wheel_path": path,
            }
        else:
            wheel = {"path": path, "xz_path": f"{path}.xz", "b64": wheel_xz_base64(options.wheel), "unpack": UNPACK_XZ}
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
        constraints=list(pins),
        wheel=wheel,
        receiver=receiver,
        package=f"/opt/inlets/{options.wheel.filename}" if options.wheel else options.package,
        expires=expires,
        sysctl=udp_sysctl() if spec.mode == "tcp" else None,  # HTTP mode opens no UDP port
        letsencrypt_ca={"path": LETSENCRYPT_CA, "pem": spec.letsencrypt.ca_pem}
        if spec.letsencrypt is not None and spec.letsencrypt.ca_pem else None,
    )
    size = len(text.encode())
    if size > options.limit:
        raise ProvisionError(f"rendered user-data is {size} bytes, over the provider's limit of {options.limit}")
    return text


#: What an embedded wheel leaves unused of the provider's limit: a user-data that fits by a few
#: bytes today would be refused after the code grows, so the wheel is sent instead.
EMBED_MARGIN = 4 * 1024


def fitting_user_data(spec: TunnelSpec, material: Material, options: UserDataOptions) -> tuple[str, bool]:
    """The user-data with the wheel embedded where it fits the provider's limit with EMBED_MARGIN to
    spare, else set up to receive it (``create`` then delivers it); and whether it must be delivered."""
    if options.wheel is None or options.push:
        return user_data(spec, material, options), options.push and options.wheel is not None
    try:
        return user_data(spec, material, replace(options, limit=options.limit - EMBED_MARGIN)), False
    except ProvisionError:
        return user_data(spec, material, replace(options, push=True)), True


#: xz for Python source: no literal-position context (lp, pb 0) suits text; ~0.5% under the default preset
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 3, "lp": 0, "pb": 0}]


def wheel_xz_base64(wheel: ServerWheel) -> str:
    """The wheel as the user-data carries it: cloud-init decodes only gzip, xz is ~15% smaller."""
    return base64.b64encode(lzma.compress(wheel.data, format=lzma.FORMAT_XZ, filters=XZ_FILTERS)).decode()


def receiver_script() -> str:
    """provisioner/wheel_receiver.py as the user-data carries it: without docstrings and comments, gzipped (mtime 0,
    so the same bytes every time, which the Terraform module's copy relies on) and base64 for ``encoding: gz+b64``.
    Plain, it took 5.3 KB of EC2's 16 KiB; gzipped, 2.6."""
    source = compact_source(Path(wheel_receiver.__file__).read_text()).encode()
    return base64.b64encode(gzip.compress(source, compresslevel=9, mtime=0)).decode()
