"""Bad input to inletsctl: one clear line on stderr, a non-zero exit, never a traceback, nothing left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers.prov_support import INLETSCTL, Result, free_port, one_line_error, run_cli, run_inletsctl, user_env

BAD_CREATE = [
    (["--provider", "aws"], "unknown provider 'aws': choose one of local, digitalocean"),
    (["--provider", ""], "--provider is empty: choose one of local, digitalocean"),
    (["--mode", "udp"], "unknown --mode 'udp'"),
    (["--ports", "0"], "invalid port '0'"),
    (["--ports", "70000"], "ports are 1-65535"),
    (["--ports", "80,http"], "invalid port 'http'"),
    (["--ports", "80,80"], "given twice"),
    (["--ports", "8123", "--control-port", "8123"], "is the control port"),
    (["--mode", "tcp", "--domain", "example.com"], "--domain is for --mode http"),
    (["--mode", "http", "--ports", "80"], "--ports is for --mode tcp"),
    (["--http-port", "80"], "--http-port is for --mode http; give --ports for --mode tcp"),
    (["--mode", "tcp", "--http-port", "8000"], "--http-port is for --mode http"),
    (["--provider", "digitalocean", "--access-token", "t", "--http-port", "80"], "--http-port is for --mode http"),
    (["--mode", "http", "--domain", "not a domain"], "invalid domain 'not a domain': give a DNS name such as example.com"),
    (["--mode", "http", "--domain", "Bücher.Example"], "invalid domain 'Bücher.Example': give it in its ASCII (xn--) form: "
                                                      "--domain xn--bcher-kva.example"),
    (["--mode", "http", "--domain", "*.example.com"], "no wildcards"),
    # one final dot is DNS's root (example.com. is example.com); two leave an empty label, as Terraform's module says
    (["--mode", "http", "--domain", "example.com.."], "invalid domain 'example.com..': give a DNS name such as example.com"),
    (["--mode", "http", "--upstream", "127.0.0.1:8080"], "invalid --upstream"),
    # what the printed client command would refuse is refused here, in the client's words
    (["--upstream", "127.0.0.1:80"], "invalid --upstream '127.0.0.1:80' for --mode tcp: give the host alone (e.g. 127.0.0.1)"),
    (["--upstream", "a..b"], "invalid --upstream for --mode tcp: --upstream 'a..b': 'a..b' is not a valid host name"),
    (["--mode", "http", "--upstream", "http://127.0.0.1:99999"], "bad port in upstream 'http://127.0.0.1:99999'"),
    (["--mode", "http", "--upstream", "https://x/pa?q=1"], "upstream URL takes no path, query or credentials"),
    (["--mode", "http", "--upstream", "http://u:pw@127.0.0.1:3000"], "must not carry a user name or password"),
    (["--ttl", "soon"], "invalid --ttl 'soon'"),
    (["--ttl", "0s"], "at least 1s"),
    (["--timeout", "0"], "'0' is not a number of seconds from 0.001 to 604800"),
    (["--timeout", "nan"], "'nan' is not a number of seconds"),
    (["--timeout", "inf"], "'inf' is not a number of seconds"),
    (["--timeout", "-1e999"], "'-1e999' is not a number of seconds"),
    (["--timeout", "６０"], "'６０' is not a number of seconds"),  # int() and float() take other digits (a review helper)
    (["--replicas", "２"], "'２' is not a whole number from 1 to 10 in the digits 0-9"),
    (["--ttl", "99999999999d"], "invalid --ttl '99999999999d': at most 365d; leave --ttl out"),
    (["--ttl", "3000000d"], "invalid --ttl '3000000d': at most 365d"),
    (["--ttl", "365d1s"], "at most 365d"),
    (["--ttl", "9" * 5000 + "s"], "at most 365d"),
    (["--provider", "digitalocean", "--access-token", "t", "--ttl", "3000000d"], "invalid --ttl '3000000d': at most 365d"),
    (["--region", "lon1"], "--region does not apply to --provider local: it is for digitalocean, ec2"),
    (["Not_A_Name"], "invalid name 'Not_A_Name'"),
    (["demo\n"], "invalid name 'demo\\n'"),  # a pattern's $ takes a trailing newline: the name is checked whole
    ([""], "the exit server's name is empty"),
    (["--ports", ""], "--ports is empty"),
    (["--mode", "http", "--http-port", "8123", "--control-port", "8123"],
     "--http-port 8123 is also the control port: choose another --http-port or --control-port"),
    (["--mode", "http", "--http-port", "99999"], "'99999' is not a port: give 1-65535"),
    (["--provider", "digitalocean", "--access-token", "x", "--mode", "http", "--domain", "example.com",
      "--letsencrypt-issuer", "https://[::1/dir"], "an https:// directory URL, got 'https://[::1/dir'"),
    (["--provider", "digitalocean", "--access-token", "x", "--mode", "http", "--domain", "example.com",
      "--letsencrypt-issuer", "https://127.0.0.1:0/dir"], "'0' is not a port between 1 and 65535"),
    (["--provider", "digitalocean"], "no DigitalOcean access token"),
    # a cloud VM's sshd holds port 22: the server could never listen there (issue: tunnel ports on 22)
    (["--provider", "digitalocean", "--access-token", "x", "--ports", "80,22"],
     "--ports 80,22 includes 22: the VM's SSH server (sshd) listens there, so the tunnel cannot; choose other --ports"),
    (["--provider", "ec2", "--mode", "http", "--http-port", "22"],
     "--http-port 22: the VM's SSH server (sshd) listens there; choose another --http-port (default 80)"),
    (["--provider", "gce", "--control-port", "22"],
     "--control-port 22: the VM's SSH server (sshd) listens there; choose another --control-port (default 8123)"),
    # Let's Encrypt's HTTPS is on 443: the server refuses a control port there at start, so the VM never answers
    (["--provider", "digitalocean", "--access-token", "x", "--mode", "http", "--domain", "example.com",
      "--control-port", "443"], "--control-port 443 is where Let's Encrypt's HTTPS listens: choose another --control-port"),
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
        assert result.code == 2, result  # a usage error, as click's own (it was 1, a failure at run time)
    finally:  # input taken for another meaning must not leave an exit server running
        for made in state.glob("*/server.json"):
            run_cli(capsys, "delete", made.parent.name, "--state-dir", str(state))
    assert result.code != 0 and not any(state.glob("*/server.json"))


CLOUDS = "digitalocean, ec2, gce, azure, linode, vultr, equinix, hetzner, scaleway"
KEYS = "digitalocean, ec2, ssh, gce, azure, linode, equinix, hetzner"  # the providers that read --ssh-key
FOREIGN = [  # (provider, flag, the providers that read it): refused, never ignored
    *[("local", flag, "ssh") for flag in (["--supervisor", "plain"], ["--data-addr", "127.0.0.3"], ["--port", "2222"],
                                          ["--known-hosts", "kh"], ["--remote-python", "python3"],
                                          ["--accept-new-host-key"], ["--host-key-fingerprint", "SHA256:x"])],
    *[("local", flag, CLOUDS) for flag in (["--access-token", "t"], ["--access-token-file", "t"],
                                           ["--api-url", "http://127.0.0.1:9"], ["--runtime-spec", "inlets-py==0.2.0"],
                                           ["--plan", "big"])],
    ("local", ["--ssh-key", "k"], KEYS), ("local", ["--secret-key", "s"], "ec2"),
    ("digitalocean", ["--supervisor", "plain"], "ssh"), ("digitalocean", ["--secret-key-file", "s"], "ec2"),
    ("vultr", ["--ssh-key", "k"], KEYS), ("scaleway", ["--ssh-key", "k"], KEYS),
    ("ssh", ["--region", "lon1"], CLOUDS), ("ssh", ["--access-token", "t"], CLOUDS),
]


@pytest.mark.parametrize("provider,flag,readers", FOREIGN, ids=[f"{p} {f[0]}" for p, f, _ in FOREIGN])
def test_a_flag_the_provider_does_not_read_is_refused(provider: str, flag: list[str], readers: str, tmp_path: Path,
                                                      capsys) -> None:
    state = tmp_path / "state"
    ssh = ["--host", "root@127.0.0.1"] if provider == "ssh" else []
    try:
        result = run_cli(capsys, "create", "--provider", provider, *ssh, *flag, "--state-dir", str(state))
        one_line_error(result, f"{flag[0]} does not apply to --provider {provider}: it is for {readers}")
    finally:  # a flag ignored by local: its exit server started
        for made in state.glob("*/server.json"):
            run_cli(capsys, "delete", made.parent.name, "--state-dir", str(state))


EMPTY = [["create", "--ssh-key", ""], ["create", "--provider", "ssh", "--host", ""], ["create", "--mode", "http", "--domain", ""],
         ["create", "--provider", "digitalocean", "--access-token", ""], ["list", "--provider", ""],
         ["delete", "x", "--provider", "digitalocean", "--access-token", " "], ["status", "x", "--api-url", ""]]


@pytest.mark.parametrize("args", EMPTY, ids=lambda a: " ".join(a))
def test_an_empty_flag_is_refused_not_read_as_left_out(args: list[str], tmp_path: Path, capsys) -> None:
    flag, state = args[-2], tmp_path / "state"
    hint = "choose one of local" if flag == "--provider" else "give a value, or leave it out"
    try:
        one_line_error(run_cli(capsys, *args, "--state-dir", str(state)), f"{flag} is empty: {hint}")
    finally:  # an empty flag taken as left out: its exit server started
        for made in state.glob("*/server.json"):
            run_cli(capsys, "delete", made.parent.name, "--state-dir", str(state))
    assert not state.exists()


@pytest.mark.parametrize("flag", ["--state-dir", "--access-token-file"])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(flag: str, capsys) -> None:
    result = run_cli(capsys, "list", flag, "")
    one_line_error(result, f"Invalid value for '{flag}': the path is empty")


def test_an_http_port_of_0_is_refused_not_read_as_the_default(tmp_path: Path) -> None:
    from inlets_py.provisioner.create import CreateOptions, create
    from inlets_py.provisioner.errors import ProvisionError

    with pytest.raises(ProvisionError, match=r"invalid --http-port 0: ports are 1-65535"):
        create(CreateOptions("local", tmp_path, mode="http", http_port=0), lambda *_: None)
    assert not list(tmp_path.iterdir())


def test_the_longest_ttl_is_taken() -> None:
    from inlets_py.provisioner.spec import parse_ttl

    assert parse_ttl("365d").days == 365 and parse_ttl("364d23h59m60s").days == 365


def test_delete_refuses_a_timeout_that_never_ends(tmp_path: Path, capsys) -> None:
    for value in ("nan", "inf", "0", "６"):
        result = run_cli(capsys, "delete", "x", "--timeout", value, "--state-dir", str(tmp_path))
        one_line_error(result, f"Invalid value for '--timeout': {value!r} is not a number of seconds")


def test_usage_errors_and_missing_names_as_a_separate_process(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    one_line_error(run_inletsctl("create", "--timeout", "soon", "--state-dir", state), "--timeout")
    one_line_error(run_inletsctl("create", "--no-such-flag", "--state-dir", state), "No such option")
    # each says what to do about one made elsewhere (status has no --provider: list has)
    one_line_error(run_inletsctl("status", "ghost", "--state-dir", state),
                   f"no exit server named 'ghost' in {state} (to see one made elsewhere run inletsctl list --provider PROVIDER)")
    one_line_error(run_inletsctl("delete", "ghost", "--state-dir", state),
                   f"no exit server named 'ghost' in {state} (to delete one made elsewhere add --provider)")
    one_line_error(run_inletsctl("delete", "--state-dir", state), "exactly one of NAME, --id ID or --ip IP")
    bare = run_inletsctl()
    assert bare.code != 0 and "create" in bare.err + bare.out and "Traceback" not in bare.err


@pytest.mark.parametrize("provider", ["ssh", "local"])
def test_delete_of_an_unknown_name_on_ssh_or_local_says_where_it_looked_not_a_cloud_tag(provider: str,
                                                                                        tmp_path: Path) -> None:
    """ssh and local exit servers are known only from the state folders of --state-dir: "(tagged inlets)", a cloud's
    words, sent the reader looking for a tag; the line names the folder and what to run instead."""
    state = str(tmp_path / "state")
    for args in (["nope"], ["--id", "x"]):
        line = one_line_error(run_inletsctl("delete", *args, "--provider", provider, "--state-dir", state),
                              f"{provider}: no exit server ", f" in {state} (--provider {provider} knows only those "
                              f"whose local state is there)", f"inletsctl list --provider {provider}", "--state-dir")
        assert "tagged" not in line, line


@pytest.mark.parametrize("args, line", [
    (["create", "--timeout", "abc"], "inletsctl create: error: Invalid value for '--timeout': 'abc' is not a number of "
                                     "seconds from 0.001 to 604800"),
    (["create", "--replicas", "x"], "inletsctl create: error: Invalid value for '--replicas': 'x' is not a whole number "
                                    "from 1 to 10 in the digits 0-9"),
    (["create", "--replicas", "1.5"], "inletsctl create: error: Invalid value for '--replicas': '1.5' is not a whole "
                                      "number from 1 to 10 in the digits 0-9"),
    (["delete", "x", "--timeout", "it's"], "inletsctl delete: error: Invalid value for '--timeout': \"it's\" is not a "
                                           "number of seconds from 0.001 to 604800"),
    # click offered "--bogus" "(Possible options: --host)": nothing a user who typed it meant
    (["create", "--bogus"], "inletsctl create: error: No such option: --bogus"),
    (["create", "--regoin", "x"], "inletsctl create: error: No such option: --regoin (did you mean --region?)"),
])
def test_usage_errors_are_in_the_users_words_not_python_types(args: list[str], line: str, tmp_path: Path, capsys) -> None:
    """click's own words named Python's types: "'abc' is not a valid float.", "'x' is not a valid int."."""
    result = run_cli(capsys, *args, "--state-dir", str(tmp_path))
    assert (result.code, result.err) == (2, f"{line} (see --help)\n"), result


@pytest.mark.parametrize("args, message", [
    (["create", "caf\udce9"], "invalid name 'caf\\xe9'"),
    (["create", "--upstream", "caf\udce9"], "'caf\\xe9' holds a byte that is not UTF-8"),
    (["create", "--provider", "digitalocean", "--access-token", "x", "--api-url", "http://caf\udce9"],
     "API URL 'http://caf\\xe9' (--api-url or $DIGITALOCEAN_API_URL): it holds a byte that is not UTF-8"),
    (["create", "--provider", "digitalocean", "--access-token-file", "/nonexistent/caf\udce9"], "not found: /nonexistent/caf\\xe9"),
    (["create", "--mode", "http", "--domain", "caf\udce9"], "invalid domain 'caf\\xe9'"),
    (["delete", "--provider", "digitalocean", "--ip", "caf\udce9"], "--ip 'caf\\xe9' is not an IP address"),
    (["create", "--caf\udce9"], "No such option: --caf\\xe9"),
])
def test_a_byte_that_is_not_utf8_is_shown_as_typed(args: list[str], message: str, tmp_path: Path) -> None:
    """A Latin-1 byte showed as Python's surrogate escape ('caf\\udce9'); an --api-url holding one went to the
    network, to fail as "cannot reach the API"."""
    line = one_line_error(run_inletsctl(*args, "--state-dir", str(tmp_path)), message)
    assert "udc" not in line, line


USAGE = [  # each refused before anything is made: exit status 2, as click's own and every ``inlets`` one (these were 1)
    ["create", "--ports", "abc"], ["create", "--mode", "udp"], ["create", "--provider", "bogus"], ["create", "--ttl", "1x"],
    ["create", "Bad_Name"], ["create", "--provider", "local", "--access-token", "t"], ["create", "--provider", "ssh"],
    ["create", "--provider", "digitalocean", "--access-token", "x", "--api-url", "ftp://x"],
    ["create", "--provider", "digitalocean", "--access-token-file", "/nonexistent/token"], ["create", "--replicas", "2"],
    ["delete"], ["delete", "--id", "3"], ["delete", "--provider", "digitalocean", "--ip", "nope"], ["status", "Bad_Name"],
    ["list", "--provider", "bogus"], ["list", "--provider", "bogus", "--json"],
    # click's own, 2 before too
    ["create", "--bogus"], ["create", "--timeout", "abc"], ["status"], ["list", "--provider"],
]


@pytest.mark.parametrize("args", USAGE, ids=" ".join)
def test_usage_errors_exit_2_as_inlets_does(args: list[str], tmp_path: Path) -> None:
    """inletsctl's own checks exited 1, click's 2: a script could not tell a mistyped flag from a cloud that failed."""
    result = run_inletsctl(*args, "--state-dir", str(tmp_path), env={"DIGITALOCEAN_ACCESS_TOKEN": ""})
    assert result.code == 2 and "Traceback" not in result.err and "error: " in result.err, result


def test_a_failure_at_run_time_still_exits_1(tmp_path: Path) -> None:
    """Not a usage error: the name is well formed, there is just no such exit server (or the API cannot be reached)."""
    assert run_inletsctl("status", "ghost", "--state-dir", str(tmp_path)).code == 1
    unreachable = run_inletsctl("list", "--provider", "digitalocean", "--access-token", "x", "--api-url",
                                f"http://127.0.0.1:{free_port()}", "--state-dir", str(tmp_path))
    assert unreachable.code == 1 and "cannot reach the API" in unreachable.err, unreachable


def test_every_command_has_help_with_examples() -> None:
    for command in ("create", "delete", "list", "status"):
        result = run_inletsctl(command, "--help")
        assert result.code == 0 and "Examples:" in result.out and f"inletsctl {command}" in result.out, command


def test_state_dirs_help_names_where_it_looks(tmp_path: Path) -> None:
    """--help said "$INLETSCTL_STATE_DIR or ~/.config/inletsctl", yet $XDG_CONFIG_HOME moves it (as the README says)."""
    config = tmp_path / "config"
    result = run_inletsctl("delete", "nosuch", env={"XDG_CONFIG_HOME": str(config), "COLUMNS": "1000"})
    assert result.code == 1 and f"no exit server named 'nosuch' in {config / 'inletsctl'} " in result.err, result
    out = " ".join(run_inletsctl("delete", "--help", env={"COLUMNS": "1000"}).out.split())  # one StateDir for all
    assert "[default: $INLETSCTL_STATE_DIR, else $XDG_CONFIG_HOME/inletsctl (~/.config/inletsctl)]" in out, out


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


@pytest.mark.parametrize("mode, ports, http_port", [("tcp", "45329", None), ("tcp", None, None), ("http", None, 45329)])
def test_the_local_control_port_is_never_a_data_port(mode: str, ports: str | None, http_port: int | None,
                                                    tmp_path: Path, monkeypatch) -> None:
    """The data ports listen on 127.0.0.2, the control port on 127.0.0.1: a port free there may be the one asked
    for on the other (CI: "port 45329 is the control port; choose other --ports" for a --ports it picked free).
    The kernel's choice cannot be made to collide on demand, so the port source offers the collision first."""
    from inlets_py.provisioner import create
    from inlets_py.provisioner.providers import local

    data = 45329 if ports or http_port else create.LOCAL_DEFAULT_PORTS[0]
    offered = iter([data, data, 45330])
    monkeypatch.setattr(local, "free_port", lambda host=local.CONTROL_ADDR: next(offered))
    spec = create._spec(create.CreateOptions(provider="local", state_root=tmp_path, mode=mode, ports=ports,
                                             http_port=http_port))
    assert spec.control_port == 45330
    assert data in (spec.ports if mode == "tcp" else (spec.http_port,))


