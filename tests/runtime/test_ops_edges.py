"""Operations at their edges, real processes: an --auto-tls CA half gone is refused (never replaced under the clients
that pin it) and its unreadable files said as such; a JSON log stays JSON to the last line; a token file holding
several tokens said so by the client and ``inlets status``; --upstream-ca/--upstream-insecure without an https://
upstream refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.process import INLETS, ROOT, inlets, one_line_error, server_args, spawn, wait_for_text
from helpers.tunnel import TlsFiles, free_port

from inlets_py.runtime.core.certs import ensure_auto_tls

NAMES = ["127.0.0.1", "localhost"]


def auto_tls_server(token_file: Path, directory: Path) -> list[str]:
    return ["tcp", "server", "--token-file", str(token_file), "--auto-tls", "--auto-tls-path", str(directory),
            "--auto-tls-san", "127.0.0.1", "--control-addr", "127.0.0.1", "--control-port", str(free_port()),
            "--data-addr", "127.0.0.1"]


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "ca.key").unlink(), "ca.crt is there but {d}/ca.key is missing: restore ca.key, or move ca.crt away"),
    (lambda d: (d / "ca.crt").unlink(), "ca.key is there but {d}/ca.crt is missing: restore ca.crt, or move ca.key away"),
    (lambda d: ((d / "ca.key").unlink(), (d / "ca.key").symlink_to(d / "not-mounted" / "ca.key")),
     "ca.key links to {d}/not-mounted/ca.key, which does not exist (a volume not mounted?)"),
], ids=["key-removed", "cert-removed", "key-dangling-link"])
def test_half_a_kept_ca_is_refused_not_replaced(tmp_path: Path, token_file: Path, break_it, message: str) -> None:
    """The CA is "reused on restart": with ca.key gone (or a link to a volume not mounted) a new CA was made over the
    ca.crt every client pins, a link replaced by a file, and each client then refused the server."""
    directory = tmp_path / "tls"
    ensure_auto_tls(directory, NAMES)
    pinned = {name: (directory / name).read_bytes() for name in ("ca.crt", "ca.key")}
    break_it(directory)
    left = {name: os.path.lexists(directory / name) for name in pinned}
    link = os.readlink(directory / "ca.key") if (directory / "ca.key").is_symlink() else None
    result = inlets(*auto_tls_server(token_file, directory), timeout=30)
    line = one_line_error(result, message.format(d=directory))
    assert "make a new CA (clients then need the new ca.crt)" in line
    assert {name: os.path.lexists(directory / name) for name in pinned} == left  # nothing made in place of the half
    for name, data in pinned.items():  # and what is left is left as it was
        path = directory / name
        if path.is_symlink():
            assert os.readlink(path) == link
        elif path.exists():
            assert path.read_bytes() == data


def test_a_folder_where_the_ca_is_kept_is_said_as_such_not_as_a_write_failure(tmp_path: Path, token_file: Path) -> None:
    directory = tmp_path / "tls"
    ensure_auto_tls(directory, NAMES)
    (directory / "ca.crt").unlink()
    (directory / "ca.crt").mkdir()
    result = inlets(*auto_tls_server(token_file, directory), timeout=30)
    line = one_line_error(result, f"{directory}/ca.crt is a directory, where --auto-tls keeps a file: move it away")
    assert "cannot write" not in line


def test_a_ca_key_this_user_cannot_read_is_said_as_a_read_failure(tmp_path: Path, token_file: Path) -> None:
    """"cannot write ca.key: permission denied: give a directory this user may write" for a key it may not read."""
    directory = tmp_path / "tls"
    ensure_auto_tls(directory, NAMES)
    (directory / "ca.key").chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads every file: run it without the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search"]
    result = subprocess.run([*prefix, *INLETS, *auto_tls_server(token_file, directory)], capture_output=True,
                            text=True, timeout=30, cwd=ROOT)
    line = one_line_error(result, f"cannot read {directory}/ca.key: permission denied: let the user that runs the "
                                  "server read it")
    assert "cannot write" not in line


def refusing_server(tmp_path: Path, tls: TlsFiles, tokens: str) -> tuple[subprocess.Popen, int]:
    """A server that takes the tokens of ``tokens`` (its file's text), started."""
    server_tokens = tmp_path / "server-tokens"
    server_tokens.write_text(tokens)
    server_tokens.chmod(0o600)
    control = free_port()
    log = tmp_path / "server.log"
    server = spawn(*server_args(control, tls, server_tokens), log=log)
    wait_for_text(log, "event=started", timeout=15)
    return server, control


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(15)


def _refused_with_a_loose_token(tmp_path: Path, tls: TlsFiles, *flags: str):
    """A client run with a token file others can read (0644) against a server that refuses its token; its result,
    that file and the server's control port (stopped by then)."""
    server, control = refusing_server(tmp_path, tls, "the-server-token-0123456789\n")
    loose = tmp_path / "client-token"
    loose.write_text("not-the-server-token-0123\n")
    loose.chmod(0o644)
    try:
        result = inlets("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(loose),
                        "--tls-ca", str(tls.ca), "--upstream", "127.0.0.1", "--ports", "80", *flags, timeout=30)
    finally:
        stop(server)
    return result, loose, control


@pytest.mark.parametrize("fmt", ["json", "JSON"])
def test_a_json_log_stays_json_to_the_fatal_error_that_ends_the_client(tmp_path: Path, tls: TlsFiles, fmt: str) -> None:
    """A 0644 token file (a Kubernetes secret mount) was warned of in plain text, and the 401 that ends the client
    too: a ``| jq`` pipeline broke, and the record of why it exited was lost. --log-format JSON was refused while
    --log-level WARNING is taken."""
    result, loose, control = _refused_with_a_loose_token(tmp_path, tls, "--log-format", fmt)
    assert result.returncode == 1, result
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line: one JSON object
    loose_warning = next(r for r in records if r.get("event") == "token_file_loose")
    assert loose_warning["level"] == "warning" and loose_warning["file"] == str(loose) and loose_warning["mode"] == "0644"
    last = records[-1]
    assert (last["level"], last["event"], last["exit_status"]) == ("error", "fatal_error", "1"), last
    assert last["error"] == "the server refused the token (HTTP 401): check --token/--token-file"
    assert "not-the-server-token" not in result.stderr
    # a bad flag is said before the log is set up: the plain one line, as ever
    bad = inlets("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(loose),
                 "--upstream", "127.0.0.1", "--ports", "80", "--log-format", fmt, "--log-level", "loud")
    one_line_error(bad, "--log-level must be debug, info, warning or error")


def test_log_level_error_hides_the_loose_token_file_warning(tmp_path: Path, tls: TlsFiles) -> None:
    result, _, _ = _refused_with_a_loose_token(tmp_path, tls, "--log-level", "ERROR")
    one_line_error(result, "inlets: error: the server refused the token (HTTP 401)", status=1)


ROTATION = "# rotation: old first\nold-token-0123456789abcdef\nnew-token-0123456789abcdef\n"


def test_a_client_given_a_rotation_file_says_it_sends_only_the_first_token(tmp_path: Path, tls: TlsFiles) -> None:
    """The README's rotation file, handed to a client once the server retired its first token: "the server refused
    the token", though the file held the one the server takes, on a line never sent."""
    server, control = refusing_server(tmp_path, tls, "new-token-0123456789abcdef\n")
    several = tmp_path / "client-tokens"
    several.write_text(ROTATION)
    several.chmod(0o600)
    try:
        result = inlets("tcp", "client", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(several),
                        "--tls-ca", str(tls.ca), "--upstream", "127.0.0.1", "--ports", "80", timeout=30)
    finally:
        stop(server)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    warned = [line for line in lines if "event=token_file_several" in line]
    assert len(warned) == 1 and f"file={several} tokens=2 sent_line=2 " in warned[0], result.stderr
    assert lines[-1] == (f"inlets: error: the server refused the first of 2 tokens in {several} (HTTP 401), the only "
                         "one sent: put the token this server takes first, or give a file holding only it")
    assert "new-token" not in result.stderr and "old-token" not in result.stderr


def test_status_given_a_rotation_file_says_it_sends_only_the_first_token(tmp_path: Path, tls: TlsFiles) -> None:
    server, control = refusing_server(tmp_path, tls, "new-token-0123456789abcdef\n")
    several = tmp_path / "client-tokens"
    several.write_text(ROTATION)
    several.chmod(0o600)
    try:
        result = inlets("status", "--url", f"wss://127.0.0.1:{control}", "--token-file", str(several),
                        "--tls-ca", str(tls.ca), timeout=30)
    finally:
        stop(server)
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        f"inlets: warning: token file {several} holds 2 tokens: only the first (line 2) is sent; give a file holding "
        "the one token the server takes",
        f"inlets: error: the server refused the first of 2 tokens in {several} (HTTP 401), the only one sent: put the "
        "token this server takes first, or give a file holding only it",
    ], result.stderr


@pytest.mark.parametrize("flags", [["--upstream-insecure"], ["--upstream-ca", "{ca}"]], ids=["insecure", "ca"])
def test_upstream_tls_flags_without_an_https_upstream_are_refused(tls: TlsFiles, token_file: Path, flags) -> None:
    """Accepted without a word while every upstream is http://, as --tls-ca with every --url ws:// is not: the user
    believed the upstream's certificate checked (or its check knowingly skipped)."""
    result = inlets("http", "client", "--url", f"ws://127.0.0.1:{free_port()}", "--token-file", str(token_file),
                    "--upstream", "a.example=http://127.0.0.1:1", "--upstream", "http://127.0.0.1:2",
                    *(flag.format(ca=tls.ca) for flag in flags), timeout=15)
    one_line_error(result, f"{flags[0]} is for an https:// upstream's certificate, and every --upstream is http:// "
                           "(no TLS): give the upstream's https:// URL, or leave the flag out")
