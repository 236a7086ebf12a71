"""Build the server-only wheel of the running ``runtime`` package that exit servers install.

With it a VM installs exactly the tunnel code of this ``inletsctl`` and needs no published
package of ours. The wheel holds only what the exit server's command imports (found by
following the imports of ``runtime/``), and declares only the third-party packages those
modules import; ``constraints()`` pins them, and what they need in turn, to the versions
this installation runs, so a new upstream release cannot change what a VM boots.

User-data is capped (DigitalOcean: 64 KiB), so the wheel is made small: members are stored
uncompressed for render.py's xz to compress them as one stream, and docstrings and comments
are dropped (the VM only runs the server: its ``--help`` loses its prose).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from stat import S_ISDIR

from inlets_py import runtime
from inlets_py.runtime.core.files import temporary_beside, write_new

from .state_root import mkdir_private, read_own

DIST = "inlets-py"
#: The modules each exit server's command starts from (paths in the runtime package); the wheel holds
#: what they import. ``cli/main`` imports only the command modules that are installed, so each
#: mode's wheel carries its own server command and nothing of the other mode's.
SERVER_ROOTS = {
    "tcp": ("__main__", "cli/main", "cli/tcp_server", "cli/run/tcp_server"),
    "http": ("__main__", "cli/main", "cli/http_server", "cli/run/http_server"),
}
#: Let's Encrypt: the whole folder (its ACME client runs as a child process, ``python -m``).
LETSENCRYPT_FOLDER = "acme"
#: Folders no exit server runs, although the CLI imports them for other commands: the tunnel
#: client and ``--generate``'s unit and YAML writer.
CLIENT_FOLDERS = ("client", "generate")
_EXTRA = re.compile(r"\bextra\s*==")  # a requirement of an optional extra (a marker names it)
_EXTRA_CLAUSE = re.compile(r"\s*\band\s+extra\s*==\s*['\"][^'\"]*['\"]|\bextra\s*==\s*['\"][^'\"]*['\"]\s*(and\s*)?")


@dataclass(frozen=True)
class ServerWheel:
    """The exit server's wheel: embedded in the user-data, or sent to the VM by create."""

    filename: str
    data: bytes
    requires: tuple[str, ...] = ()  # Requires-Dist: the third-party packages its modules import

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def version() -> str:
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _package_dir() -> Path:
    return Path(runtime.__file__).resolve().parent