@pytest.mark.parametrize("provider", ["local", "ssh"])
def test_port_22_is_a_tunnel_port_where_no_vm_sshd_holds_it(provider: str, tmp_path: Path) -> None:
    """local has no VM (its data ports listen on 127.0.0.2); ssh's host may reach its sshd through a forwarded
    port, and its server names a port in use to the client: only clouds refuse 22 up front."""
    from inlets_py.provisioner import create

    spec = create._spec(create.CreateOptions(provider=provider, state_root=tmp_path, ports="22,8080"))
    assert spec.ports == (22, 8080)


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


def test_a_state_folder_under_a_file_is_one_line_saying_which_file(tmp_path: Path, capsys, monkeypatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    choose = "give --state-dir (or $INLETSCTL_STATE_DIR) a folder you can write"
    result = run_cli(capsys, "create", "--state-dir", str(afile / "x"))
    one_line_error(result, f"cannot keep exit servers in {afile / 'x'}: {afile} is a file, not a folder; {choose}")
    for command in (["list"], ["status", "x"], ["delete", "x"]):
        result = run_cli(capsys, *command, "--state-dir", str(afile / "x"))
        one_line_error(result, f"cannot read exit servers from {afile / 'x'}: {afile} is a file, not a folder")
    monkeypatch.setenv("INLETSCTL_STATE_DIR", str(afile))
    one_line_error(run_cli(capsys, "create"), f"cannot keep exit servers in {afile}: {afile} is a file, not a folder")
    one_line_error(run_cli(capsys, "list"), f"cannot read exit servers from {afile}: {afile} is a file")


def test_a_state_folder_that_cannot_be_written_is_one_line() -> None:
    """As a user without write permission (root writes anywhere, so the test drops to nobody with setpriv)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux) to drop to a user that folder permissions bind")
        prefix = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    top = Path(tempfile.mkdtemp())
    try:
        top.chmod(0o755)
        (top / "read-only").mkdir(mode=0o555)
        proc = subprocess.run([*prefix, str(INLETSCTL), "create", "--state-dir", str(top / "read-only" / "x")],
                              capture_output=True, text=True, timeout=60, env=user_env())
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        one_line_error(result, f"cannot keep exit servers in {top / 'read-only' / 'x'}: no permission to write in "
                               f"{top / 'read-only'}; give --state-dir")
    finally:
        shutil.rmtree(top)


def _importing(pid: int) -> bool:
    """The script is importing the command: an extension module from site-packages is mapped (the interpreter
    itself and its site set-up map none)."""
    try:
        return "site-packages" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_while_inletsctl_starts_exits_quietly(tmp_path: Path) -> None:
    """A Ctrl-C while the command is still being imported printed a traceback of the cut-short import."""
    import signal
    import time

    for _ in range(3):  # a few tries: the signal must land before the imports end (~0.3 s)
        proc = subprocess.Popen([str(INLETSCTL), "list", "--state-dir", str(tmp_path / "state")], env=user_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not _importing(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-800:]
        assert proc.returncode in (0, 130), (proc.returncode, err)


def test_printed_commands_work_from_a_shell_whose_path_lacks_this_installation(tmp_path: Path) -> None:
    """inletsctl run by its path (a venv not activated) printed `inlets ...`, which that shell cannot find."""
    import json

    state, path = tmp_path / "state", "/usr/bin:/bin"
    created = run_inletsctl("create", "by-path", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state),
                            "--json", "--timeout", "30", env={"PATH": path})
    assert created.code == 0, created.err
    try:
        summary = json.loads(created.out)
        assert summary["client_command"].startswith(f"{INLETSCTL.with_name('inlets')} tcp client ")
        status = subprocess.run(["bash", "-c", summary["status_command"] + " --json"], capture_output=True,
                                text=True, timeout=30, env={**user_env(), "PATH": path})
        assert status.returncode == 0, status.stderr
        assert "uptime" in status.stdout or "{" in status.stdout
    finally:
        run_inletsctl("delete", "by-path", "--state-dir", str(state))
    normal = run_inletsctl("create", "on-path", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state),
                           "--json", "--timeout", "30")
    try:
        assert json.loads(normal.out)["client_command"].startswith("inlets tcp client "), normal.err
    finally:
        run_inletsctl("delete", "on-path", "--state-dir", str(state))


@pytest.mark.parametrize("provider", ["local", "ec2", "digitalocean"])
def test_delete_ip_that_is_not_an_ip_address_says_so(tmp_path: Path, capsys, provider: str) -> None:
    """It asked the cloud, then said 'no exit server with IP notanip' (or that credentials were missing)."""
    result = run_cli(capsys, "delete", "--provider", provider, "--ip", "notanip", "--state-dir", str(tmp_path))
    one_line_error(result, "--ip 'notanip' is not an IP address", "inletsctl list")
