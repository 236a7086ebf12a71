"""Crash ``CertStore.save`` at every file-system step: a real SIGKILL, on a real file system.

Run as a script (``python crash_save.py ROOT URL DOMAIN CHAIN KEY OUT``): for step k = 1, 2, ... it copies the
store ``ROOT`` to ``OUT/k`` and forks a child that saves CHAIN and KEY there, and that kills itself with SIGKILL
just before its k-th file-system change (an open for writing, a rename, a symlink, a mkdir, a removal, a chmod),
seen through Python's audit hooks: no code of the store is patched, and nothing (no ``finally``, no buffer flush)
runs after the kill. It stops at the first k the save completes, and prints that k: ``OUT/1`` .. ``OUT/k-1`` hold
the store as each crash left it, ``OUT/k`` the store after a complete save. One process forks the children, so
the crypto library is imported once: the whole run takes well under a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

MUTATIONS = {"os.rename", "os.symlink", "os.link", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.truncate",
             "shutil.rmtree", "shutil.move", "shutil.copyfile"}
MAX_STEPS = 200  # a save takes a few dozen steps; bounded all the same


def _writes(event: str, args: tuple) -> bool:
    if event in MUTATIONS:
        return True
    if event != "open" or len(args) < 3:
        return False
    mode, flags = args[1], args[2]
    if isinstance(mode, str):  # builtins.open
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))


def _crash_at(step: int) -> None:
    count = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal count
        if _writes(event, args):
            count += 1
            if count == step:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def main(argv: list[str]) -> int:
    root, url, domain, chain_path, key_path, out = argv
    from cryptography import x509  # noqa: F401 - the store imports it on first use: here once, not in each child

    from inlets_py.runtime.acme.store import CertStore

    chain, key = Path(chain_path).read_bytes(), Path(key_path).read_bytes()
    for step in range(1, MAX_STEPS + 1):
        target = Path(out) / str(step)
        shutil.copytree(root, target, symlinks=True)
        pid = os.fork()
        if pid == 0:
            try:
                _crash_at(step)
                CertStore(target, url).save(domain, chain, key)
            except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
                os.write(2, f"step {step}: {exc!r}\n".encode())
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            continue
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            print(step)
            return 0
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
