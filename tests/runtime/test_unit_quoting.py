"""Operator-supplied values in systemd units and cloud-init user-data (issue 14, item 9).

A value pasted into a unit or a YAML document as it is can add lines: a root ExecStartPre=,
a runcmd entry, a directive after a comment; ``%`` is a systemd specifier and ``$`` a
variable. Units are written with systemd's quoting (runtime/systemd_quote.py) and
user-data values with a YAML serializer; these tests feed hostile values through both and
check the results with the real tools (``systemd-analyze verify``, ``cloud-init schema``).
That systemd hands each value to the program byte for byte is checked in a booted
container (tests/boot/test_boot.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers.process import inlets, one_line_error
from helpers.service_python import ServiceInlets, folder_outside_tmp, make_venv, service_inlets, unit_inlets

from inlets_py.provisioner.errors import ProvisionError
from inlets_py.provisioner.material import generate
from inlets_py.provisioner.names import check_name
from inlets_py.provisioner.render import UserDataOptions, systemd_unit, user_data, yaml_scalar
from inlets_py.provisioner.spec import VM_FILES, LetsEncrypt, build_spec, check_runtime_spec, server_argv
from inlets_py.runtime.acme.store import AcmeConfigError, check_email, directory_url
from inlets_py.runtime.generate.systemd_quote import UnitValueError, exec_command, exec_word, path_value

INJECTION = "127.0.0.1\nExecStartPre=/bin/sh -c 'touch /pwned'"
HOSTILE_WORDS = [INJECTION, "a b", 'q"uote', "back\\slash", "%h%%2F", "$HOME ${PATH} $$", "tab\there", "", "é ü"]


def _directives(unit: str) -> list[str]:
    return [line.split("=", 1)[0] for line in unit.splitlines() if "=" in line and not line.startswith("#")]


def _verify(unit_text: str, tmp_path: Path, name: str = "inlets-test.service") -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (scripts/install-test-tools.sh installs Debian's systemd)")
    path = tmp_path / name
    path.write_text(unit_text)
    result = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if name in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_every_word_stays_one_word_on_one_line() -> None:
    for word in HOSTILE_WORDS:
        quoted = exec_word(word)
        assert "\n" not in quoted and "\t" not in quoted
        assert quoted == word or (quoted.startswith('"') and quoted.endswith('"'))
    assert exec_word("%2F") == '"%%2F"' and exec_word("$HOME") == '"$$HOME"'
    assert exec_word(INJECTION) == '"127.0.0.1\\nExecStartPre=/bin/sh -c \'touch /pwned\'"'
    assert exec_command(["/usr/bin/inlets", "tcp", "server"]) == "/usr/bin/inlets tcp server"
    assert path_value("/etc/my inlets/%i") == '"/etc/my inlets/%%i"'
    for bad in ("/etc/a\nb", '/etc/"x"', "relative/path"):
        with pytest.raises(UnitValueError):
            path_value(bad)


def test_hostile_values_in_the_exit_server_unit_add_no_directive(tmp_path: Path) -> None:
    """The e-mail and ACME directory URL reach ExecStart with %-escaping; a newline in a
    value (here the data address of --provider ssh) stays inside its quoted word."""
    inlets_bin = str(Path(sys.executable).with_name("inlets"))
    spec = build_spec("http", None, ["example.com"], letsencrypt=LetsEncrypt("ops%2Fteam@example.com",
                                                                             "https://acme.example/dir%2Fv2"))
    benign = systemd_unit(server_argv(build_spec("http", None, ["example.com"]), VM_FILES, [inlets_bin]), "http")
    hostile = systemd_unit(server_argv(spec, VM_FILES, [inlets_bin], data_addr=INJECTION), "http")
    assert _directives(hostile) == _directives(benign)
    exec_start = [line for line in hostile.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    assert '"ops%%2Fteam@example.com"' in exec_start[0] and '"https://acme.example/dir%%2Fv2"' in exec_start[0]
    _verify(hostile, tmp_path)


def test_generated_units_keep_hostile_values_inside_their_words(tmp_path: Path, tls: object) -> None:
    """``inlets ... --generate=systemd``: a value with a line break is refused as the command would refuse it
    (``exec_word`` above keeps one inside its word all the same), ``%`` and spaces in file paths are escaped
    and quoted, and systemd-analyze accepts the unit."""
    odd = Path("/srv/my %h dir")  # a file the unit names need not exist yet; /tmp would be refused (PrivateTmp)
    token = odd / "token"
    refused = inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", str(token),
                     "--upstream", INJECTION, "--ports", "80", "--generate=systemd")
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    result = unit_inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", str(token),
                         "--upstream", "127.0.0.1", "--ports", "80", "--generate=systemd")
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    assert "ExecStartPre" not in _directives(unit) and len([d for d in _directives(unit) if d == "ExecStart"]) == 1
    assert f'ReadOnlyPaths="-{odd}"'.replace("%", "%%") in unit.splitlines()
    assert f'"{token}"'.replace("%", "%%") in next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    _verify(unit, tmp_path, "inlets-tcp-client.service")


def test_a_byte_that_is_not_utf8_reaches_the_program_as_that_byte(tmp_path: Path) -> None:
    """A command-line byte that is not UTF-8 (a Latin-1 file name) arrives as a surrogate (Python's
    surrogateescape): written as it was, systemd ignored the whole ExecStart ("String is not UTF-8 clean"), or
    printing the unit raised UnicodeEncodeError in a UTF-8 locale. systemd's ``\\xNN`` escape carries the byte."""
    assert exec_word("/srv/tok\udcff") == '"/srv/tok\\xff"'
    assert exec_command(["/usr/bin/inlets", "--x", "caf\udce9 %"]) == '/usr/bin/inlets --x "caf\\xe9 %%"'
    _verify(f"[Service]\nExecStart={exec_command(['/bin/echo', '/srv/tok' + chr(0xDCFF)])}\n", tmp_path)


