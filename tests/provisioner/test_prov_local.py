"""The local provider end to end, as the README runs it: create, the printed client, traffic, delete."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.prov_support import (
    INLETSCTL,
    Result,
    assert_server_answered,
    free_port, get_through, http_upstream, one_line_error, run_cli, run_client, run_inletsctl, user_env,
)


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def test_create_client_traffic_list_status_delete(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port("127.0.0.2")
    created = run_inletsctl("create", "readme-demo", "--provider", "local", "--ports", str(port),
                            "--state-dir", str(state), "--json", "--timeout", "30")
    assert created.code == 0, created.err
    summary = created.json()
    token = (state / "readme-demo" / "token").read_text().strip()
    assert len(token) == 64 and token not in created.out + created.err  # never printed without --show-token
    assert summary["endpoints"] == [f"127.0.0.2:{port}"]
    assert "--tls-server-name inlets-exit-server" in summary["client_command"]
    assert summary["client_command"].startswith("inlets tcp client --url wss://127.0.0.1:")
    with http_upstream(port), run_client(summary["client_command"], tmp_path / "client.log"):
        body = get_through(f"http://127.0.0.2:{port}/crossed", logs=(tmp_path / "client.log", state / "readme-demo" / "server.log"))
        assert body == "hello from the upstream, path=/crossed"
    listed = run_inletsctl("list", "--state-dir", str(state), "--json")
    assert listed.code == 0, listed.err
    (row,) = listed.json()["servers"]
    assert (row["name"], row["provider"], row["where"], row["status"]) == ("readme-demo", "local", "both", "active")
    status = run_inletsctl("status", "readme-demo", "--state-dir", str(state), "--json")
    assert_server_answered(status)
    human = run_inletsctl("status", "readme-demo", "--state-dir", str(state))
    assert human.code == 0 and "server" in human.out, human
    assert human.out.splitlines()[4].startswith("local     process "), human.out  # was "vm": no VM here
    pid = int(summary["id"])
    deleted = run_inletsctl("delete", "readme-demo", "--state-dir", str(state))
    assert deleted.code == 0, deleted.err
    assert not _pid_alive(pid) and not (state / "readme-demo").exists()
    again = run_inletsctl("delete", "readme-demo", "--state-dir", str(state))
    one_line_error(again, "no exit server named 'readme-demo'")


def test_secrets_are_private_and_pinned(tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "private-one", "--state-dir", str(state), "--ports", str(free_port("127.0.0.2")),
                      "--show-token", "--json", "--timeout", "30")
    assert created.code == 0, created.err
    folder = state / "private-one"
    try:
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        for secret in ("token", "server.key", "server.json", "server.log"):
            assert stat.S_IMODE(os.stat(folder / secret).st_mode) == 0o600, secret
        assert not (folder / "ca.key").exists()  # nobody can mint another certificate
        assert created.json()["token"] == (folder / "token").read_text().strip()
        from cryptography import x509
        cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
        ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["inlets-exit-server"]
        # the server refuses a client pinned to another CA (no trust on first use)
        from inlets_py.provisioner.wait import healthz_error
        meta = created.json()
        other = tmp_path / "other-ca.crt"
        from inlets_py.runtime.core.certs import generate_ca
        other.write_bytes(generate_ca().cert)
        assert healthz_error("127.0.0.1", meta["control_port"], folder / "ca.crt") is None
        refused = healthz_error("127.0.0.1", meta["control_port"], other) or ""
        # in inletsctl's words: the probe's named the client's --tls-ca, which create has not (a probe's finding)
        assert "is not the exit server inletsctl made" in refused and "--tls-ca" not in refused, refused
    finally:
        assert run_cli(capsys, "delete", "private-one", "--state-dir", str(state)).code == 0


def test_server_that_cannot_start_fails_fast_and_says_how_to_delete(tmp_path: Path, capsys, monkeypatch) -> None:
    """A server that exits at once. A control port in use is refused before it starts now, so the server here
    is a stand-in process failing as inlets does when its port is taken between the check and its start."""
    import sys

    from inlets_py.provisioner.providers import local

    message = ("inlets: error: cannot listen on 127.0.0.1:1 (control port): Address already in use: another program "
               "uses it: stop it, or give another --control-port")
    monkeypatch.setattr(local, "inlets_command", lambda: [sys.executable, "-c", f"import sys; sys.exit({message!r})"])
    state = tmp_path / "state"
    started = time.monotonic()
    result = run_cli(capsys, "create", "doomed", "--state-dir", str(state), "--ports", str(free_port("127.0.0.2")),
                     "--timeout", "60")
    assert time.monotonic() - started < 30
    one_line_error(result, "exit server 'doomed' failed", message, "inletsctl delete doomed")
    cleaned = run_cli(capsys, "delete", "doomed", "--state-dir", str(state))
    assert cleaned.code == 0 and "already gone" in cleaned.out, cleaned
    assert not (state / "doomed").exists()


def test_a_proxy_setting_that_cannot_work_fails_the_wait_at_once(tmp_path: Path, capsys, monkeypatch) -> None:
    """The wait for /healthz goes through the environment's proxy; one it can never use (a scheme nobody
    speaks) was polled like a server still starting, until --timeout (600 s by default)."""
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ALL_PROXY", "gopher://corp:70")
    state = tmp_path / "state"
    started = time.monotonic()
    result = run_cli(capsys, "create", "proxied", "--state-dir", str(state), "--ports", str(free_port("127.0.0.2")),
                     "--timeout", "60")
    assert time.monotonic() - started < 30
    one_line_error(result, "ALL_PROXY: proxy scheme 'gopher' is not supported", "the client command would fail the same way",
                   "inletsctl delete proxied")
    monkeypatch.delenv("ALL_PROXY")
    cleaned = run_cli(capsys, "delete", "proxied", "--state-dir", str(state))
    assert cleaned.code == 0 and not (state / "proxied").exists(), cleaned


def test_ttl_stops_the_server_and_prune_removes_it(tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "short-lived", "--state-dir", str(state), "--ttl", "5s",
                      "--ports", str(free_port("127.0.0.2")), "--json", "--timeout", "30")
    assert created.code == 0, created.err
    assert created.json()["expires_at"]
    pid = int(created.json()["id"])
    deadline = time.monotonic() + 30
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pid_alive(pid), "the exit server outlived its --ttl"
    time.sleep(1.0)  # the expiry is recorded with second precision
    listed = run_cli(capsys, "list", "--state-dir", str(state), "--json")
    (row,) = listed.json()["servers"]
    assert row["where"] == "local state only" and row["expires"]
    pruned = run_cli(capsys, "list", "--state-dir", str(state), "--prune", "--json")
    assert pruned.code == 0 and pruned.json()["servers"] == [], pruned
    assert not (state / "short-lived").exists()


def test_http_mode_with_a_random_name(tmp_path: Path, capsys) -> None:
    """No NAME: a readable random one. --mode http: the printed client routes by Host."""
    state, data_port, upstream_port = tmp_path / "state", free_port("127.0.0.2"), free_port()
    created = run_cli(capsys, "create", "--mode", "http", "--domain", "app.example.test", "--http-port", str(data_port),
                      "--upstream", f"http://127.0.0.1:{upstream_port}", "--state-dir", str(state), "--json")
    assert created.code == 0, created.err
    summary = created.json()
    assert len(summary["name"].split("-")) == 3
    inlets, mode, role = summary["client_command"].split()[:3]  # inlets: the full path where PATH lacks this one
    assert (mode, role) == ("http", "client") and Path(inlets).name == "inlets", summary["client_command"]
    assert f"--upstream app.example.test=http://127.0.0.1:{upstream_port}" in summary["client_command"]
    # 'public http://app.example.test:PORT' alone: a name no DNS points at 127.0.0.2, where the server listens
    assert summary["served_at"] == f"127.0.0.2:{data_port}", summary
    try:
        with http_upstream(upstream_port), run_client(summary["client_command"], tmp_path / "client.log"):
            logs = (tmp_path / "client.log", state / summary["name"] / "server.log")
            body = get_through(f"http://127.0.0.2:{data_port}/by-host", host="app.example.test", logs=logs)
            assert body == "hello from the upstream, path=/by-host"
    finally:
        assert run_cli(capsys, "delete", summary["name"], "--state-dir", str(state)).code == 0


def test_create_progress_reads_as_progress_not_failure(tmp_path: Path) -> None:
    """A first poll that finds the server not yet listening is not a 'Connection refused' error."""
    state = tmp_path / "state"
    created = run_inletsctl("create", "calm", "--provider", "local", "--ports", str(free_port("127.0.0.2")),
                            "--state-dir", str(state), "--timeout", "30")
    try:
        assert created.code == 0, created.err
        assert "refused" not in created.err.lower() and "''" not in created.err, created.err
        assert created.err.splitlines()[:2] == ["inletsctl: generating token and TLS material",
                                                "inletsctl: creating 'calm' on local"], created.err
    finally:
        assert run_inletsctl("delete", "calm", "--state-dir", str(state)).code == 0


def test_create_refuses_a_port_another_local_exit_server_serves(tmp_path: Path, capsys) -> None:
    """The first server opens its data port only once a client comes: create must not wait for that clash."""
    state, other = tmp_path / "state", tmp_path / "other-state"
    port = free_port("127.0.0.2")
    first = run_cli(capsys, "create", "first", "--state-dir", str(state), "--ports", str(port), "--json")
    assert first.code == 0, first.err
    try:
        again = run_cli(capsys, "create", "second", "--state-dir", str(other), "--ports", f"{port + 1},{port}")
        one_line_error(again, f"port {port} is already served by the local exit server 'first' (127.0.0.2): "
                              f"choose other --ports, or first: inletsctl delete first --state-dir {state}")
        assert not (other / "second").exists()
        with socket.socket() as busy:  # and a port something else holds there
            busy.bind(("127.0.0.2", 0))
            busy.listen()
            held = busy.getsockname()[1]
            taken = run_cli(capsys, "create", "third", "--state-dir", str(other), "--ports", str(held))
        one_line_error(taken, f"127.0.0.2:{held} cannot be used on this machine (Address already in use): "
                              "choose other --ports")
    finally:
        assert run_cli(capsys, "delete", "first", "--state-dir", str(state)).code == 0



@pytest.mark.parametrize("data_flags", [["--ports"], ["--mode", "http", "--http-port"]], ids=["tcp", "http"])
def test_a_control_port_in_use_is_refused_before_anything_is_made(data_flags: list[str], tmp_path: Path, capsys) -> None:
    """As the data ports: refused up front, not found out when the server exits, leaving state to delete."""
    state = tmp_path / "state"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        held = busy.getsockname()[1]
        try:
            result = run_cli(capsys, "create", "clash", *data_flags, str(free_port("127.0.0.2")), "--control-port",
                             str(held), "--timeout", "20", "--state-dir", str(state))
            one_line_error(result, f"127.0.0.1:{held} cannot be used on this machine (Address already in use): "
                                   "choose another --control-port, or leave it out for a free one")
        finally:
            if (state / "clash" / "server.json").exists():
                run_cli(capsys, "delete", "clash", "--state-dir", str(state))
    assert not (state / "clash").exists()


def test_status_of_a_killed_server_says_it_is_not_running_and_what_to_do(tmp_path: Path, capsys) -> None:
    """Not the log's last line (an INFO line from when it started) and not 'connection refused'."""
    import signal

    state = tmp_path / "state"
    created = run_cli(capsys, "create", "gone-away", "--ports", str(free_port("127.0.0.2")), "--json", "--state-dir",
                      str(state))
    assert created.code == 0, created.err
    pid = int(created.json()["id"])
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = run_cli(capsys, "status", "gone-away", "--state-dir", str(state))
    line = one_line_error(status, f"exit server gone-away is not running (its process {pid} has exited): delete it and "
                                  f"create it again: inletsctl delete gone-away --state-dir {state}")
    assert "level=INFO" not in line and "refused" not in line, line
    assert run_cli(capsys, "delete", "gone-away", "--state-dir", str(state)).code == 0


