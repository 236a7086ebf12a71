#!/usr/bin/env bash
# Creates .venv with the project and its test extras (idempotent). Sourced by demo.sh and test.sh.
# The first run installs for about a minute: it says so before and after, and keeps pip's
# output in .venv/install.log (shown only when the install fails). Later runs print nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing inlets-py and its test dependencies into .venv (first run: about a minute)"
  started=$SECONDS
  if [ ! -w . ]; then
    echo "setup: cannot write in $root (.venv goes there): run it as the user who owns the checkout, or clone it anew" >&2
    exit 1
  fi
  # a .venv cut short (no venv module, as Debian without python3-venv; a Ctrl-C) has no pip: made again, not reused
  if ! { [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; }; then
    rm -rf .venv
    python3 -m venv .venv || { rm -rf .venv; exit 1; }
  fi
  if ! { .venv/bin/python -m pip install -q --upgrade pip \
         && .venv/bin/python -m pip install -q -e '.[test]'; } >.venv/install.log 2>&1; then
    tail -n 20 .venv/install.log >&2
    echo "setup: pip install failed: the lines above are the end of $root/.venv/install.log" >&2
    exit 1
  fi
  touch "$stamp"
  echo "setup: .venv ready in $((SECONDS - started)) s (inlets and inletsctl are in .venv/bin: source .venv/bin/activate)"
fi