def test_the_program_is_written_by_systemds_rules_for_the_executable_path(tmp_path: Path) -> None:
    """ExecStart='s first word is taken literally, specifiers expanded but no ``$`` variable (systemd.service(5)):
    written as an argument, ``$`` as ``$$``, it named another file and the unit never started. argv[0], a copy of the
    path, does have its ``$`` expanded, so ``@`` gives it apart. systemd-analyze finds each program where it is."""
    for name in ("d$x", "$HOME ${PATH}", "100% sure", "caf\udce9"):
        program = tmp_path / name / "prog"
        program.parent.mkdir()
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
        _verify(f"[Service]\nType=oneshot\nExecStart={exec_command([str(program), 'a$b'])}\n", tmp_path)
    assert exec_command(["/opt/d$x/inlets", "a$b"]) == '"@/opt/d$x/inlets" "/opt/d$$x/inlets" "a$$b"'
    assert exec_command(["/opt/100% sure/inlets", "%n"]) == '"/opt/100%% sure/inlets" "%%n"'
    for bad in ("/opt/it's/inlets", '/opt/q"uote/inlets', "/opt/back\\slash/inlets", "/opt/tab\there/inlets"):
        with pytest.raises(UnitValueError, match="systemd cannot run"):
            exec_command([bad, "tcp"])


@pytest.mark.parametrize("folder", ["d$x", "it's"])
def test_generate_runs_an_inlets_installed_under_a_dollar_and_refuses_one_under_a_quote(folder: str,
                                                                                         tmp_path: Path) -> None:
    """``inlets ... --generate=systemd`` from an installation whose path holds a ``$`` writes a unit systemd runs; one
    holding a quote, which systemd refuses ("Executable name contains special characters"), is one line saying so
    (a unit that never loaded was printed)."""
    args = ["tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", "/etc/inlets/token",
            "--upstream", "127.0.0.1", "--ports", "80", "--generate=systemd"]
    with folder_outside_tmp() as scratch:
        bin_dir = make_venv(scratch / folder, str(service_inlets().python))
        result = ServiceInlets(bin_dir / "python", bin_dir).run(*args)
        if "'" in folder:
            line = one_line_error(result, "systemd cannot run")
            assert repr(str(bin_dir / "inlets")) in line and "install it under a path without them" in line, line
            return
        assert result.returncode == 0, result.stderr
        exec_start = next(line for line in result.stdout.splitlines() if line.startswith("ExecStart="))
        program = f'"@{bin_dir}/inlets" "{scratch}/d$$x/bin/inlets"'  # the path as it is; argv[0] escaped
        assert exec_start.startswith(f"ExecStart={program} tcp client "), exec_start
        _verify(result.stdout, tmp_path, "inlets-tcp-client.service")


