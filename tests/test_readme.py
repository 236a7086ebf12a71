"""The README as a newcomer follows it: every command it prints runs as printed (readme_commands
explains how a block is found and run), and what it says about the tests matches the project's files."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.api_specs import SPEC_FILE, SPECS_DEFAULT, SPECS_ENV
from helpers.process import wait_port
from helpers.http import LOOPBACK, Stack, raw_request
from helpers.readme_commands import BIN, README, ROOT, Shell, block, commands
from helpers.readme_names import code_events, code_fields, code_literals, readme_events, readme_metrics, scrape, tcp_and_udp_scrape
from helpers.service_python import service_inlets
from helpers.tunnel import free_port, run

from inlets_py.provisioner.providers import registry
from inlets_py.runtime.core.probe import get, parse_url
from inlets_py.runtime.http.options import RESERVED, HttpOptions, OptionError
from inlets_py.runtime.server.dataplane import bind_failure


def _free_on_both(*hosts: str) -> int:
    """A port free on every loopback address given (the service's and the exit server's)."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on " + ", ".join(hosts))


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (bash scripts/install-test-tools.sh installs it)")


# ------------------------------------------------------------------------ quick start


def test_quick_start_is_two_set_up_commands_and_ci_runs_the_second() -> None:
    demo, tests = (shlex.split(c, comments=True) for c in commands("quick-start"))
    assert (demo, tests) == (["bash", "scripts/demo.sh"], ["bash", "scripts/test.sh"])
    ci = [shlex.split(line) for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("exec ")]
    assert ci == [["exec", *tests]], "the README's test command and .ci/run's must be the same"


def test_quick_start_demo_runs_as_printed_and_reads_as_progress(tmp_path: Path) -> None:
    shell = Shell(tmp_path)
    try:
        code, out = shell.run(commands("quick-start")[0], timeout=240, cwd=ROOT)
    finally:
        shell.close()
    assert code == 0 and out.rstrip().endswith("demo: OK, the request crossed the tunnel"), out
    assert not re.search(r"warning|deprecat|refused|traceback|error", out, re.I), out


def test_activating_the_quick_starts_venv_puts_both_commands_on_the_path(tmp_path: Path) -> None:
    venv = ROOT / ".venv"
    if not (venv / "bin" / "activate").exists():
        pytest.skip("no .venv in the checkout: the quick start (bash scripts/demo.sh) makes it")
    shell = Shell(tmp_path, path_with_inlets=False)
    code, out = shell.run(block("activate") + "command -v inlets inletsctl\n", cwd=ROOT)
    assert code == 0 and out.split() == [str(venv / "bin" / "inlets"), str(venv / "bin" / "inletsctl")], out


# ------------------------------------------------------------------ one machine, TCP


def test_one_machine_tcp_tunnel_as_printed(tmp_path: Path) -> None:
    _need("openssl")
    _need("curl")
    control, port = _free_on_both("127.0.0.1"), _free_on_both("127.0.0.1", "127.0.0.2")
    shell = Shell(tmp_path, values={"8123": str(control), "8080": str(port)})  # ports that may be taken here
    try:
        server = shell.start_block("one-machine-server")
        started = server.wait_for("event=started")
        client = shell.start_block("one-machine-client")
        connected = client.wait_for("event=connected")
        wait_port(port)  # the block's background site: on a busy machine curl could beat its start (a reset stream)
        for log in (started, connected):  # the README's own steps draw no warning (a token file others may read)
            assert "warning" not in log.lower(), log
        code, out = shell.run_block("one-machine-request")
        assert code == 0 and out.endswith("\nHello through the tunnel\n"), out  # after curl's progress meter
    finally:
        shell.close()


