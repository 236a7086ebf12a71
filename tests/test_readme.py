"""The README as a newcomer follows it: every command it prints runs as printed (readme_commands
explains how a block is found and run), and what it says about the tests matches the project's files."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

from readme_commands import Shell, block


def _free_on_both(*hosts: str) -> int:
    """A port free on every loopback address given (the service's and the exit server's)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on " + ", ".join(hosts))


# ------------------------------------------------------------ inletsctl on this machine


def test_inletsctl_on_this_machine_as_printed(tmp_path: Path) -> None:
    port = _free_on_both("127.0.0.1", "127.0.0.2")
    shell = Shell(tmp_path, values={"8080": str(port)})
    name = None
    try:
        code, out = shell.run_block("inletsctl-local", timeout=90)
        assert code == 0, out
        name = re.search(r"^Exit server (\S+) is ready\.$", out, re.M)[1]  # type: ignore[index]
        client_command = re.search(r"^  (inlets tcp client .*)$", out, re.M)[1]  # type: ignore[index]
        status_command = re.search(r"^  (inlets status .*)$", out, re.M)[1]  # type: ignore[index]
        control = re.search(r"wss://127\.0\.0\.1:(\d+) ", client_command)[1]  # type: ignore[index]

        def as_the_readme_shows_it(command: str) -> str:
            return (command.replace(str(shell.home), "~").replace(name, "brave-otter-3f2a")  # type: ignore[arg-type]
                    .replace(f":{control} ", ":41421 ").replace(f"--ports {port}", "--ports 8080"))

        assert as_the_readme_shows_it(client_command) == block("inletsctl-local-client").strip()
        assert as_the_readme_shows_it(status_command) == block("inletsctl-local-status").strip()

        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "index.html").write_text("through inletsctl's exit server\n")
        shell.start(f"exec python3 -m http.server {port} --bind 127.0.0.1 --directory site")
        client = shell.start(client_command)  # as printed
        client.wait_for("event=connected")
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/", timeout=10) as answer:
            assert answer.read() == b"through inletsctl's exit server\n"

        code, status = shell.run(status_command)  # as printed
        assert code == 0 and "tcp:" + str(port) in status, status
        unpinned = shell.run(status_command.replace(" --tls-server-name inlets-exit-server", ""))
        assert unpinned[0] == 1 and unpinned[1].count("\n") == 1, unpinned
        assert "--tls-server-name inlets-exit-server" in unpinned[1], unpinned

        shell.values["brave-otter-3f2a"] = name
        code, out = shell.run_block("inletsctl-local-delete")
        assert code == 0 and f"deleted {name}" in out, out
        name = None
        log = client.wait_for("event=token_file_unreadable")  # still there, retrying, and saying why
        assert client.process.poll() is None and "Traceback" not in log
    finally:
        if name is not None:
            shell.run(f"inletsctl delete {name}")
        shell.close()
