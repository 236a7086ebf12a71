"""The Ubuntu root file system the boot tests start containers from, built once per machine.

Ubuntu 24.04 LTS (noble), the image every provider's ``create`` boots by default, made by
debootstrap from Ubuntu's archive with what the tests rely on of a cloud image: systemd,
cloud-init, python3, sshd and sudo, and apt pointed at noble, noble-updates and
noble-security as a cloud image has it. The archive's signing key ships beside this file
(ubuntu-archive-2018.gpg, checked against its fingerprint before use): Debian has no
package with it. Cached outside any checkout, in $INLETS_TEST_CACHE (default
/var/cache/inlets-tests), under a name that hashes the recipe, so later runs and other
checkouts reuse it and a changed recipe builds a new one. The build runs in a temporary
folder renamed into place when complete, under a lock, so two test runs never build it
twice nor see half of it. Containers boot it read-only (--volatile=overlay).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE_ENV = "INLETS_TEST_CACHE"
DEFAULT_CACHE = "/var/cache/inlets-tests"
SUITE = "noble"
MIRROR = "http://archive.ubuntu.com/ubuntu"
SECURITY_MIRROR = "http://security.ubuntu.com/ubuntu"
#: Ubuntu Archive Automatic Signing Key (2018), which signs noble's Release files
KEYRING = Path(__file__).with_name("ubuntu-archive-2018.gpg")
KEY_FINGERPRINT = "F6ECB3762474EDA9D21B7022871920D1991BC93C"
#: debootstrap's script for Ubuntu suites; debootstrap releases older than noble lack the name "noble"
SCRIPTS = Path(os.environ.get("DEBOOTSTRAP_DIR") or "/usr/share/debootstrap") / "scripts"
#: what a cloud image has that the tests rely on (systemd, cloud-init, python3, sshd, sudo for the default
#: user, apt's keys; lsb-release and locales, without which cloud-init writes apt sources for the suite
#: "UNAVAILABLE" and runs apt-get install before the user-data's package_update); python3-cffi-backend is named because debootstrap does not resolve it for cloud-init's
#: dependencies. Not python3-venv: cloud images lack it, and the user-data installs it (with it here, a
#: user-data that forgot it booted fine).
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "cloud-init", "python3", "python3-cffi-backend",
    "openssh-server", "sudo", "ca-certificates", "iproute2", "procps", "ubuntu-keyring",
    "lsb-release", "locales",
)
#: cloud-init as a cloud configures it: the NoCloud seed only, and a locale minbase has
CLOUD_CFG = "datasource_list: [NoCloud]\nlocale: C.UTF-8\n"
#: apt's sources as a noble cloud image has them (deb822), so the user-data's packages install from noble-updates
SOURCES = (
    f"Types: deb\nURIs: {MIRROR}\nSuites: {SUITE} {SUITE}-updates {SUITE}-backports\n"
    "Components: main restricted universe multiverse\nSigned-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n\n"
    f"Types: deb\nURIs: {SECURITY_MIRROR}\nSuites: {SUITE}-security\n"
    "Components: main restricted universe multiverse\nSigned-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n"
)
RECIPE = f"{SUITE} {MIRROR} {' '.join(PACKAGES)}\n{CLOUD_CFG}{SOURCES}{KEY_FINGERPRINT} dist-upgrade\nv2"


class RootfsUnavailable(Exception):
    """The root file system cannot be built here; the message says why (tests skip with it)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _build_tools() -> Path:
    """debootstrap's script for noble, once the tools the build needs are here; else RootfsUnavailable."""
    missing = [tool for tool in ("debootstrap", "zstd", "gpgv") if shutil.which(tool) is None]
    if missing:  # zstd: Ubuntu's packages are compressed with it; gpgv: checks the archive's signature
        raise RootfsUnavailable(f"{', '.join(missing)} not installed (scripts/install-test-tools.sh installs them)")
    script = next((SCRIPTS / name for name in (SUITE, "gutsy") if (SCRIPTS / name).exists()), None)
    if script is None:
        raise RootfsUnavailable(f"debootstrap has no script for Ubuntu in {SCRIPTS}; reinstall debootstrap")
    if shutil.which("gpg") is not None:
        with tempfile.TemporaryDirectory() as home:
            listed = subprocess.run(["gpg", "--batch", "--no-default-keyring", "--keyring", str(KEYRING),
                                     "--with-colons", "--list-keys"], capture_output=True, text=True, timeout=30,
                                    env={**os.environ, "GNUPGHOME": home}).stdout
    else:
        listed = f":{KEY_FINGERPRINT}:"  # debootstrap's gpgv still checks every signature with the key
    if f":{KEY_FINGERPRINT}:" not in listed:
        raise RootfsUnavailable(f"{KEYRING} is not Ubuntu's archive key {KEY_FINGERPRINT}; restore it from git")
    return script


def rootfs() -> Path:
    """The cached root file system, built first when missing (under a lock, atomically)."""
    key = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    cache = cache_dir()
    final = cache / f"ubuntu-{SUITE}-{key}"
    if (final / "etc/os-release").exists():
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / f".ubuntu-{SUITE}-{key}.lock", "w")
    except OSError as exc:
        raise RootfsUnavailable(f"cannot use the cache folder {cache} ({exc.strerror}); set ${CACHE_ENV}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it: wait for that one
        if (final / "etc/os-release").exists():
            return final
        script = _build_tools()
        building = cache / f".building-{key}-{os.getpid()}"
        for stale in cache.glob(f".building-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log = cache / f"ubuntu-{SUITE}-{key}.build.log"
        with open(log, "w") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--keyring={KEYRING}", f"--include={','.join(PACKAGES)}",
                 SUITE, str(building), MIRROR, str(script)],
                stdout=out, stderr=subprocess.STDOUT, timeout=1200,
            )
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise RootfsUnavailable(f"debootstrap failed ({tail[0]}); see {log}")
        (building / "etc/apt/sources.list").write_text("# Ubuntu sources have moved to /etc/apt/sources.list.d/ubuntu.sources\n")
        (building / "etc/apt/sources.list.d/ubuntu.sources").write_text(SOURCES)
        if not _upgrade(building, log):
            shutil.rmtree(building, ignore_errors=True)
            raise RootfsUnavailable(f"apt-get could not bring {SUITE} up to {SUITE}-updates; see {log}")
        (building / "etc/cloud/cloud.cfg.d/90-inlets-tests.cfg").write_text(CLOUD_CFG)
        (building / "etc/machine-id").write_text("")  # each boot makes its own
        os.rename(building, final)
    return final


def _upgrade(building: Path, log: Path) -> bool:
    """The packages brought up to noble-updates and noble-security, as a cloud image is released with them
    (debootstrap installs noble's release: cloud-init 24.1, where noble-updates had 26.2 when this was written)."""
    resolv = building / "etc/resolv.conf"
    kept = resolv.read_bytes() if resolv.is_file() else b""
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    with open(log, "a") as out:
        for argv in (["apt-get", "update"], ["apt-get", "-y", "--no-install-recommends", "dist-upgrade"],
                     ["apt-get", "clean"]):
            if subprocess.run(["chroot", str(building), *argv], stdout=out, stderr=subprocess.STDOUT, env=env,
                              timeout=1200).returncode != 0:
                return False
    resolv.write_bytes(kept)  # the containers bind their own resolver onto it
    for index in (building / "var/lib/apt/lists").glob("*_*"):
        index.unlink()  # as in a cloud image, whose user-data's package_update fetches fresh ones
    return True