class _Imports(ast.NodeVisitor):
    """The imports of one module: relative ones resolved to module paths, absolute ones by top-level name.

    Imports inside functions count (a command imports what it runs there); ``if TYPE_CHECKING:``
    blocks only when asked (nothing runs them, but a reader follows them too).
    """

    def __init__(self, package_dir: Path, package: tuple[str, ...], type_checking: bool = False) -> None:
        self.type_checking = type_checking
        self.package_dir = package_dir
        self.package = package
        self.modules: set[str] = set()
        self.absolute: set[str] = set()

    def generic_visit(self, node: ast.AST) -> None:
        """Only statements hold imports: expressions (most of a module's nodes) are not walked."""
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, ()):
                if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                    self.visit(child)

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test) and not self.type_checking:
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.absolute.update(alias.name.split(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0:
            self.absolute.add((node.module or "").split(".")[0])
            return
        base = self.package[: len(self.package) - (node.level - 1)]
        target = base + tuple(node.module.split(".")) if node.module else base
        path = "/".join(target)
        if (self.package_dir / f"{path}.py").is_file():
            self.modules.add(path)
            return
        self.modules.add(f"{path}/__init__" if path else "__init__")
        for alias in node.names:  # ``from .pkg import module``
            name = f"{path}/{alias.name}" if path else alias.name
            if (self.package_dir / f"{name}.py").is_file():
                self.modules.add(name)


def _parents(module: str) -> set[str]:
    """The ``__init__`` of every package around ``module`` (Python imports them first)."""
    parts = module.split("/")[:-1]
    return {"/".join(parts[:n] + ["__init__"]) for n in range(len(parts) + 1)}


def import_graph(package_dir: Path | None = None, type_checking: bool = False) -> dict[str, tuple[set[str], set[str]]]:
    """Every module of the runtime package (``core/mux``, ``cli/__init__``, ...) -> (the package's
    modules it imports, with their packages' ``__init__``; the top-level packages it imports from outside)."""
    package_dir = package_dir or _package_dir()
    graph: dict[str, tuple[set[str], set[str]]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        module = path.relative_to(package_dir).with_suffix("").as_posix()
        parts = tuple(module.split("/"))
        visitor = _Imports(package_dir, parts[:-1], type_checking)
        visitor.visit(ast.parse(path.read_text()))
        modules = set(visitor.modules)
        for imported in visitor.modules:
            modules |= _parents(imported)
        graph[module] = (modules - {module}, visitor.absolute)
    return graph


def server_modules(mode: str, letsencrypt: bool = False) -> tuple[list[str], set[str]]:
    """The runtime modules an exit server in ``mode`` imports (``core/mux``, ...), and the top-level packages they import."""
    graph = import_graph()
    stop = set(CLIENT_FOLDERS) | (set() if letsencrypt else {LETSENCRYPT_FOLDER})
    todo = list(SERVER_ROOTS[mode])
    if letsencrypt:
        todo += [m for m in graph if m.startswith(LETSENCRYPT_FOLDER + "/")]
    own = runtime.__name__.split(".")[0]
    seen: set[str] = set()
    third_party: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name.split("/")[0] in stop:
            continue
        seen.add(name)
        modules, absolute = graph[name]
        todo += sorted(modules | _parents(name))
        third_party |= {top for top in absolute if top not in sys.stdlib_module_names and top != own}
    return sorted(seen), third_party


@functools.lru_cache(maxsize=None)
def own_requirements() -> dict[str, str]:
    """Canonical name -> this project's requirement for it (extras' markers dropped), from its metadata."""
    try:
        reqs = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, str] = {}
    for req in reqs:
        requirement, _, marker = req.partition(";")
        marker = _EXTRA_CLAUSE.sub("", marker).strip()
        out.setdefault(canonical_name(requirement), requirement.strip() + (f"; {marker}" if marker else ""))
    return out


def canonical_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement


@functools.lru_cache(maxsize=None)
def distributions_of() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def server_requirements(third_party: set[str]) -> tuple[str, ...]:
    """Requires-Dist for the imported top-level packages that are installed here (as ``pyproject.toml`` words them)."""
    found: set[str] = set()
    for top in third_party:
        found.update(canonical_name(dist) for dist in distributions_of().get(top, []))
    own = own_requirements()
    return tuple(sorted(own.get(name, name) for name in found))


def constraints(requires: tuple[str, ...]) -> tuple[str, ...]:
    """``name==version`` for each requirement and everything it needs, as installed here (extras left out)."""
    pinned: dict[str, str] = {}
    todo = [canonical_name(req) for req in requires]
    while todo:
        name = todo.pop()
        if name in pinned:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not needed here (another platform's marker): pip resolves it on the VM
        pinned[name] = dist.version
        todo += [canonical_name(req) for req in dist.requires or [] if not _EXTRA.search(req)]
    return tuple(f"{name}=={ver}" for name, ver in sorted(pinned.items()))


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def compact_source(source: str) -> str:
    """The same module without docstrings, comments or type hints (the AST round trip keeps the code).

    Type hints go from every function but typer's commands (typer reads their parameters from
    them); dataclass fields keep theirs (they are the fields). Nothing else reads them at run time.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_command(node):
            node.returns = None
            arguments = node.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]:
                if arg is not None:
                    arg.annotation = None
    return _tab_indented(ast.unparse(tree)) + "\n"


def _tab_indented(source: str) -> str:
    """``source`` (ast.unparse's, four spaces a level) with a tab a level: 0.5 KB less of xz per
    wheel, which keeps TCP mode's user-data embedded on the 64 KiB clouds. ast.unparse writes strings
    on one line (but a docstring-like one, triple-quoted), so leading spaces are only indentation;
    where a triple quote appears the parse check proves it, and anything else keeps the spaces."""
    lines = []
    for line in source.split("\n"):
        body = line.lstrip(" ")
        lines.append("\t" * ((len(line) - len(body)) // 4) + body)
    tabbed = "\n".join(lines)
    if '"""' not in source and "'''" not in source:
        return tabbed  # a string on one line only: no line starts inside one
    try:
        same = _strings(ast.parse(tabbed)) == _strings(ast.parse(source))
    except SyntaxError:
        same = False
    return tabbed if same else source


def _strings(tree: ast.AST) -> list[str]:
    """The string constants of ``tree``: the only values a change of leading whitespace can alter
    without breaking the syntax (lines inside brackets may start anywhere)."""
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _is_command(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A typer command or group callback (``@app.command(...)``, ``@app.callback()``): its parameters' hints are
    its options (without them ``inlets --version`` became an option that wants a value)."""
    return any(word in ast.unparse(decorator) for decorator in function.decorator_list
               for word in (".command", ".callback"))


def build_runtime_wheel(mode: str = "tcp", letsencrypt: bool = False) -> ServerWheel:
    """A minimal, valid wheel (PEP 427) of the ``runtime`` modules an exit server in ``mode`` runs, and the ``inlets`` script.

    Built once per process and set of sources: a build takes about a second of CPU (every module
    parsed twice and compacted), and create, the tests and the Terraform generator ask for it often. The
    compacted modules are also kept on disk (``_compacted_modules``), for the next ``inletsctl`` process."""
    return _build_runtime_wheel(mode, letsencrypt, _sources_fingerprint(_package_dir()))


def _sources_fingerprint(package_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """Each module's path, modification time and size: an edited module makes another wheel."""
    return tuple((path.as_posix(), stat.st_mtime_ns, stat.st_size)
                 for path in sorted(package_dir.rglob("*.py")) for stat in [path.stat()])


@functools.lru_cache(maxsize=8)
def _build_runtime_wheel(mode: str, letsencrypt: bool, fingerprint: tuple[tuple[str, int, int], ...]) -> ServerWheel:
    ver = version()
    dist_info = f"inlets_py-{ver}.dist-info"
    sources, third_party = _compacted_modules(mode, letsencrypt)
    requires = server_requirements(third_party)
    files: dict[str, bytes] = {}
    prefix = runtime.__name__.replace(".", "/")
    for name, source in sources.items():
        files[f"{prefix}/{name}.py"] = source.encode()
    meta = ["Metadata-Version: 2.1", f"Name: {DIST}", f"Version: {ver}", "Requires-Python: >=3.10"]
    meta += [f"Requires-Dist: {req}" for req in requires]
    files[f"{dist_info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: inletsctl\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist_info}/entry_points.txt"] = f"[console_scripts]\ninlets = {runtime.__name__}.cli.main:main\n".encode()
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return ServerWheel(f"inlets_py-{ver}-py3-none-any.whl", buffer.getvalue(), requires)


def _compacted_modules(mode: str, letsencrypt: bool) -> tuple[dict[str, str], set[str]]:
    """The server's modules, compacted, and the top-level packages they import: from the cache on disk when it was
    made from the same sources by the same Python, else made (most of a second of CPU in every ``create``, a new
    process each time) and kept there. Only one entry per mode is kept; a cache that cannot be read or written is
    passed over, and so is one another user owns or may write (or in a folder of theirs): what it holds is shipped
    to the exit server, and run there as root."""
    package_dir = _package_dir()
    key = _cache_key(package_dir, mode, letsencrypt)  # names the sources only: it is no proof of what the file holds
    path = _cache_path(mode, letsencrypt)
    usable = path is not None and _private_folder(path.parent)
    try:
        kept = json.loads(read_own(path)) if path is not None and usable else {}
        if kept.get("key") == key:
            return dict(kept["modules"]), set(kept["third_party"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    names, third_party = server_modules(mode, letsencrypt)
    modules = {name: compact_source((package_dir / f"{name}.py").read_text()) for name in names}
    if path is None or not usable:
        return modules, third_party
    partial = temporary_beside(path)
    try:
        write_new(partial, json.dumps({"key": key, "modules": modules, "third_party": sorted(third_party)}).encode())
        os.replace(partial, path)  # whole or not at all, whatever other inletsctl processes do meanwhile
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return modules, third_party


def _private_folder(folder: Path) -> bool:
    """The cache's folder, made 0700 (and the parents it needs) if missing, and made 0700 if this user's (an earlier
    inletsctl made it 0775 under umask 002); False when it cannot be, or is another user's or a link: then nothing
    in it is read, nor kept there."""
    try:
        mkdir_private(folder)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        info = os.lstat(folder)
        if not S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
        if info.st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError:
        return False
    return True


def _cache_path(mode: str, letsencrypt: bool) -> Path | None:
    """Under $XDG_CACHE_HOME, else ~/.cache (a relative $XDG_CACHE_HOME is ignored, as the XDG spec says); None
    without a home (a service's environment), where nothing is kept."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "inlets-py" / f"server-wheel-{mode}{'-letsencrypt' if letsencrypt else ''}.json"


def _cache_key(package_dir: Path, mode: str, letsencrypt: bool) -> str:
    """Every module's path and bytes, this file's (how modules are found and compacted), the Python version
    (``ast.unparse``'s output is its own) and the mode: anything else makes another wheel."""
    digest = hashlib.sha256(f"{sys.version}\0{mode}\0{letsencrypt}\0".encode())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(b"\0" + path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
