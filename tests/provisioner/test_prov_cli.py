"""Bad input to inletsctl: one clear line on stderr, a non-zero exit, never a traceback, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.prov_support import free_port, one_line_error, run_cli, run_inletsctl

BAD_CREATE = [
    (["--provider", "aws"], "unknown provider 'aws': choose one of local, digitalocean"),
    (["--provider", ""], "unknown provider '': choose one of local, digitalocean"),
    (["--mode", "udp"], "unknown --mode 'udp'"),
    (["--ports", "0"], "invalid port '0'"),
    (["--ports", "70000"], "ports are 1-65535"),
    (["--ports", "80,http"], "invalid port 'http'"),
    (["--ports", "80,80"], "given twice"),
    (["--ports", "8123", "--control-port", "8123"], "is the control port"),
    (["--mode", "tcp", "--domain", "example.com"], "--domain is for --mode http"),
    (["--mode", "http", "--ports", "80"], "--ports is for --mode tcp"),
    (["--mode", "http", "--domain", "not a domain"], "invalid domain"),
    (["--mode", "http", "--upstream", "127.0.0.1:8080"], "invalid --upstream"),
    (["--ttl", "soon"], "invalid --ttl 'soon'"),
    (["--ttl", "0s"], "at least 1s"),
    (["--timeout", "0"], "--timeout must be positive"),
    (["--region", "lon1"], "do not apply to --provider local"),
    (["Not_A_Name"], "invalid name 'Not_A_Name'"),
    ([""], "the exit server's name is empty"),
    (["--ports", ""], "--ports is empty: give the data ports"),
    (["--mode", "http", "--http-port", "8123", "--control-port", "8123"],
     "--http-port 8123 is also the control port: choose another --http-port or --control-port"),
    (["--mode", "http", "--http-port", "99999"], "'99999' is not a port: give 1-65535"),
    (["--provider", "digitalocean"], "no DigitalOcean access token"),
    (["--provider", "digitalocean", "--access-token-file", "/nonexistent/token"], "access token file not found"),
]


@pytest.mark.parametrize("args,message", BAD_CREATE, ids=[m for _, m in BAD_CREATE])
def test_bad_create_input(args: list[str], message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    for name in ("DIGITALOCEAN_ACCESS_TOKEN", "INLETS_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    try:
        result = run_cli(capsys, "create", *args, "--state-dir", str(state))
        one_line_error(result, message)
    finally:  # input taken for another meaning must not leave an exit server running
        for made in state.glob("*/server.json"):
            run_cli(capsys, "delete", made.parent.name, "--state-dir", str(state))
    assert result.code != 0 and not any(state.glob("*/server.json"))


def test_an_http_port_of_0_is_refused_not_read_as_the_default(tmp_path: Path) -> None:
    from inlets_py.provisioner.create import CreateOptions, create
    from inlets_py.provisioner.errors import ProvisionError

    with pytest.raises(ProvisionError, match=r"invalid --http-port 0: ports are 1-65535"):
        create(CreateOptions("local", tmp_path, mode="http", http_port=0), lambda *_: None)
    assert not list(tmp_path.iterdir())


def test_usage_errors_and_missing_names_as_a_separate_process(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    one_line_error(run_inletsctl("create", "--timeout", "soon", "--state-dir", state), "--timeout")
    one_line_error(run_inletsctl("create", "--no-such-flag", "--state-dir", state), "No such option")
    one_line_error(run_inletsctl("status", "ghost", "--state-dir", state), "no exit server named 'ghost'")
    one_line_error(run_inletsctl("delete", "ghost", "--state-dir", state), "no exit server named 'ghost'")
    one_line_error(run_inletsctl("delete", "--state-dir", state), "exactly one of NAME, --id ID or --ip IP")
    bare = run_inletsctl()
    assert bare.code != 0 and "create" in bare.err + bare.out and "Traceback" not in bare.err


def test_every_command_has_help_with_examples() -> None:
    for command in ("create", "delete", "list", "status"):
        result = run_inletsctl(command, "--help")
        assert result.code == 0 and "Examples:" in result.out and f"inletsctl {command}" in result.out, command


def test_a_name_that_exists_locally_is_refused(tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    first = run_cli(capsys, "create", "twice", "--state-dir", str(state), "--ports", str(free_port("127.0.0.2")), "--json")
    assert first.code == 0, first.err
    try:
        second = run_cli(capsys, "create", "twice", "--state-dir", str(state), "--ports", str(free_port("127.0.0.2")))
        one_line_error(second, "named 'twice' already exists")
        assert (state / "twice" / "server.json").exists()  # the first one is untouched
    finally:
        assert run_cli(capsys, "delete", "twice", "--state-dir", str(state)).code == 0


def test_progress_off_a_terminal_is_few_lines_saying_what_is_awaited(capsys) -> None:
    """Steps print once; a wait prints only once it lasts, then now and then, with its detail."""
    from inlets_py.provisioner.output import Progress

    now = [0.0]
    progress = Progress(grace=2.0, every=15.0, clock=lambda: now[0])
    progress("creating 'x' on local")
    progress("creating 'x' on local")
    for second in range(0, 40):  # polled twice a second for 40 s
        for half in (0.0, 0.5):
            now[0] = 100 + second + half
            progress("waiting for the tunnel server at https://127.0.0.1:1/healthz",
                     f"not listening yet; {second}s of 600s")
    progress("deleting x")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "inletsctl: creating 'x' on local",
        "inletsctl: waiting for the tunnel server at https://127.0.0.1:1/healthz (not listening yet; 2s of 600s)",
        "inletsctl: waiting for the tunnel server at https://127.0.0.1:1/healthz (not listening yet; 17s of 600s)",
        "inletsctl: waiting for the tunnel server at https://127.0.0.1:1/healthz (not listening yet; 32s of 600s)",
        "inletsctl: deleting x",
    ]