def test_the_quoted_one_machine_refusal_is_the_servers_own_words() -> None:
    text = " ".join(README.read_text().split())
    quoted = re.search(r"the client is then refused with `([^`]+)`", text)
    assert quoted is not None
    assert quoted[1] == bind_failure(None, 8080, OSError(errno.EADDRINUSE, "Address already in use"))


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
        wait_port(port)  # else, on a busy machine, the client's dial can beat the site's start (a reset stream)
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


def test_the_http_servers_help_gives_the_readmes_metrics_command() -> None:
    """The help's example once left out the CA (--auto-tls's is private: curl refused the certificate) and used a
    $TOKEN nothing had set, where the README's command works as printed."""
    text = README.read_text()
    metrics = re.search(r"### Metrics\n\n    (.*curl .*)\n", text)[1]  # type: ignore[index]
    result = subprocess.run([str(BIN / "inlets"), "http", "server", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "1000"}, timeout=20)
    assert result.returncode == 0 and metrics in " ".join(result.stdout.split()), (metrics, result.stdout)


def _create_local(shell: Shell) -> tuple[str, re.Match]:
    """``inletsctl create --provider local`` as the README runs it: the server's name, and its client command's
    control port, token file and CA (groups 1-3)."""
    code, out = shell.run(f"inletsctl create --provider local --ports {_free_on_both('127.0.0.1', '127.0.0.2')}",
                          timeout=90)
    assert code == 0, out
    name = re.search(r"^Exit server (\S+) is ready\.$", out, re.M)[1]  # type: ignore[index]
    made = re.search(r"--url wss://127\.0\.0\.1:(\d+) --token-file (\S+) --tls-ca (\S+) ", out)
    if made is None:  # the caller never learns the name: delete it here
        shell.run(f"inletsctl delete {name}")
    assert made is not None, out
    return name, made


def test_the_metrics_curl_for_an_inletsctl_server_works_as_printed(tmp_path: Path) -> None:
    """The README's only curl for /metrics named the server by its address, which an inletsctl server's
    certificate does not carry (it names inlets-exit-server): curl said "no alternative certificate subject name
    matches target host name" (exit 60). The README now gives such a server's own command; it works as printed.
    Both once put the token in curl's arguments (``-H "Authorization: Bearer $(cat token.txt)"``), which ``ps``
    shows to every user of the machine; curl now reads the header from stdin (``-H @-``)."""
    _need("curl")
    shell = Shell(tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{tmp_path}/curl-argv"\nexec {shutil.which("curl")} "$@"\n')
    (shim / "curl").chmod(0o755)
    shell.env["PATH"] = f"{shim}{os.pathsep}{shell.env['PATH']}"
    name = None
    try:
        name, made = _create_local(shell)
        code, out = shell.run(f"cp {made[2]} token.txt && cp {made[3]} ca.crt")
        assert code == 0, out
        shell.values.update({"8123": made[1], "203.0.113.10": "127.0.0.1"})
        by_address = re.search(r"### Metrics\n\n    (.*curl .*)\n", README.read_text())[1]  # type: ignore[index]
        code, out = shell.run(by_address.replace("curl ", "curl -sS ", 1))
        assert code == 60 and "127.0.0.1" in out, out  # why the README needs a second command
        code, out = shell.run(block("metrics-curl-inletsctl").replace("curl ", "curl -sS ", 1))
        assert code == 0 and "\ntcp_controlplane_connected_gauge " in out, out
        token = (tmp_path / "token.txt").read_text().strip()
        argv = (tmp_path / "curl-argv").read_text()
        assert "https://inlets-exit-server:" in argv and token not in argv, argv
    finally:
        if name is not None:
            shell.run(f"inletsctl delete {name}")
        shell.close()


def _targets_health(api: int, jobs: int, timeout: float = 30) -> dict[str, tuple[str, str]]:
    """Each job's (health, lastError) once every one has been scraped (or what was seen by the deadline)."""
    seen: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api}/api/v1/targets", timeout=5) as answer:
                active = json.load(answer)["data"]["activeTargets"]
            seen = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in active}
        except OSError:
            pass  # Prometheus still starting
        if len(seen) == jobs and all(health != "unknown" for health, _ in seen.values()):
            break
        time.sleep(0.2)
    return seen


