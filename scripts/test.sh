#!/usr/bin/env bash
# The test suite: sets up .venv and the system tools, then runs pytest (arguments pass through).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/install-test-tools.sh
# Four workers on 2 cores (the tests wait on sockets, child processes and timers much of the time: with
# two, the cores sat idle a quarter of it, 634 s against 518 s with three; with three 507 s, with four
# 450 s), each test file on one of them (module fixtures such as the booted containers are made once);
# the slowest tests are listed at the end. Later options win: `bash scripts/test.sh -n 0` runs in one process.
# Python's bytecode caches, as Python writes them by default: with PYTHONDONTWRITEBYTECODE set (CI's machine sets it),
# each of the suite's ~600 inlets and inletsctl processes compiled the checkout's modules again (0.24 s of CPU to
# import a TCP server's code, 0.11 s from the cache), and each worker rewrote every test module (8 s, 3 s cached).
unset PYTHONDONTWRITEBYTECODE
exec .venv/bin/python -m pytest -n 4 --dist loadfile --durations=15 "$@"
