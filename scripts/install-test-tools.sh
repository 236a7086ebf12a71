#!/usr/bin/env bash
# Installs the system tools the tests drive (real sshd, cloud-init, Prism, ...).
# Best effort: a tool that cannot be installed is reported here, and the tests
# that need it are skipped with that reason (never passed).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Logs in the checkout (setup.sh made .venv), not at fixed names in /tmp: another user's file there made the
# step report an old log, and a link planted there had root's run write through it.
logs="$root/.venv"
mkdir -p "$logs"

# systemd-container (systemd-nspawn), debootstrap and slirp4netns boot the user-data in an Ubuntu 24.04
# container (tests/boot; its root file system is cached in $INLETS_TEST_CACHE, /var/cache/inlets-tests);
# zstd unpacks Ubuntu's packages and gpgv checks the archive's signature with tests/boot/ubuntu-archive-2018.gpg
# (Debian has no package with Ubuntu's archive key, so it ships in the repository)
# haproxy: the load balancer of the high-availability tests (tests/runtime/test_ha_haproxy.py)
# prometheus: its promtool lints a real scrape, and the README's scrape_config is run by Prometheus itself
# buildah and crun build the Containerfile (tests/runtime/test_k8s_image.py): no daemon, vfs storage, chroot
# isolation, its base the boot tests' Ubuntu root file system (Docker Hub's python image cannot be pulled here)
apt_packages=(openssh-server openssh-client curl cloud-init tinyproxy dante-server nginx haproxy wrk redis-server redis-tools dnsmasq-base bind9-dnsutils pebble prometheus systemd
  systemd-container debootstrap zstd gpgv slirp4netns iproute2 util-linux buildah crun)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "install-test-tools: installing ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >"$logs/install-apt.log" 2>&1 \
      || echo "install-test-tools: apt-get failed (see $logs/install-apt.log); tests needing ${missing[*]} will skip"
  else
    echo "install-test-tools: cannot install ${missing[*]} (need root and apt-get); tests needing them will skip"
  fi
fi

# Node.js and npm run Prism. Checked by command, not package: a Node.js from elsewhere
# (NodeSource, nvm) is fine, and Debian's npm would conflict with NodeSource's nodejs.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "install-test-tools: installing nodejs npm"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm) \
      >>"$logs/install-apt.log" 2>&1 \
      || echo "install-test-tools: apt-get could not install nodejs npm (see $logs/install-apt.log); Prism tests will skip"
  else
    echo "install-test-tools: node/npm missing (need root and apt-get to install them); Prism tests will skip"
  fi
fi

# Terraform is not in Debian: the Terraform tests skip without it (README, Tests: where to get it).
command -v terraform >/dev/null || [ -x /usr/local/bin/terraform ] \
  || echo "install-test-tools: terraform not found (not in Debian: see the README's Tests section); Terraform tests will skip"

# Prism (Stoplight) serves DigitalOcean's OpenAPI spec as a validating mock for the
# provisioner tests; it goes into tools/node_modules from tools/package-lock.json.
if [ ! -x "$root/tools/node_modules/.bin/prism" ]; then
  if command -v npm >/dev/null; then
    echo "install-test-tools: installing Prism into tools/node_modules"
    (cd "$root/tools" && npm ci --no-audit --no-fund) >"$logs/install-npm.log" 2>&1 \
      || echo "install-test-tools: npm ci in tools/ failed (see $logs/install-npm.log); Prism tests will skip"
  else
    echo "install-test-tools: npm not found; the Prism (DigitalOcean spec) tests will skip"
  fi
fi