def test_prometheus_scrapes_with_the_readmes_config_as_printed(tmp_path: Path) -> None:
    """The config's server_name suited only an inletsctl server, where the server just above it, made with
    --auto-tls-san 203.0.113.10, has a certificate for that address alone: Prometheus said "x509: certificate is
    not valid for any names, but wanted to match inlets-exit-server". As printed for the one, without its
    server_name line (as its comment says) for the other, both targets are up."""
    _need("prometheus")
    _need("openssl")
    shell = Shell(tmp_path)
    name = None
    try:
        name, made = _create_local(shell)
        control = _free_on_both("127.0.0.1")
        code, out = shell.run(f"openssl rand -base64 32 > token.txt && chmod 600 token.txt\n"
                              f"cp {made[2]} inletsctl-token.txt && cp {made[3]} inletsctl-ca.crt")
        assert code == 0, out
        shell.start(f"exec inlets tcp server --auto-tls --auto-tls-san 127.0.0.1 --auto-tls-path tls --token-file "
                    f"token.txt --control-addr 127.0.0.1 --control-port {control}").wait_for("event=started")

        printed = block("scrape-config")
        assert printed.startswith("scrape_configs:\n") and printed.count("server_name:") == 1, printed
        inletsctls = (printed.replace("ca.crt", "inletsctl-ca.crt").replace("token.txt", "inletsctl-token.txt")
                      .replace("job_name: inlets", "job_name: inletsctl")
                      .replace("203.0.113.10:8123", f"127.0.0.1:{made[1]}"))
        auto_tls = "".join(line for line in printed.splitlines(keepends=True) if "server_name:" not in line)
        auto_tls = auto_tls.replace("203.0.113.10:8123", f"127.0.0.1:{control}").replace("ca.crt", "tls/ca.crt")
        jobs = auto_tls.split("\n", 1)[1]  # the list under scrape_configs:, one more job in it
        (tmp_path / "prometheus.yml").write_text(f"global:\n  scrape_interval: 1s\n{inletsctls}{jobs}")

        api = free_port()
        shell.start(f"exec prometheus --config.file=prometheus.yml --web.listen-address=127.0.0.1:{api} "
                    "--storage.tsdb.path=data")
        health = _targets_health(api, jobs=2)
        assert health == {"inletsctl": ("up", ""), "inlets": ("up", "")}, health
    finally:
        if name is not None:
            shell.run(f"inletsctl delete {name}")
        shell.close()

def test_the_clouds_table_names_every_variable_each_provider_reads_in_order() -> None:
    """The README says the table and each PROVIDER declaration say the same; it once left out the
    $INLETS_ACCESS_TOKEN five providers read, and Equinix's $PACKET_AUTH_TOKEN."""
    rows = dict(re.findall(r"^\| (\w+) \| (.*) \|$", README.read_text(), re.M))
    for name in registry.PROVIDERS:
        declared = registry.info(name)
        if name in ("local", "ssh"):
            continue
        row = rows[name]
        named = [f"`${env}`" for env in (*declared.token_env, *declared.api_url_env)]
        assert all(env in row for env in named), (name, named, row)
        at = [row.index(env) for env in named[: len(declared.token_env)]]
        assert at == sorted(at), (name, "the token variables in the order they are read", row)


def _reserved_listed(text: str) -> set[bytes]:
    """The header names a "framing ..., Host and hop-by-hop headers (...) are the proxy's own" sentence lists."""
    listed = re.search(r"(Content-Length[\w, ()-]*?) and hop-by-hop headers \(([^)]*)\) are the proxy's own",
                       " ".join(text.split()))
    assert listed is not None, text
    words = re.findall(r"[\w*-]+", listed[1] + "," + listed[2])
    return {word.lower().encode() for word in words if word != "framing"}