def test_a_file_path_that_is_not_utf8_is_a_one_line_error() -> None:
    """ReadOnlyPaths= and the setup line, which name the file too, take no escapes: such a path is refused (it
    printed a unit systemd would not load, or a traceback in a UTF-8 locale)."""
    with pytest.raises(UnitValueError, match="not UTF-8"):
        path_value("/srv/d\udcff")
    result = inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", "/srv/d\udcff/token",
                    "--upstream", "127.0.0.1", "--ports", "80", "--generate=systemd")
    line = one_line_error(result, "not UTF-8")
    assert "/srv/d\\xff/token" in line and "rename" in line, line


def test_a_file_path_with_a_line_break_is_a_one_line_error(tmp_path: Path) -> None:
    result = inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", str(tmp_path / "a\nb"),
                    "--upstream", "127.0.0.1", "--ports", "80", "--generate=systemd")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "systemd" in result.stderr, result.stderr


def test_a_hostile_runtime_spec_stays_one_yaml_value(tmp_path: Path) -> None:
    """Even past validation, a quote and line breaks in the pip requirement add no runcmd entry."""
    spec, material = build_spec("tcp", "80", []), generate("yaml-test")
    hostile = "inlets-py'\n  - [sh, -c, 'touch /pwned']\n  - \"x\\\" # <&>\u2028"
    benign_doc = yaml.safe_load(user_data(spec, material, UserDataOptions("yaml-test", "inlets-py==0.1.0")))
    text = user_data(spec, material, UserDataOptions("yaml-test", hostile))
    doc = yaml.safe_load(text)
    assert len(doc["runcmd"]) == len(benign_doc["runcmd"]) and doc["runcmd"][-1][-1] == hostile
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip("cloud-init is not installed (scripts/install-test-tools.sh installs Debian's cloud-init)")
    (tmp_path / "user-data").write_text(text)
    result = subprocess.run([tool, "schema", "--config-file", str(tmp_path / "user-data")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_string_is_one_yaml_value_that_reads_back_exactly(value: str) -> None:
    """render.yaml_scalar(): whatever the text (quotes, line breaks, NEL, DEL, ...), YAML reads it back as it was."""
    assert yaml.safe_load(f"runcmd:\n  - [pip, install, {yaml_scalar(value)}]\n")["runcmd"][0][2] == value


def test_create_refuses_a_runtime_spec_on_two_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from inlets_py.provisioner.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["create", "--provider", "digitalocean", "--access-token", "x", "--runtime-spec", "inlets-py\n  - [reboot]",
              "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exited.value.code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--runtime-spec" in err and "one pip requirement on one line" in err
    assert check_runtime_spec("inlets-py @ https://example.com/inlets_py-0.2.0-py3-none-any.whl")


@pytest.mark.parametrize("check,value", [
    (check_name, "brave-otter\n"),
    (lambda v: build_spec("tcp", "80", [], upstream=v), "127.0.0.1\n"),
    (lambda v: build_spec("http", None, [], upstream=v), "http://127.0.0.1:8080\n"),
    (check_email, "ops@example.com\n"),
    (check_email, "ops@exa\x01mple.com"),
    (directory_url, "https://acme.example/directory\nExecStartPre=/bin/true"),
    (check_runtime_spec, "inlets-py==0.1.0\n"),
])
def test_validation_matches_the_whole_value(check: object, value: str) -> None:
    """A pattern ending in ``$`` lets a trailing newline through; the checks match the whole value."""
    with pytest.raises((ProvisionError, AcmeConfigError)):
        check(value)  # type: ignore[operator]


def test_the_setup_line_of_a_generated_unit_can_be_pasted_into_a_shell(tmp_path: Path) -> None:
    """A file path with a space and a % is one shell word in the "Before the first start" comment, as ExecStart has it
    (the comment is not unit syntax: % stays as it is there), and systemd-analyze still accepts the unit."""
    ca = "/etc/inlets/my ca%n.crt"
    result = unit_inlets("tcp", "client", "--url", "wss://203.0.113.10:8123", "--token-file", "/etc/inlets/token",
                         "--tls-ca", ca, "--upstream", "127.0.0.1", "--ports", "80", "--generate=systemd")
    assert result.returncode == 0, result.stderr
    (hint,) = [line for line in result.stdout.splitlines() if line.startswith("# Before the first start: ")]
    commands = [shlex.split(part) for part in hint.removeprefix("# Before the first start: ").split("; ")]
    assert commands[1:] == [["chown", "inlets:", ca, "/etc/inlets/token"], ["chmod", "600", ca, "/etc/inlets/token"]]
    _verify(result.stdout, tmp_path, "inlets-tcp-client.service")
