"""The image ``--generate=k8s_yaml`` names is one the user can make: the Containerfile's build of this checkout, by
default ``localhost/inlets-py/inlets:VERSION`` (a node's own copy: no registry serves it), or the one $INLETS_IMAGE
names. It named ``ghcr.io/inlets-py/inlets:latest``, which nothing builds or publishes: every pod ImagePullBackOff.

The build test makes the image with Buildah (overlay or vfs storage, chroot isolation: no daemon, no registry) from the
Ubuntu root file system tests/boot builds, imported as the base with python3-venv added, as Docker Hub's
python image cannot be pulled here; the Containerfile takes any such base (``--build-arg BASE``)."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from helpers.process import ROOT, inlets, one_line_error

from inlets_py.runtime import __version__

DEFAULT_IMAGE = f"localhost/inlets-py/inlets:{__version__}"
SERVER = ["tcp", "server", "--plaintext", "--allow-ports", "2222"]
DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("image-token-Zq81\n")
    return path


def _pods(text: str) -> list[dict[str, Any]]:
    """The pod templates of the YAML's Deployments and StatefulSets."""
    return [doc["spec"]["template"]["spec"] for doc in yaml.safe_load_all(text)
            if doc and doc["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("replicas", [[], ["--replicas", "2"]], ids=["deployment", "statefulset"])
def test_the_yaml_names_this_versions_build_of_the_containerfile(replicas: list[str], token_file: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INLETS_IMAGE", raising=False)
    result = inlets(*SERVER, "--token-file", str(token_file), *replicas, "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    pods = _pods(result.stdout)
    assert pods and all(pod["containers"][0]["image"] == DEFAULT_IMAGE for pod in pods), pods
    header = result.stdout.partition("\n---")[0]
    assert "docker build -f Containerfile -t REGISTRY/inlets-py/inlets:" in header, header
    assert f"docker push REGISTRY/inlets-py/inlets:{__version__}" in header, header
    assert "INLETS_IMAGE=REGISTRY/inlets-py/inlets:" in header and (ROOT / "Containerfile").is_file(), header
    notes = result.stderr.strip().splitlines()  # stdout is the YAML, redirected: the user hears of the image here
    assert len(notes) == 1 and notes[0].startswith("inlets: note: "), result.stderr
    assert DEFAULT_IMAGE in notes[0] and "Containerfile" in notes[0] and "INLETS_IMAGE" in notes[0], notes[0]


@pytest.mark.parametrize("image", [
    "registry.example.com:5000/team/inlets:0.1.0",
    "ghcr.io/someone/inlets-py/inlets@" + DIGEST,
    "[fd00::1]:5000/inlets:v1.2_rc-3",
    "inlets",  # Kubernetes takes a bare name (the runtime adds :latest): the user's choice
    "registry.example.com:5000/" + "a" * 229 + ":v1",  # a name of 255 characters, the most runtimes take
], ids=["registry-port", "digest", "ipv6-registry", "bare-name", "name-of-255"])
def test_inlets_image_names_the_image_the_pods_run(image: str, token_file: Path) -> None:
    result = inlets(*SERVER, "--token-file", str(token_file), "--replicas", "2", "--generate=k8s_yaml",
                    env={"INLETS_IMAGE": image})
    assert result.returncode == 0 and result.stderr == "", result.stderr  # named: no note
    assert all(pod["containers"][0]["image"] == image for pod in _pods(result.stdout)), result.stdout
    assert f"#   {image}\n" in result.stdout.partition("\n---")[0]


@pytest.mark.parametrize("image, says", [
    ("registry.example.com/Team/Inlets:0.1.0", "is not an image reference"),  # runtimes want the path lowercase
    ("registry.example.com/inlets:0.1.0\n", "is not an image reference"),  # a `$`-anchored match takes this one
    ("registry.example.com/inlets:0.1.0 --privileged", "is not an image reference"),
    ("https://registry.example.com/inlets:0.1.0", "is not an image reference"),
    ("registry.example.com/inlets:-1", "is not an image reference"),
    ("registry.example.com/inlets@sha256:abc", "is not an image reference"),
    ("", "$INLETS_IMAGE is set but blank"),  # INLETS_IMAGE=$UNSET_VAR: not the default without a word
    # a name (registry and path) over 255 characters: distribution/reference refuses it, the pod InvalidImageName
    ("registry.example.com:5000/" + "a" * 230 + ":v1", "is not an image reference"),
    ("localhost/" + "a" * 300 + "@" + DIGEST, "is not an image reference"),
], ids=["uppercase", "newline", "space", "url", "tag-dash", "short-digest", "blank", "name-of-256", "name-of-310"])
def test_an_image_no_runtime_could_pull_is_refused_in_one_line(image: str, says: str, token_file: Path) -> None:
    result = inlets(*SERVER, "--token-file", str(token_file), "--generate=k8s_yaml", env={"INLETS_IMAGE": image})
    line = one_line_error(result, says)
    assert "INLETS_IMAGE" in line and result.stdout == "", result.stdout


# --- the Containerfile, built ---------------------------------------------------------------------------------------

#: The host's trust store, lent to the build's pip (mounted, never a layer): an egress proxy that re-signs TLS (as
#: here) is trusted there as on this host.
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")


def _rootfs_module() -> Any:
    """tests/boot/rootfs.py, which builds and caches the Ubuntu noble root file system (its folder is no package)."""
    spec = importlib.util.spec_from_file_location("boot_rootfs", ROOT / "tests" / "boot" / "rootfs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Buildah:
    """buildah on a store of the tests' own (chroot isolation: no runtime's namespaces), beside the root file system's
    cache so the base image is made once per machine. overlay where the kernel mounts it (here: a build in 24 s, where
    vfs, copying every layer whole at each step, took 33 s alone and 54 s in the suite), else vfs."""

    def __init__(self, cache: Path, runroot: Path) -> None:
        for driver in ("overlay", "vfs"):
            self.prefix = ["buildah", "--root", str(cache / f"buildah-{driver}"), "--runroot", str(runroot),
                           "--storage-driver", driver]
            if driver == "vfs" or self._mounts():
                break

    def _mounts(self) -> bool:
        """Whether this store's driver can mount a container's file system here (overlay: not in every container)."""
        made = self("from", "--quiet", "scratch", check=False)
        if made.returncode != 0:
            return False
        container = made.stdout.strip()
        try:
            return self("mount", container, check=False).returncode == 0
        finally:
            self("umount", container, check=False)
            self("rm", container, check=False)

    def __call__(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.prefix, *argv], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"buildah {' '.join(argv[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done


def _base(buildah: Buildah, rootfs: Path, lock: Path) -> str:
    """The noble root file system as an image with python3-venv (a cloud image lacks it; the Containerfile makes a
    venv), named after the root file system's cache key: made once, under a lock, reused after."""
    name = f"localhost/inlets-tests/{rootfs.name}-venv:1"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if buildah("inspect", "--type", "image", name, check=False).returncode == 0:
            return name
        container = buildah("from", "--quiet", "scratch").stdout.strip()
        try:
            buildah("copy", "--quiet", container, f"{rootfs}/", "/", timeout=300)
            install = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                       "--no-install-recommends python3-venv >/dev/null && apt-get clean "
                       "&& rm -rf /var/lib/apt/lists/*")
            buildah("run", "--isolation", "chroot", "--network", "host", container, "--", "sh", "-ec", install,
                    timeout=600)
            buildah("commit", "--quiet", container, name, timeout=300)
        finally:
            buildah("rm", container, check=False)
    return name


@contextlib.contextmanager
def _builder() -> Iterator[tuple[Buildah, str]]:
    """Buildah and the base image; skips, saying why, where either cannot be had."""
    if os.geteuid() != 0:
        pytest.skip("building an image with buildah here needs root (no subuid mapping is set up for others)")
    if shutil.which("buildah") is None:
        pytest.skip("buildah not installed (scripts/install-test-tools.sh installs it)")
    boot = _rootfs_module()
    try:
        rootfs = boot.rootfs()
    except boot.RootfsUnavailable as exc:
        pytest.skip(f"no base image: the Ubuntu root file system of tests/boot cannot be built here: {exc}")
    cache = boot.cache_dir()
    with tempfile.TemporaryDirectory(prefix="inlets-buildah-run-") as runroot:
        buildah = Buildah(cache, Path(runroot))
        yield buildah, _base(buildah, rootfs, cache / ".buildah-base.lock")


@pytest.mark.timeout(1500)  # the first run may build the root file system (debootstrap) and the base image
def test_the_containerfile_builds_an_image_that_runs_the_pods_command_as_its_user(token_file: Path) -> None:
    result = inlets(*SERVER, "--token-file", str(token_file), "--generate=k8s_yaml", env={"INLETS_IMAGE": "x/y:1"})
    assert result.returncode == 0, result.stderr
    pod = _pods(result.stdout)[0]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    command = pod["containers"][0]["command"]
    tag = f"localhost/inlets-tests/inlets:{os.getpid()}"
    with _builder() as (buildah, base):
        mount = ["--volume", f"{CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro"] if CA_BUNDLE.is_file() else []
        try:
            buildah("bud", "--isolation", "chroot", "--network", "host", "--layers=false", *mount, "--file",
                    str(ROOT / "Containerfile"), "--build-arg", f"BASE={base}", "--tag", tag, str(ROOT), timeout=600)
            config = json.loads(buildah("inspect", "--type", "image", tag).stdout)["OCIv1"]["config"]
            assert (config["User"], config["Entrypoint"]) == (user, command), config  # `docker run IMAGE ...` too
            container = buildah("from", "--quiet", tag, timeout=300).stdout.strip()
            try:  # as the kubelet runs it: the image's user, the pod's command (with its args)
                ran = buildah("run", "--isolation", "chroot", container, "--", "sh", "-c",
                              f"id -u; id -g; {' '.join(command)} --version; {' '.join(command)} tcp server --help; "
                              "test ! -e /src && echo no-source", timeout=120)
            finally:
                buildah("rm", container, check=False)
        finally:
            buildah("rmi", "--force", tag, check=False)
    lines = ran.stdout.splitlines()
    assert lines[:3] == [*user.split(":"), f"inlets {__version__}"], ran.stdout + ran.stderr
    assert "Run a TCP tunnel server" in ran.stdout and lines[-1] == "no-source", ran.stdout + ran.stderr