def test_the_headers_the_readme_says_a_client_cannot_add_or_remove_are_those_refused() -> None:
    """The README and the refusal said "Proxy-*", yet only three Proxy- headers are hop-by-hop: a client's
    ``--request-header-add 'Proxy-Env: dev'`` was (rightly) accepted, where both said it would be refused."""
    HttpOptions.build(request_add=["Proxy-Env: dev"])  # not hop-by-hop: an app's own header, passed on
    with pytest.raises(OptionError) as refused:
        HttpOptions.build(request_remove=["Proxy-Authorization"])
    assert _reserved_listed(str(refused.value)) == RESERVED
    assert _reserved_listed(README.read_text()) == RESERVED


# ----------------------------------------------------------------- run as a service


def test_generated_unit_as_printed_verifies_and_holds_no_secret(tmp_path: Path) -> None:
    _need("systemd-analyze")
    shell = Shell(tmp_path)  # its `inlets`: one the unit's user can run (the README says to generate from such)
    shell.env["PATH"] = f"{service_inlets().bin}{os.pathsep}{shell.env['PATH']}"
    code, out = shell.run_block("generate-systemd")
    assert code == 0 and out == "", out  # systemd-analyze verify found nothing to say
    unit = (tmp_path / "inlets-http-client.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--bearer-token-file /etc/inlets/bearer-token" in exec_start
    hint = next(line for line in unit.splitlines() if line.startswith("# Before the first start: "))  # the README's pointer
    # where the README says it is ("The comment that opens its [Service] section"; it said "the unit's first comment")
    assert next(line for line in unit.split("\n[Service]\n", 1)[1].splitlines() if line.startswith("#")) == hint
    assert hint.startswith("# Before the first start: useradd --system") and all(
        f in hint for f in ("/etc/inlets/bearer-token", "/etc/inlets/ca.crt", "/etc/inlets/token"))


# ------------------------------------------------------------------- the test tools


def test_the_readme_lists_every_tool_the_tests_install_or_need() -> None:
    text = README.read_text()
    tests = text[text.index("\n## Tests\n"):]
    tests = tests[: tests.index("\n## ", 1)]
    script = (ROOT / "scripts" / "install-test-tools.sh").read_text()
    packages = re.search(r"^apt_packages=\(([^)]*)\)", script, re.M)[1].split()  # type: ignore[index]
    assert packages and all(f"`{p}`" in tests for p in packages + ["nodejs", "npm"]), packages
    assert "**Terraform**" in tests and "/usr/local/bin/terraform" in tests and "$INLETS_TF_PLUGIN_DIRS" in tests
    assert f"`${SPECS_ENV}`" in tests and f"(default `{SPECS_DEFAULT}`" in tests
    assert f"`{SPEC_FILE}`" in tests and "https://github.com/digitalocean/openapi" in tests


# ------------------------------------------------------------- flags and files named


#: flags the README gives to other programs (curl, python -m http.server, systemctl, ...), not ours
_OTHER_PROGRAMS_FLAGS = {
    "--bind": "python3 -m http.server", "--directory": "python3 -m http.server", "--compressed": "curl",
    "--http2": "curl", "--depth": "git clone", "--long": "cloud-init status", "--system": "cloud-init schema",
    "--now": "systemctl enable", "--sdk-auth": "az ad sp create-for-rbac", "--boot": "systemd-nspawn",
    "--variant": "debootstrap", "--minutes": "bench/soak.py", "--connect-to": "curl",
}


_COMMANDS = [("inlets", *c.split()) for c in ("tcp server", "tcp client", "http server", "http client", "status")]
_COMMANDS += [("inletsctl", c) for c in ("create", "list", "status", "delete")]


def _help(command: tuple[str, ...]) -> str:
    """A command's --help, unwrapped."""
    result = subprocess.run([str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "1000"}, timeout=30)
    assert result.returncode == 0, (command, result.stderr)
    return result.stdout


def _helps() -> str:
    """Every command's --help, unwrapped: the flags a reader can actually give."""
    return "\n".join(_help(command) for command in _COMMANDS)


def test_every_flag_the_readme_names_is_one_of_ours_or_another_programs() -> None:
    """The README once sent a reader to `--image` for the VM's image, a flag no command has."""
    ours = set(re.findall(r"--[a-z][a-z0-9-]*", _helps()))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README.read_text()))
    unknown = sorted(named - ours - set(_OTHER_PROGRAMS_FLAGS))
    assert not unknown, f"the README names flags that no inlets or inletsctl command has: {unknown}"