def test_the_same_state_folder_spelled_another_way_finds_the_server(tmp_path: Path, capsys) -> None:
    """Created through a symlink, listed and deleted by the real path (or a/../b): the same folder, the same server,
    never 'already gone' while it keeps running."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    created = run_cli(capsys, "create", "spelled", "--ports", str(free_port("127.0.0.2")), "--json",
                      "--state-dir", str(tmp_path / "link"))
    assert created.code == 0, created.err
    pid = int(created.json()["id"])
    try:
        listed = run_cli(capsys, "list", "--json", "--state-dir", str(real / ".." / "real"))
        (row,) = listed.json()["servers"]
        assert (row["name"], row["status"], row["where"]) == ("spelled", "active", "both"), row
        deleted = run_cli(capsys, "delete", "spelled", "--provider", "local", "--state-dir", str(real))
        assert deleted.code == 0 and deleted.out.startswith(f"deleted spelled (local {pid})"), deleted
        assert not _pid_alive(pid) and not (real / "spelled").exists()
    finally:
        if _pid_alive(pid):
            os.killpg(pid, 15)


def test_delete_by_an_ip_two_servers_share_is_refused_naming_both(tmp_path: Path, capsys) -> None:
    """Every local exit server has 127.0.0.1: --ip cannot say which, so nothing is deleted and the names are listed."""
    state = tmp_path / "state"
    pids = {}
    try:
        for name in ("alpha", "beta"):
            created = run_cli(capsys, "create", name, "--ports", str(free_port("127.0.0.2")), "--json",
                              "--state-dir", str(state))
            assert created.code == 0, created.err
            pids[name] = int(created.json()["id"])
        refused = run_cli(capsys, "delete", "--provider", "local", "--ip", "127.0.0.1", "--state-dir", str(state))
        line = one_line_error(refused, "local: 2 exit servers with IP 127.0.0.1: ", "say which with its NAME or --id")
        assert all(f"{name} (--id {pid})" in line for name, pid in pids.items()), line
        assert all(_pid_alive(pid) for pid in pids.values()) and (state / "alpha").is_dir() and (state / "beta").is_dir()
    finally:
        for pid in pids.values():
            if _pid_alive(pid):
                os.killpg(pid, 15)


@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_after_the_server_started_says_what_is_left_and_how_to_delete_it(tmp_path: Path, sig: str,
                                                                                 status: int) -> None:
    """SIGINT while create waits for the server it started: one line naming it and the delete command, exit 130;
    the server is left running (as a failed wait leaves it) and that command removes it. SIGTERM (a `timeout`, a
    CI job's end) is taken the same way, exit 143: it ended create without a word, the server left running."""
    import json
    import signal

    from helpers.prov_support import Result

    state = tmp_path / "state"
    for attempt in range(3):  # the server may answer before the signal lands: then try again
        name = f"hasty-{attempt}"
        proc = subprocess.Popen([str(INLETSCTL), "create", name, "--ports", str(free_port("127.0.0.2")), "--state-dir",
                                 str(state), "--timeout", "30"], env=user_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline, pid = time.monotonic() + 30, None
        while pid is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                pid = json.loads((state / name / "server.json").read_text()).get("id")
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=30)
        meta = json.loads((state / name / "server.json").read_text())
        if "client_command" in meta:  # it was ready (printing its summary, or done) before the signal landed
            assert proc.returncode in (0, status) and (proc.returncode == 0 or "is ready; see its client command with"
                                                       in err), (proc.returncode, err)
            assert run_inletsctl("delete", name, "--state-dir", str(state)).code == 0
            continue
        try:
            assert proc.returncode == status, (proc.returncode, err)
            one_line_error(Result(proc.returncode, out, err), f"interrupted: exit server {name!r} was left on local "
                           f"(id {pid}) without its client command; delete it with: inletsctl delete {name} "
                           f"--state-dir {state}")
            assert _pid_alive(int(pid)) and "client_command" not in meta
            deleted = run_inletsctl("delete", name, "--state-dir", str(state))
            assert deleted.code == 0 and not _pid_alive(int(pid)), deleted
        finally:
            if pid is not None and _pid_alive(int(pid)):
                os.killpg(int(pid), 15)
        return
    pytest.fail("create finished before SIGINT three times in a row")


def test_a_ttl_server_whose_wrapper_was_killed_is_still_listed_and_deleted(tmp_path: Path) -> None:
    """--ttl runs the server under coreutils' timeout, whose pid create prints; `kill -9` of that id left the
    server itself serving, listed as absent, and `delete` removed its state but not the server."""
    import signal

    state = tmp_path / "state"
    created = run_inletsctl("create", "wrapped", "--ttl", "1h", "--ports", str(free_port("127.0.0.2")), "--json",
                            "--state-dir", str(state), "--timeout", "30")
    assert created.code == 0, created.err
    wrapper = int(created.json()["id"])
    inner = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != wrapper
             and _pid_alive(int(p.name)) and _sid(int(p.name)) == wrapper]
    assert len(inner) == 1, inner
    os.kill(wrapper, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(wrapper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(wrapper) and _pid_alive(inner[0])
    listed = run_inletsctl("list", "--state-dir", str(state), "--json")
    (row,) = listed.json()["servers"]
    assert (row["where"], row["status"], row["id"]) == ("both", "active", str(wrapper)), row
    deleted = run_inletsctl("delete", "wrapped", "--state-dir", str(state))
    assert deleted.code == 0 and "deleted wrapped" in deleted.out, deleted
    deadline = time.monotonic() + 10
    while _pid_alive(inner[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(inner[0]), "the exit server outlived its delete"
    assert not (state / "wrapped").exists()


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_delete_of_a_damaged_state_stops_its_local_server(tmp_path: Path, capsys) -> None:
    """`list` showed the server running beside its damaged state, yet `delete NAME` removed only the state
    and left the server serving (whose pid the summary had printed)."""
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "cut-short", "--ports", str(free_port("127.0.0.2")), "--json", "--state-dir",
                      str(state), "--timeout", "30")
    assert created.code == 0, created.err
    pid = int(created.json()["id"])
    meta = state / "cut-short" / "server.json"
    meta.write_bytes(meta.read_bytes()[:50])
    deleted = run_cli(capsys, "delete", "cut-short", "--state-dir", str(state))
    assert deleted.code == 0, deleted
    assert f"deleted cut-short (local {pid}); removed its damaged local state" in deleted.out, deleted.out
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid), "the exit server outlived its delete"
    assert not (state / "cut-short").exists()
    assert run_cli(capsys, "list", "--state-dir", str(state), "--json").json()["servers"] == []



def test_a_create_run_while_another_starts_its_server_on_that_port_is_refused(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:
    """Two creates at once (two terminals, a script) each checked the port before either server had started,
    so both servers took it: the README's "create refuses a port another local exit server already serves"
    held only one at a time. Here the second create runs just as the first is about to start its server."""
    import subprocess

    state, port = tmp_path / "state", str(free_port("127.0.0.2"))
    real_popen = subprocess.Popen
    second: list = []

    def popen(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not second and "server" in argv:  # the first create's server, about to start
            second.append(run_inletsctl("create", "second", "--ports", port, "--state-dir", str(state),
                                        "--timeout", "30"))
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    first = run_cli(capsys, "create", "first", "--ports", port, "--state-dir", str(state), "--timeout", "30")
    monkeypatch.undo()
    try:
        assert first.code == 0, first.err
        one_line_error(second[0], f"127.0.0.2:{port} cannot be used on this machine", "choose other --ports")
        assert not (state / "second").exists()
    finally:
        for name, result in (("first", first), ("second", second[0])):
            if result.code == 0:
                run_cli(capsys, "delete", name, "--state-dir", str(state))


def _ctrl_c(*_args, **_kwargs):
    raise KeyboardInterrupt  # what SIGINT's default handler raises, at the exact point the test picks


def test_ctrl_c_between_the_wait_and_the_summary_says_what_to_do(tmp_path: Path, capsys, monkeypatch) -> None:
    """A Ctrl-C in the ~30 ms after the wait (hit 3 times in 40 by hand) exited 130 without a word: the server left
    running, its state without an address or a client command. Here it lands in each of the two places."""
    from inlets_py.provisioner import create, output

    state = tmp_path / "state"
    with monkeypatch.context() as patch:  # while the client command is being made: nothing printed yet
        patch.setattr(create, "client_command", _ctrl_c)
        cut = run_cli(capsys, "create", "cut-early", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state))
    assert cut.code == 130, cut
    one_line_error(cut, "interrupted: exit server 'cut-early' was left on local", "without its client command; delete "
                   f"it with: inletsctl delete cut-early --state-dir {state}")
    with monkeypatch.context() as patch:  # while the summary is printed: the server is up and recorded
        patch.setattr(output, "print_summary", _ctrl_c)
        late = run_cli(capsys, "create", "cut-late", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state))
    _ready_after_ctrl_c(capsys, late, "cut-late", state)
    for name in ("cut-early", "cut-late"):
        assert run_cli(capsys, "delete", name, "--state-dir", str(state)).code == 0
    assert not any(state.iterdir())


def _ready_after_ctrl_c(capsys, cut, name: str, state: Path) -> None:
    """A Ctrl-C once the server and its client command were recorded: exit 130, one line saying it is ready and
    how to see that command, and ``status`` shows it."""
    assert cut.code == 130, cut
    one_line_error(cut, f"interrupted: exit server {name!r} is ready; see its client command with: "
                   f"inletsctl status {name} --state-dir {state}")
    shown = run_cli(capsys, "status", name, "--state-dir", str(state))
    client = [line for line in shown.out.splitlines() if line.startswith("client    ")]
    assert shown.code == 0 and len(client) == 1 and "inlets tcp client --url wss://127.0.0.1:" in client[0], shown


def test_ctrl_c_while_the_summary_is_made_says_the_server_is_ready(tmp_path: Path, capsys, monkeypatch) -> None:
    """Between create's last save (the client command recorded) and its return, a Ctrl-C exited 130 without a word
    (2 of 25 real SIGINTs by a review helper, with a long PATH slowing the summary's command lookup): the server up,
    nobody told. Here it lands while the summary is made."""
    from inlets_py.provisioner import create

    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        patch.setattr(create, "summary", _ctrl_c)
        cut = run_cli(capsys, "create", "cut-summary", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state))
    _ready_after_ctrl_c(capsys, cut, "cut-summary", state)
    assert run_cli(capsys, "delete", "cut-summary", "--state-dir", str(state)).code == 0
    assert not any(state.iterdir())


def test_a_signal_while_click_parses_or_during_delete_is_said_with_its_own_status(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """A review helper's findings: SIGTERM while click parsed the flags exited 130 (click's Abort hid the TERM
    under it); a Ctrl-C during delete exited 130 without a word, the server perhaps half deleted."""
    import signal

    from inlets_py.provisioner import flags, manage
    from inlets_py.provisioner.errors import raise_interrupted

    def term(*_args, **_kwargs):
        raise_interrupted(signal.SIGTERM, None)  # the script's SIGTERM handler, at the point the test picks

    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        patch.setattr(flags, "refuse_empty", term)
        cut = run_cli(capsys, "list", "--state-dir", str(state))
    assert cut.code == 143 and "Traceback" not in cut.err, cut
    created = run_cli(capsys, "create", "cut-delete", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state))
    assert created.code == 0, created
    with monkeypatch.context() as patch:  # the process was told to stop; delete waits for it to go
        patch.setattr(manage, "wait_until_gone", _ctrl_c)
        cut = run_cli(capsys, "delete", "cut-delete", "--state-dir", str(state))
    assert cut.code == 130, cut
    one_line_error(cut, "interrupted while deleting 'cut-delete', which may be partly deleted: run inletsctl delete "
                   f"cut-delete --state-dir {state} again to finish")
    assert run_cli(capsys, "delete", "cut-delete", "--state-dir", str(state)).code == 0
    assert not any(state.iterdir())


def test_once_the_work_is_done_and_said_a_signal_no_longer_kills_the_script() -> None:
    """A Ctrl-C after create's summary was printed (5 of 40 tries by a review helper) killed the process by the
    signal during the interpreter's exit: a script saw a failed create for a server that was made and shown."""
    code = ("import os, signal\n"
            "from inlets_py.provisioner.errors import finished, raise_interrupted\n"
            "signal.signal(signal.SIGTERM, raise_interrupted)  # as the inletsctl script does\n"
            "finished()\n"
            "os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGTERM)\n"
            "print('still here')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "still here\n"), done


def test_a_file_in_the_way_of_a_name_is_named_not_taken_for_an_exit_server(tmp_path: Path, capsys) -> None:
    """A file or a dangling link named like the server: create said 'already exists ... first: inletsctl delete
    NAME', and that delete said there was no such exit server."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "a-file").write_text("mine\n")
    (state / "a-link").symlink_to(tmp_path / "nowhere")
    for name, what in (("a-file", "file"), ("a-link", "symbolic link")):
        refused = run_cli(capsys, "create", name, "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state))
        one_line_error(refused, f"{state / name} is in the way of an exit server named {name!r}: it is a {what}, not "
                       "inletsctl's; move it away, or choose another name")
    assert (state / "a-file").read_text() == "mine\n" and (state / "a-link").is_symlink()


@pytest.mark.parametrize("args, message", [
    (["--upstream", "127.0.0.1:18080"], "invalid --upstream '127.0.0.1:18080' for --mode tcp: give the host alone"),
    (["--upstream", "19991=127.0.0.1:18080"], "invalid --upstream '19991=127.0.0.1:18080' for --mode tcp: give the host"),
])
def test_flags_create_would_take_otherwise_than_meant_are_refused(tmp_path: Path, capsys, args, message) -> None:
    """The tcp --upstream error offered PUBLIC_PORT=HOST:PORT, which create always refused."""
    one_line_error(run_cli(capsys, "create", "flags", *args, "--state-dir", str(tmp_path / "state")), message)
    assert not (tmp_path / "state" / "flags").exists()


def test_a_name_taken_between_the_check_and_the_reservation_names_the_state_folder(tmp_path: Path) -> None:
    """Of two creates of one name at once, the loser was told 'run: inletsctl delete same': the default state
    folder's, where another exit server may have that name."""
    from inlets_py.provisioner.errors import ProvisionError
    from inlets_py.provisioner.state import ServerState

    ServerState(tmp_path, "same").reserve()
    with pytest.raises(ProvisionError) as raised:
        ServerState(tmp_path, "same").reserve()
    assert str(raised.value).endswith(f"choose another name, or first: inletsctl delete same --state-dir {tmp_path}")


def test_a_delete_run_while_create_waits_is_said_without_a_delete_command_that_finds_nothing(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """create ended '... disappeared while waiting for its tunnel; delete it with: inletsctl delete r1', and that
    command said 'no exit server named r1': the other delete had removed the server and its state."""
    from inlets_py.provisioner import create

    state = tmp_path / "state"
    real_wait = create.wait_until_ready

    def delete_first(*args, **kwargs):  # the user's other terminal: delete, as the wait begins
        deleted = subprocess.run([str(INLETSCTL), "delete", "r1", "--state-dir", str(state)], capture_output=True,
                                 text=True, timeout=60, env=user_env())
        assert deleted.returncode == 0, deleted.stderr
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(create, "wait_until_ready", delete_first)
    result = run_cli(capsys, "create", "r1", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state),
                     "--timeout", "30")
    line = one_line_error(result, "exit server 'r1' disappeared while waiting for it to start; it was deleted meanwhile")
    assert "inletsctl delete" not in line


def test_a_state_naming_a_provider_this_inletsctl_does_not_know_is_removed_by_delete(tmp_path: Path, capsys) -> None:
    """status called it damaged and said to delete it; delete said 'unknown provider', list --prune kept it."""
    state = tmp_path / "state"
    (state / "a").mkdir(parents=True, mode=0o700)
    (state / "a" / "server.json").write_text('{"name": "a", "provider": "bogus"}')
    one_line_error(run_cli(capsys, "status", "a", "--state-dir", str(state)),
                   "server.json names provider 'bogus', which this inletsctl does not know; remove it with: "
                   f"inletsctl delete a --state-dir {state}")
    deleted = run_cli(capsys, "delete", "a", "--state-dir", str(state))
    assert deleted.code == 0 and "removed the damaged local state of a" in deleted.out, deleted
    assert "--provider bogus" not in deleted.out and not (state / "a").exists()


def test_a_port_an_inlets_server_not_made_here_serves_names_no_delete_that_would_take_its_files(
        tmp_path: Path, capsys) -> None:
    """A server ``--provider ssh`` installed on this machine (token in /etc/inlets/NAME) was called a local exit
    server with 'first: inletsctl delete NAME --state-dir /etc/inlets', which removes its token and key as damaged
    local state and leaves it running."""
    from helpers.process import server_args, spawn, terminate, wait_port
    from helpers.tunnel import make_tls

    folder = tmp_path / "etc" / "edge"
    folder.mkdir(parents=True)
    (folder / "token").write_text("a-token-of-at-least-sixteen-chars\n")
    port, control = free_port("127.0.0.2"), free_port()
    args = server_args(control, make_tls(tmp_path / "tls"), folder / "token", "--allow-ports", str(port))
    args[args.index("--data-addr") + 1] = "127.0.0.2"
    server = spawn(*args, log=tmp_path / "server.log")
    try:
        wait_port(control)
        line = one_line_error(run_cli(capsys, "create", "second", "--state-dir", str(tmp_path / "state"), "--ports", str(port)),
                              f"port {port} is already served by another inlets server on this machine (pid {server.pid}",
                              f"token file {folder / 'token'}", "stop that server first")
        assert "inletsctl delete" not in line
    finally:
        terminate(server)
    assert (folder / "token").is_file()


def test_status_json_of_a_server_that_does_not_answer_is_json_saying_so_and_exits_1(tmp_path: Path, capsys) -> None:
    """--json printed nothing on stdout (only the error on stderr): a script reading it got no JSON at all."""
    import json

    state = tmp_path / "state"
    created = run_cli(capsys, "create", "mute", "--ports", str(free_port("127.0.0.2")), "--json", "--state-dir", str(state))
    assert created.code == 0, created.err
    pid = int(created.json()["id"])
    try:
        meta = json.loads((state / "mute" / "server.json").read_text())
        closed = free_port()  # nothing listens there: the server "does not answer"
        (state / "mute" / "server.json").write_text(json.dumps(meta | {"control_port": closed}))
        down = run_cli(capsys, "status", "mute", "--json", "--state-dir", str(state))
        line = one_line_error(down, f"exit server mute at 127.0.0.1:{closed} did not answer")
        answer = down.json()
        assert (answer["name"], answer["id"], answer["error"]) == ("mute", str(pid), line.partition("error: ")[2]), answer
        assert "server" not in answer and answer["vm"].startswith(f"process {pid} running"), answer
        plain = run_cli(capsys, "status", "mute", "--state-dir", str(state))  # without --json: the one line, as before
        assert plain.out == "" and one_line_error(plain, "did not answer") == line, plain
    finally:
        assert run_cli(capsys, "delete", "mute", "--state-dir", str(state)).code == 0
        assert not _pid_alive(pid)



def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a process given its write end as stderr stops at its first line until read."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    for size in (4096, 1):  # pages, then single bytes: not even a short line fits
        try:
            while True:
                os.write(write_end, b"\0" * size)
        except BlockingIOError:
            pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def _read_all(fd: int) -> str:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read().lstrip(b"\0").decode()


def test_of_three_creates_of_one_name_run_at_once_exactly_one_wins(tmp_path: Path) -> None:
    """Three ``inletsctl create same`` processes at once (three terminals, a script), all past the name check
    before any reserves the name: with the reservation not exclusive (``mkdir(exist_ok=True)``) all three made an
    exit server of that name. Each create's first line ('generating token and TLS material', said after the check)
    waits on a full stderr pipe, so all three are released together; one wins and the others say so in one line."""
    state = tmp_path / "state"
    procs, readers = [], []
    for _ in range(3):
        read_end, write_end = _full_pipe()
        procs.append(subprocess.Popen(
            [str(INLETSCTL), "create", "same", "--provider", "local", "--ports", str(free_port("127.0.0.2")),
             "--state-dir", str(state), "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=write_end, text=True, env=user_env(), stdin=subprocess.DEVNULL))
        os.close(write_end)
        readers.append(read_end)
    deadline = time.monotonic() + 60
    while not all(Path(f"/proc/{p.pid}/wchan").read_text().endswith("pipe_write") or p.poll() is not None
                  for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    with ThreadPoolExecutor(3) as pool:  # read all three at once: each goes on as its pipe empties
        errs = list(pool.map(_read_all, readers))
    results = [Result(p.wait(timeout=90), p.stdout.read(), err) for p, err in zip(procs, errs)]  # type: ignore
    pids = [int(line.split()[1]) for r in results for line in r.out.splitlines() if line.strip().startswith("id ")]
    try:
        assert [r.code for r in results].count(0) == 1, [(r.code, r.err) for r in results]
        for loser in (r for r in results if r.code != 0):
            one_line_error(loser, "same", "choose another name")
        listed = run_inletsctl("list", "--state-dir", str(state))
        assert [line.split()[0] for line in listed.out.splitlines()[1:]] == ["same"], listed.out
    finally:
        run_inletsctl("delete", "same", "--state-dir", str(state))
        for pid in pids:  # a second server of the name (the defect) has no state of its own to delete it by
            if _pid_alive(pid):
                os.kill(pid, 15)


def test_status_json_of_every_other_failure_is_one_object_with_the_error_and_a_state(tmp_path: Path, capsys) -> None:
    """A server stopped, a name not there or invalid, a damaged state: --json printed nothing on stdout, only the
    error on stderr, so a script reading it got no JSON at all."""
    import json
    import signal

    state = tmp_path / "state"
    created = run_cli(capsys, "create", "halted", "--ports", str(free_port("127.0.0.2")), "--json", "--state-dir", str(state))
    assert created.code == 0, created.err
    pid = int(created.json()["id"])
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        (state / "cut").mkdir(mode=0o700)
        (state / "cut" / "server.json").write_text("{")
        cases = {"halted": ("stopped", "exit server halted is not running"), "nosuch": ("not_found", "no exit server named"),
                 "Bad_Name": ("invalid", "invalid name 'Bad_Name'"), "cut": ("damaged", "the local state of 'cut' is damaged")}
        for name, (word, needle) in cases.items():
            plain = run_cli(capsys, "status", name, "--state-dir", str(state))
            line = one_line_error(plain, needle)
            assert plain.out == "", plain
            answer = run_cli(capsys, "status", name, "--json", "--state-dir", str(state))
            assert (answer.code, one_line_error(answer, needle)) == (plain.code, line), answer
            shown = answer.json()
            assert (shown["name"], shown["state"], shown["error"]) == (name, word, line.partition("error: ")[2]), shown
            assert "server" not in shown, shown
        halted = json.loads(run_cli(capsys, "status", "halted", "--json", "--state-dir", str(state)).out)
        assert (halted["provider"], halted["id"], halted["vm"]) == ("local", str(pid), f"its process {pid} has exited")
        empty = run_cli(capsys, "status", "halted", "--region", "", "--json", "--state-dir", str(state))  # a flag
        line = one_line_error(empty, "--region is empty")  # refused before status ran: no JSON came, README says one
        assert empty.json() == {"name": "halted", "error": line.partition("error: ")[2], "state": "invalid"}, empty
    finally:
        run_cli(capsys, "delete", "halted", "--state-dir", str(state))


def test_the_server_gets_none_of_the_creates_secrets_nor_its_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    """The server inherited create's whole environment, a cloud token and AWS secret key with it, readable in its
    /proc/PID/environ for as long as it ran; and its working folder, which stayed busy (no unmount) meanwhile."""
    secrets = {"DIGITALOCEAN_ACCESS_TOKEN": "dop_v1_secretvalue", "AWS_SECRET_ACCESS_KEY": "awssecret",
               "INLETS_TOKEN": "inlets-token-of-the-shell", "INLETS_PROXY_PASSWORD": "proxypass"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TZ", "UTC")
    where = tmp_path / "where-create-ran"
    where.mkdir()
    monkeypatch.chdir(where)
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "clean-env", "--ports", str(free_port("127.0.0.2")), "--json",
                      "--state-dir", str(state), "--timeout", "30")
    assert created.code == 0, created.err
    try:
        pid = int(created.json()["id"])
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        environ = dict(entry.decode().partition("=")[::2] for entry in raw.split(b"\0") if entry)
        assert not any(value.encode() in raw for value in secrets.values()), sorted(environ)
        assert environ["PATH"] == os.environ["PATH"] and environ["HOME"] == os.environ["HOME"], environ
        assert environ["TZ"] == "UTC", environ  # what it reads (its log's clock, its keys' home) is kept
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert_server_answered(run_cli(capsys, "status", "clean-env", "--json", "--state-dir", str(state)))
    finally:
        assert run_cli(capsys, "delete", "clean-env", "--state-dir", str(state)).code == 0


def _never_listening(monkeypatch) -> None:
    """A stand-in server that runs and never listens: a wait for it lasts exactly as long as --timeout lets it."""
    from inlets_py.provisioner.providers import local

    monkeypatch.setattr(local, "inlets_command", lambda: [sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_timeout_under_a_second_is_waited_as_given(tmp_path: Path, capsys, monkeypatch) -> None:
    """--timeout takes 0.001 and up, and create waited at least 1 s whatever it was given."""
    from inlets_py.provisioner import create

    _never_listening(monkeypatch)
    real_wait, waits = create.wait_until_ready, []

    def timed(*args, **kwargs):
        started = time.monotonic()
        try:
            return real_wait(*args, **kwargs)
        finally:
            waits.append(time.monotonic() - started)

    monkeypatch.setattr(create, "wait_until_ready", timed)
    state = tmp_path / "state"
    result = run_cli(capsys, "create", "hasty", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state),
                     "--timeout", "0.05", "--delete-on-failure")
    one_line_error(result, "timed out after 0.05s: 'hasty' is active", "never answered", "deleted it (--delete-on-failure)")
    assert len(waits) == 1 and waits[0] < 0.8, waits  # one look at the server and its port, then the deadline
    assert not (state / "hasty").exists()


def test_create_json_of_a_failure_is_one_object_with_the_error_and_a_state(tmp_path: Path, capsys, monkeypatch) -> None:
    """create --json printed nothing on stdout when it failed, only the error on stderr, where list --json and
    status --json print one object: what was known, the error (stderr's line) and a state word."""
    monkeypatch.delenv("DIGITALOCEAN_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("INLETS_ACCESS_TOKEN", raising=False)
    state, port = tmp_path / "state", free_port("127.0.0.2")
    with socket.socket() as taken:  # something else serves the port asked for: refused before anything is made
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        cases = [(["Bad_Name"], 2, "invalid", "invalid name 'Bad_Name'"),
                 (["x", "--provider", "nosuch"], 2, "invalid", "unknown provider 'nosuch'"),
                 (["x", "--ports", ""], 2, "invalid", "--ports"),
                 (["x", "--provider", "digitalocean"], 2, "no_credentials", "no DigitalOcean access token"),
                 (["x", "--ports", busy], 1, "invalid", f"127.0.0.2:{busy} cannot be used on this machine")]
        for args, code, word, needle in cases:
            plain = run_cli(capsys, "create", *args, "--state-dir", str(state))
            line = one_line_error(plain, needle)
            assert (plain.code, plain.out) == (code, ""), plain
            answer = run_cli(capsys, "create", *args, "--json", "--state-dir", str(state))
            assert (answer.code, one_line_error(answer, needle)) == (code, line), answer
            shown = answer.json()
            assert (shown["name"], shown["state"], shown["error"]) == (args[0], word, line.partition("error: ")[2])
            assert (shown["id"], shown["ip"]) == (None, None) and "client_command" not in shown, shown
    _never_listening(monkeypatch)  # made, then the wait fails: its id, and how it was left
    for extra, word in (([], "no_ip"), (["--delete-on-failure"], "gone")):
        answer = run_cli(capsys, "create", "slow", "--ports", str(port), "--timeout", "0.05", "--json",
                         "--state-dir", str(state), *extra)
        line = one_line_error(answer, "timed out after 0.05s: 'slow' is active")
        shown = answer.json()
        assert (answer.code, shown["state"], shown["error"]) == (1, word, line.partition("error: ")[2]), shown
        assert (shown["name"], shown["provider"]) == ("slow", "local") and shown["id"].isdigit(), shown
        assert shown["ip"] == "127.0.0.1", shown  # the error's "is active at 127.0.0.1": it was null
        assert _pid_alive(int(shown["id"])) == (word == "no_ip")
        if word == "no_ip":
            assert run_cli(capsys, "delete", "slow", "--state-dir", str(state)).code == 0
    assert not any(state.iterdir())


def test_a_failed_create_that_keeps_its_folder_for_a_file_not_its_own_says_so(tmp_path: Path, capsys,
                                                                              monkeypatch) -> None:
    """A file put in the folder while create ran kept it on failure: the error named neither the folder nor what to
    do, --json said "no_ip" (made and kept for a delete, which then found no exit server), and --delete-on-failure
    said "deleted it" though the folder stayed."""
    from inlets_py.provisioner.providers import local

    real_create = local.LocalProvider.create

    def meanwhile(self, plan):  # the user's editor, a backup tool: a file of its own in the new folder
        (plan.state_dir / "notes.txt").write_text("mine\n")
        return real_create(self, plan)

    monkeypatch.setattr(local.LocalProvider, "create", meanwhile)
    state = tmp_path / "state"
    def kept(name: str) -> str:
        return (f"kept {state / name}: it also holds what inletsctl did not write there ('notes.txt'); move that "
                "away, then remove the folder")

    with socket.socket() as taken:  # nothing is made: the port asked for is someone else's
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        answer = run_cli(capsys, "create", "busy", "--ports", busy, "--json", "--state-dir", str(state))
    line = one_line_error(answer, f"127.0.0.2:{busy} cannot be used on this machine", kept("busy"))
    assert "delete" not in line and answer.json()["state"] == "invalid", answer.out
    assert [p.name for p in (state / "busy").iterdir()] == ["notes.txt"]
    _never_listening(monkeypatch)  # made, then deleted (--delete-on-failure): the folder still stays
    answer = run_cli(capsys, "create", "slow", "--ports", str(free_port("127.0.0.2")), "--timeout", "0.05", "--json",
                     "--state-dir", str(state), "--delete-on-failure")
    line = one_line_error(answer, "timed out after 0.05s", f"deleted the exit server (--delete-on-failure), but "
                          f"{kept('slow')}")
    assert "deleted it" not in line and answer.json()["state"] == "gone", answer.out
    assert not _pid_alive(int(answer.json()["id"]))
    assert [p.name for p in (state / "slow").iterdir()] == ["notes.txt"]
