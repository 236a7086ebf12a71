#!/usr/bin/env bash
# The test suite: sets up .venv and the system tools, then runs pytest (arguments pass through).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/install-test-tools.sh
exec .venv/bin/python -m pytest "$@"