def _printed_commands() -> list[tuple[tuple[str, ...], str]]:
    """Each command the README prints, in a code block or in inline code, as (our command's words, its text
    after them, comments left out); ``inlets tcp|http client`` stands for both."""
    text = re.sub(r"\\\n\s*", " ", README.read_text())  # continuations joined
    code, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            code.append(line)
    found = []
    for span in re.findall(r"`([^`\n]+)`", text) + code:
        for at in re.finditer(r"(?<![\w/.-])inlets(ctl)? (?:(tcp|http|tcp\\\|http) (server|client)|(status|create|list|"
                              r"delete))\b(.*)", span):
            rest = at[5].split(" #")[0]
            if at[1]:
                found.append((("inletsctl", at[4]), rest))
            elif at[4]:
                found += [(("inlets", at[4]), rest)] if at[4] == "status" else []
            else:
                found += [(("inlets", mode, at[3]), rest) for mode in at[2].split("\\|")]
    return found


def test_every_flag_on_a_printed_command_is_that_commands() -> None:
    """The test above asks only that some command have each flag; a command the README prints must itself take
    the flags printed with it (``inlets status ... --tls-server-name`` where only the clients had it would pass)."""
    printed = _printed_commands()
    assert len(printed) >= 40 and {command for command, _ in printed} == set(_COMMANDS), printed
    helps = {command: set(re.findall(r"--[a-z][a-z0-9-]*", _help(command))) for command in _COMMANDS}
    wrong = sorted({(" ".join(command), flag) for command, rest in printed
                    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest) if flag not in helps[command]})
    assert not wrong, f"flags the README prints with a command that does not take them: {wrong}"


def test_the_layout_names_the_system_the_boot_tests_boot() -> None:
    """The layout said the boot tests boot Debian containers after tests/boot/rootfs.py had moved them to Ubuntu."""
    text = README.read_text()
    layout = text[text.index("\n## Layout\n"):]
    boot = re.search(r"`tests/boot/`: ([^;|]*)", layout)
    assert boot is not None, layout
    assert 'SUITE = "noble"' in (ROOT / "tests" / "boot" / "rootfs.py").read_text()  # Ubuntu 24.04's name
    assert "Ubuntu 24.04" in boot[1] and "Debian" not in boot[1], boot[1]


def test_every_file_the_layout_table_names_is_in_its_folder() -> None:
    """The layout once put eyeballs.py in runtime/client/ after it had moved to runtime/core/."""
    text = README.read_text()
    layout = text[text.index("\n## Layout\n"):]
    rows = re.findall(r"^\| `([\w/]+/)` \| (.*) \|$", layout, re.M)
    assert len(rows) >= 8, rows
    missing = [(folder, name) for folder, row in rows for name in re.findall(r"`(?:[\w/]+/)?([\w]+\.py)`", row)
               if not any((ROOT / folder).rglob(name))]
    assert not missing, f"files the Layout table names that are not in the row's folder: {missing}"


# ------------------------------------------------------- log events and metrics quoted

#: fields whose values are a closed set the code writes (a reason, an action), not a number or an address
_CLOSED_FIELDS = ("reason", "action", "proto", "listener")


