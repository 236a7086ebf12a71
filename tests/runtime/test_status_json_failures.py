"""`inlets status --json` prints one JSON object on every outcome: a single --url that is down or refuses the token
printed nothing on stdout (while two --url both down printed {"servers": {}, "errors": ...}), so a script's
``| jq`` read an empty document. Each failure is that object, the usual line on stderr and the same exit status."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from helpers.process import inlets, server_args, spawn, wait_port
from helpers.tunnel import TlsFiles, free_port


def failed_as_json(result: subprocess.CompletedProcess, status: int) -> dict:
    """The object printed, checked against the lines on stderr (one per error, the same words) and the exit status."""
    assert result.returncode == status, result
    document = json.loads(result.stdout)
    assert set(document) == {"servers", "errors"}, document
    lines = result.stderr.strip().splitlines()
    said = {f"inlets: error: {why}" for why in document["errors"].values()}
    assert sorted(set(lines)) == sorted(lines) == sorted(said), (lines, document)
    return document


def test_one_url_down_prints_the_object_two_urls_down_print(token_file: Path) -> None:
    down = f"wss://127.0.0.1:{free_port()}"
    one = failed_as_json(inlets("status", "--json", "--url", down, "--token-file", str(token_file),
                                "--timeout", "3"), 1)
    assert one["servers"] == {} and list(one["errors"]) == [down], one
    assert one["errors"][down].startswith("cannot reach 127.0.0.1:"), one
    other = f"wss://127.0.0.1:{free_port()}"
    two = failed_as_json(inlets("status", "--json", "--url", down, "--url", other, "--token-file", str(token_file),
                                "--timeout", "3"), 1)
    assert two["servers"] == {} and list(two["errors"]) == [down, other], two
    plain = inlets("status", "--url", down, "--token-file", str(token_file), "--timeout", "3")  # no --json: no JSON
    assert plain.returncode == 1 and plain.stdout == "" and plain.stderr.count("\n") == 1, plain


def test_a_server_that_refuses_the_token_is_under_errors(tmp_path: Path, tls: TlsFiles, token_file: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("another-token-0123456789abcdef0123456789\n")
    wrong.chmod(0o600)
    port = free_port()
    server = spawn(*server_args(port, tls, token_file), log=tmp_path / "server.log")
    try:
        wait_port(port)
        url = f"wss://127.0.0.1:{port}"
        document = failed_as_json(inlets("status", "--json", "--url", url, "--token-file", str(wrong),
                                         "--tls-ca", str(tls.ca), "--timeout", "5"), 1)
        assert list(document["errors"]) == [url] and "401" in document["errors"][url], document
        answered = inlets("status", "--json", "--url", url, "--token-file", str(token_file), "--tls-ca", str(tls.ca),
                          "--timeout", "5")
        assert answered.returncode == 0 and "clients" in json.loads(answered.stdout), answered  # success: as before
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)


def test_bad_input_prints_the_object_with_exit_status_2(tmp_path: Path, token_file: Path) -> None:
    """A flag no server can be asked with names every --url; one server's own input (its token file) names that
    one, after the servers already asked."""
    first, second = f"wss://127.0.0.1:{free_port()}", f"wss://127.0.0.1:{free_port()}"
    both = (first, second)
    for flags in (["--tls-server-name", "bad name!"], ["--proxy", ""], ["--url", first]):
        document = failed_as_json(inlets("status", "--json", "--url", first, "--url", second, *flags,
                                         "--token-file", str(token_file)), 2)
        assert document["servers"] == {} and tuple(document["errors"]) == both, (flags, document)
        assert len(set(document["errors"].values())) == 1, document
    missing = tmp_path / "missing"
    document = failed_as_json(inlets("status", "--json", "--url", first, "--url", second, "--token-file",
                                     str(token_file), "--token-file", str(missing), "--timeout", "3"), 2)
    assert tuple(document["errors"]) == both and str(missing) in document["errors"][second], document
    wrong = "http://127.0.0.1:1"
    single = failed_as_json(inlets("status", "--json", "--url", wrong, "--token-file", str(token_file)), 2)
    assert list(single["errors"]) == [wrong] and "--url must be wss://" in single["errors"][wrong], single
