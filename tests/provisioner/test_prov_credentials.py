"""Cloud tokens from files, flags and the environment: checked where they are read, in words, never printed."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from helpers.prov_cloud_recorded import Answer, RecordedAPI
from helpers.prov_support import one_line_error, run_cli

TOKEN = "dop_v1_" + "0123456789abcdef" * 4


@pytest.fixture
def api() -> Iterator[RecordedAPI]:
    server = RecordedAPI()
    server.route("GET", "/v2/droplets", Answer(200, {"droplets": [], "links": {}}))
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DIGITALOCEAN_ACCESS_TOKEN", "INLETS_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def _list(capsys, api: RecordedAPI, tmp_path: Path, *creds: str):
    return run_cli(capsys, "list", "--provider", "digitalocean", "--api-url", api.url, *creds,
                   "--state-dir", str(tmp_path / "state"))


def _file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe\x00t", "is not text (UTF-8): put the token in it, on one line"),
    (b"", "is empty: put the token in it (one line), or give it with --access-token or $DIGITALOCEAN_ACCESS_TOKEN"),
    (b" \n\n", "is empty: put the token in it"),
], ids=["binary", "empty", "blank"])
def test_a_token_file_that_holds_no_token_says_what_to_do(content: bytes, says: str, api: RecordedAPI, tmp_path: Path,
                                                         capsys) -> None:
    path = _file(tmp_path, content)
    line = one_line_error(_list(capsys, api, tmp_path, "--access-token-file", str(path)), f"access token file {path} {says}")
    assert "Error" not in line.split("error:", 1)[1] and not api.seen, line


def test_a_missing_token_file_says_what_to_do(api: RecordedAPI, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    one_line_error(_list(capsys, api, tmp_path, "--access-token-file", str(missing)),
                   f"access token file not found: {missing}; check the path, or give the token with --access-token "
                   "or $DIGITALOCEAN_ACCESS_TOKEN")


@pytest.mark.parametrize("token", ["токен", "SECRET\rX", "two words", "tab\there", "ü" * 3 + "€"])
@pytest.mark.parametrize("source", ["file", "flag", "env"])
def test_a_token_no_http_header_can_carry_is_refused_before_anything_is_sent(
        token: str, source: str, api: RecordedAPI, tmp_path: Path, capsys, monkeypatch) -> None:
    where = {"file": f"--access-token-file {tmp_path / 'token'}", "flag": "--access-token",
             "env": "$DIGITALOCEAN_ACCESS_TOKEN"}[source]
    if source == "file":
        creds = ["--access-token-file", str(_file(tmp_path, token.encode() + b"\n"))]
    elif source == "flag":
        creds = ["--access-token", token]
    else:
        creds = []
        monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", token)
    result = _list(capsys, api, tmp_path, *creds)
    one_line_error(result, f"the token from {where} holds characters a token cannot have (spaces, control characters "
                           "or letters outside ASCII): check it")
    assert token.strip() not in result.err + result.out and not api.seen


@pytest.mark.parametrize("command, creds", [
    (["list", "--provider", "digitalocean"], ["--access-token", "--json"]),
    (["create", "--provider", "digitalocean"], ["--access-token", "--json"]),
    (["list", "--provider", "ec2", "--region", "eu-west-1"], ["--access-token", "AKIA0", "--secret-key", "--json"]),
], ids=["list", "create", "ec2-secret-key"])
def test_a_secret_flag_whose_value_was_left_out_does_not_take_the_next_flag(
        command: list[str], creds: list[str], api: RecordedAPI, tmp_path: Path, capsys, monkeypatch) -> None:
    """``--access-token --json`` sent "--json" to the cloud as its token (and dropped --json): refused before any
    call, as ``inlets`` refuses ``--bearer-token --rewrite-host``."""
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)  # a token the command could have fallen back on
    flag = creds[-2]
    result = run_cli(capsys, *command, "--api-url", api.url, *creds, "--state-dir", str(tmp_path / "state"))
    one_line_error(result, f"{flag}'s value starts with '--': was the value left out? (a secret that starts with '--' "
                           f"goes in {flag}-file)")
    assert result.code == 2 and result.out == "" and not api.seen and not (tmp_path / "state").exists()


@pytest.mark.parametrize("mode, warned", [(0o644, True), (0o640, True), (0o604, True), (0o600, False), (0o400, False)])
def test_a_token_file_others_can_read_is_used_with_one_warning(mode: int, warned: bool, api: RecordedAPI, tmp_path: Path,
                                                               capsys) -> None:
    path = _file(tmp_path, TOKEN.encode() + b"\n", mode)
    result = _list(capsys, api, tmp_path, "--access-token-file", str(path))
    assert result.code == 0 and api.seen[0].headers["Authorization"] == f"Bearer {TOKEN}", result.err
    warning = (f"inletsctl: warning: access token file {path} can be read by other users (mode {mode:04o}): "
               f"run chmod 600 {path}")
    assert result.err.splitlines() == ([warning] if warned else []), result.err
    assert TOKEN not in result.err + result.out


def test_a_token_longer_than_any_header_limit_is_refused_before_anything_is_sent(api: RecordedAPI, tmp_path: Path,
                                                                                 capsys) -> None:
    result = _list(capsys, api, tmp_path, "--access-token-file", str(_file(tmp_path, b"t" * 5000 + b"\n")))
    one_line_error(result, "is longer than 4096 characters")
    assert not api.seen


@pytest.mark.parametrize("flags", [["--provider", "digitalocean", "--access-token-file", "{big}"],
                                   ["--provider", "gce", "--access-token-file", "{big}"],
                                   ["--provider", "azure", "--access-token-file", "{big}"],
                                   ["--provider", "ec2", "--access-token", "AKIA0", "--secret-key-file", "{big}"]],
                         ids=lambda flags: flags[1])
def test_a_token_file_larger_than_64_kib_is_refused_not_read_whole(flags: list[str], tmp_path: Path) -> None:
    """/dev/zero was read whole: a MemoryError traceback under a memory limit (a separate process, capped). A sparse
    2 GiB file stands for it: /dev/zero itself is refused as a device, unread (the next test)."""
    from helpers.process import MEMORY_CAPPED
    from helpers.prov_support import run_inletsctl

    big = tmp_path / "big.img"
    with big.open("wb") as handle:
        handle.truncate(2 << 30)
    result = run_inletsctl("list", *(flag.format(big=big) for flag in flags), "--state-dir", str(tmp_path),
                           wrap=MEMORY_CAPPED)
    one_line_error(result, f"{big} is larger than 64 KiB")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_token_file_that_is_a_fifo_or_a_device_is_refused_unread(kind: str, tmp_path: Path) -> None:
    """A FIFO hung inletsctl in open() until something wrote to it."""
    import os

    from helpers.prov_support import run_inletsctl

    odd = tmp_path / "fifo"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd = Path("/dev/zero")
    result = run_inletsctl("list", "--provider", "digitalocean", "--access-token-file", str(odd), "--state-dir",
                           str(tmp_path))
    label = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    one_line_error(result, f"access token file {odd}: it is {label}, not a regular file: put its contents in a file")


def test_a_large_token_file_says_its_size_not_its_first_line(api: RecordedAPI, tmp_path: Path, capsys) -> None:
    path = _file(tmp_path, b"t" * 64 + b"\n" + b"#" * (64 * 1024))
    one_line_error(_list(capsys, api, tmp_path, "--access-token-file", str(path)),
                   f"access token file {path} is larger than 64 KiB, more than a token takes: give the file that holds the token")
    assert not api.seen
