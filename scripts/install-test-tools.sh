#!/usr/bin/env bash
# Installs the system tools the tests drive (real sshd, cloud-init, Prism, ...).
# Best effort: a tool that cannot be installed is reported here, and the tests
# that need it are skipped with that reason (never passed).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

apt_packages=(openssh-server openssh-client curl)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "install-test-tools: installing ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >/tmp/inlets-apt.log 2>&1 \
      || echo "install-test-tools: apt-get failed (see /tmp/inlets-apt.log); tests needing ${missing[*]} will skip"
  else
    echo "install-test-tools: cannot install ${missing[*]} (need root and apt-get); tests needing them will skip"
  fi
fi
