"""The Debian root file system the boot tests start containers from, built once per machine.

debootstrap (Debian 12 from Debian's archive) with systemd, cloud-init and python3, as a
cloud image has them; about 80 s and 400 MB. It is cached outside any checkout, in
$INLETS_TEST_CACHE (default /var/cache/inlets-tests), under a name that hashes the recipe,
so later runs and other checkouts reuse it and a changed recipe builds a new one. The build
runs in a temporary folder renamed into place when complete, under a lock, so two test runs
never build it twice nor see half of it. Containers boot it read-only (--volatile=overlay).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CACHE_ENV = "INLETS_TEST_CACHE"
DEFAULT_CACHE = "/var/cache/inlets-tests"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: what a cloud image has (systemd, cloud-init, python3, sshd, sudo for the default user); python3-cffi-backend
#: is named because debootstrap does not resolve it for cloud-init's dependencies. Not python3-venv: cloud
#: images lack it, and the user-data installs it (with it here, a user-data that forgot it booted fine).
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "cloud-init", "python3", "python3-cffi-backend",
    "openssh-server", "sudo", "ca-certificates", "iproute2", "procps",
)
#: cloud-init as a cloud configures it: the NoCloud seed only, and a locale minbase has
CLOUD_CFG = "datasource_list: [NoCloud]\nlocale: C.UTF-8\n"
RECIPE = f"{SUITE} {MIRROR} {' '.join(PACKAGES)}\n{CLOUD_CFG}v1"


class RootfsUnavailable(Exception):
    """The root file system cannot be built here; the message says why (tests skip with it)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def rootfs() -> Path:
    """The cached root file system, built first when missing (under a lock, atomically)."""
    key = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    cache = cache_dir()
    final = cache / f"debian-{SUITE}-{key}"
    if (final / "etc/os-release").exists():
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / f".debian-{SUITE}-{key}.lock", "w")
    except OSError as exc:
        raise RootfsUnavailable(f"cannot use the cache folder {cache} ({exc.strerror}); set ${CACHE_ENV}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it: wait for that one
        if (final / "etc/os-release").exists():
            return final
        if shutil.which("debootstrap") is None:
            raise RootfsUnavailable("debootstrap is not installed (scripts/install-test-tools.sh installs it)")
        building = cache / f".building-{key}-{os.getpid()}"
        for stale in cache.glob(f".building-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log = cache / f"debian-{SUITE}-{key}.build.log"
        with open(log, "w") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(building), MIRROR],
                stdout=out, stderr=subprocess.STDOUT, timeout=1200,
            )
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise RootfsUnavailable(f"debootstrap failed ({tail[0]}); see {log}")
        (building / "etc/cloud/cloud.cfg.d/90-inlets-tests.cfg").write_text(CLOUD_CFG)
        (building / "etc/machine-id").write_text("")  # each boot makes its own
        os.rename(building, final)
    return final
