"""The README's commands, run as printed, so the document cannot drift from the program.

A fenced block in README.md right after a line ``<!-- readme-test: NAME -->`` (invisible
when rendered) is something a test runs or compares against: ``block(NAME)`` is its
text, ``commands(NAME)`` its command lines (``\\`` continuations joined, comment lines
dropped). A ``Shell`` runs a block the way a user pastes it into a terminal: one bash,
in a scratch folder that is also HOME, with this installation's ``inlets`` and
``inletsctl`` on PATH and nothing of the caller's inlets settings. The README's example
values that cannot work here as they are (the documentation IP 203.0.113.10, ports that
may be taken on this machine) are replaced, as whole words, by the values a test gives.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
_BLOCK = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```[\w-]*\n(.*?)^```$", re.M | re.S)
#: the caller's settings a user's fresh shell would not have
_PRIVATE = ("INLETS_", "INLETSCTL_", "XDG_", "DIGITALOCEAN_")


def blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, text in _BLOCK.findall(README.read_text()):
        assert name not in found, f"README.md marks two blocks readme-test: {name}"
        found[name] = text
    return found


def block(name: str) -> str:
    text = blocks().get(name)
    assert text is not None, f"README.md has no block marked <!-- readme-test: {name} -->"
    return text


def commands(name: str) -> list[str]:
    """The block's commands, one per item, as a shell reads them (continuations joined)."""
    joined = re.sub(r"\\\n\s*", "", block(name))
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    log: Path

    def wait_for(self, text: str, timeout: float = 20) -> str:
        """The log once it contains ``text`` (what a user watches for before the next step)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.log.read_text()
            if text in content:
                return content
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared in {self.log}:\n{self.log.read_text()}")


class Shell:
    """Runs README blocks and commands in ``folder`` (cwd and HOME), as a user would."""

    def __init__(self, folder: Path, values: dict[str, str] | None = None, path_with_inlets: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.home = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.values = values or {}
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(_PRIVATE) and not k.lower().endswith("_proxy") and k != "VIRTUAL_ENV"}
        base["HOME"] = str(folder)
        path = [p for p in base.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
        base["PATH"] = os.pathsep.join([str(BIN)] * path_with_inlets + path)
        self.env = {**base, **(env or {})}
        self._started: list[subprocess.Popen[bytes]] = []
        self._count = 0

    def substitute(self, text: str) -> str:
        for word, value in self.values.items():
            text = re.sub(rf"(?<![\w.]){re.escape(word)}(?![\w.])", value, text)
        return text

    def _spawn(self, script: str, cwd: Path | None) -> tuple[subprocess.Popen[bytes], Path]:
        self._count += 1
        log = self.folder / f"shell-{self._count}.log"
        with open(log, "wb") as out:  # a file, not a pipe: background commands keep writing to it
            proc = subprocess.Popen(["bash", "-c", f"set -e\n{script}"], cwd=cwd or self.folder, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._started.append(proc)
        return proc, log

    def run(self, text: str, timeout: float = 60, cwd: Path | None = None) -> tuple[int, str]:
        """Run a script (a README block, or a command a program printed) to its end: (status, output)."""
        proc, log = self._spawn(self.substitute(text), cwd)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not finish within {timeout} s:\n{text}\n{log.read_text()}") from None
        return code, log.read_text()

    def run_block(self, name: str, timeout: float = 60, cwd: Path | None = None) -> tuple[int, str]:
        return self.run(block(name), timeout, cwd)

    def start(self, text: str, cwd: Path | None = None) -> Started:
        """Start a script that runs until the test ends (a server, a client)."""
        return Started(*self._spawn(self.substitute(text), cwd))

    def start_block(self, name: str, cwd: Path | None = None) -> Started:
        return self.start(block(name), cwd)

    def close(self) -> None:
        """Stop everything started here (each script and its background commands share a session)."""
        for proc in self._started:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for proc in self._started:
            while time.monotonic() < deadline and _group_alive(proc.pid):
                proc.poll()
                time.sleep(0.05)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
