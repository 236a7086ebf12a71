"""Build a wheel of the running ``runtime`` package to embed in user-data.

With it a VM installs exactly the tunnel code of this ``inletsctl`` and needs no
published package of ours (its dependencies still come from the VM's package index).
User-data is capped (DigitalOcean: 64 KiB), so the wheel is made small: members are
stored uncompressed for render.py's xz to compress them as one stream, and docstrings
and comments are dropped (the VM only runs the server: its ``--help`` loses its prose).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import runtime

DIST = "inlets-py"
#: Modules only a Let's Encrypt server imports: in the wheel only when the exit server uses it,
#: so the default wheel still fits 64 KiB of user-data.
LETSENCRYPT_MODULES = frozenset({"acme_store.py", "acme_client.py", "letsencrypt.py", "https_front.py"})
#: Modules only a tunnel client (or `--generate`, `inlets status`) imports: an exit server runs none
#: of them, and leaving them out keeps the embedded wheel about 8 KiB (encoded) smaller.
CLIENT_MODULES = frozenset(
    {"client.py", "proxy.py", "probe.py", "generate.py", "templating.py", "tcp_client.py", "http_client.py"}
)
#: Modules only a TCP exit server imports: a Let's Encrypt server is an HTTP one, so its wheel goes without.
TCP_SERVER_MODULES = frozenset({"tcp_server.py", "udp.py"})


@dataclass(frozen=True)
class EmbeddedWheel:
    filename: str
    data: bytes


def version() -> str:
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _requirements() -> list[str]:
    try:
        reqs = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return []
    return [r for r in reqs if "extra ==" not in r]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _compact(source: str) -> str:
    """The same module without docstrings or comments (the AST round trip keeps the code)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def build_runtime_wheel(letsencrypt: bool = False) -> EmbeddedWheel:
    """A minimal, valid wheel (PEP 427) holding the server side of ``runtime/`` and the ``inlets`` script."""
    ver = version()
    dist_info = f"inlets_py-{ver}.dist-info"
    files: dict[str, bytes] = {}
    package_dir = Path(runtime.__file__).resolve().parent
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts or path.name in CLIENT_MODULES or (letsencrypt and path.name in TCP_SERVER_MODULES):
            continue
        if letsencrypt or path.name not in LETSENCRYPT_MODULES:
            source = _compact(path.read_text())
            files[f"runtime/{path.relative_to(package_dir).as_posix()}"] = source.encode()
    meta = ["Metadata-Version: 2.1", f"Name: {DIST}", f"Version: {ver}", "Requires-Python: >=3.10"]
    meta += [f"Requires-Dist: {req}" for req in _requirements()]
    files[f"{dist_info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: inletsctl\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist_info}/entry_points.txt"] = b"[console_scripts]\ninlets = runtime.cli:main\n"
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return EmbeddedWheel(f"inlets_py-{ver}-py3-none-any.whl", buffer.getvalue())