def test_every_log_event_the_readme_quotes_is_logged_with_the_fields_it_quotes() -> None:
    """A reader greps the log for what the README quotes; an event or field the code does not write finds nothing."""
    quoted, logged, written = readme_events(), code_events(), code_fields()
    assert len(quoted) >= 30, quoted
    unknown = sorted({name for name, _ in quoted if name not in logged})
    assert not unknown, f"events the README quotes that nothing logs: {unknown}"
    fields = sorted({(name, key) for name, quote in quoted for key in quote if key not in logged[name].keys})
    assert not fields, f"fields the README quotes on events whose log lines do not carry them: {fields}"
    values = sorted({(name, f"{key}={value}") for name, quote in quoted for key, value in quote.items()
                     if key in _CLOSED_FIELDS and re.fullmatch(r"[a-z][a-z0-9_]*", value)
                     and f"{key}={value}" not in written and value not in logged[name].words})
    assert not values, f"values the README quotes that the code never writes: {values}"


#: where the values of each closed-set label are written
_LABEL_SOURCES = {"reason": ("runtime/server/tcp.py", "runtime/server/udp.py", "runtime/server/registry.py")}


def _readme_reasons() -> set[str]:
    """The refusal and drop reasons the README's metrics paragraphs list in prose."""
    text = " ".join(README.read_text().split())
    tcp = re.search(r"`tcp_dataplane_refused_total\{port,reason\}` \(a connection the client refused, (.*?), is in", text)
    udp = re.search(r"`udp_dataplane_dropped_total\{port,reason\}` as (.*?), as a congested network", text)
    assert tcp is not None and udp is not None, "the README's lists of reasons moved: update this test"
    return set(re.findall(r"`(\w+)`", tcp[1] + udp[1]))


def test_every_metric_the_readme_quotes_is_exposed_with_those_labels(tls, token) -> None:
    """Scrapes a TCP server carrying TCP and UDP and an HTTP server that served a request, as a reader's curl does."""
    exposed = scrape(run(tcp_and_udp_scrape(tls, token)))
    stack = Stack()
    try:
        _, up = stack.upstream("N")
        server = stack.server(tls, token)
        stack.client(server, tls, token, [f"n.test=http://{LOOPBACK}:{up}"])
        for host, answer in ((b"n.test", b"HTTP/1.1 200"), (b"none.test", b"HTTP/1.1 503")):  # the 503 the proxy's
            assert raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
                               ).startswith(answer)
        control = server.control.addresses[0]
        exposed += scrape(get(parse_url(f"wss://{control[0]}:{control[1]}"), "/metrics", ca_file=Path(tls.ca),
                              token=token).body)
    finally:
        stack.close()
    quoted = readme_metrics()
    assert len(quoted) >= 20, quoted
    wrong = []
    for name, braces in quoted:
        label_sets = [set(labels) for sample, labels in exposed if sample == name]
        selector = dict(re.findall(r'(\w+)="([^"]*)"', braces or ""))
        if not label_sets:
            wrong.append(f"{name}: not exposed")
        elif braces is not None and not selector and set(braces.split(",")) not in label_sets:
            wrong.append(f"{name}{{{braces}}}: its labels are {sorted(label_sets[0])}")
        for label, value in selector.items():
            seen = {labels[label] for sample, labels in exposed if sample == name and label in labels}
            if label in _LABEL_SOURCES:
                seen |= code_literals(*_LABEL_SOURCES[label])
            if value not in seen:
                wrong.append(f'{name}{{{label}="{value}"}}: no such {label}')
    assert not wrong, f"metrics the README quotes that the servers do not expose so: {wrong}"
    unknown = sorted(_readme_reasons() - code_literals(*_LABEL_SOURCES["reason"]))
    assert not unknown, f"reasons the README lists that the data plane never counts: {unknown}"
