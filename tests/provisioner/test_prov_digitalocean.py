"""The DigitalOcean provider's whole lifecycle against a stateful fake of its API on loopback."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from helpers.prov_fake_do import DO_TOKEN, FakeDigitalOcean
from helpers.prov_support import (
    assert_server_answered,
    free_port, get_through, http_upstream, one_line_error, run_cli, run_client, run_inletsctl,
)

TOKEN = DO_TOKEN  # conftest's token_file and fake take it


def _do(fake: FakeDigitalOcean, token_file: Path, state: Path, *args: str) -> list[str]:
    return [*args, "--api-url", fake.url, "--access-token-file", str(token_file), "--state-dir", str(state)]


def test_create_waits_then_the_printed_client_carries_traffic(fake: FakeDigitalOcean, token_file: Path, tmp_path: Path) -> None:
    """The droplet "boots" the user-data's own server; the printed command connects to it."""
    state, port, control = tmp_path / "state", free_port(), free_port()
    created = run_inletsctl(*_do(fake, token_file, state, "create", "do-e2e", "--provider", "digitalocean",
                                 "--ports", str(port), "--control-port", str(control), "--ttl", "2h",
                                 "--json", "--timeout", "30"))
    assert created.code == 0, created.err
    summary = created.json()
    (droplet_id,) = fake.droplets
    ip = fake.ip_of(droplet_id)
    assert (summary["id"], summary["ip"], summary["endpoints"]) == (str(droplet_id), ip, [f"{ip}:{port}"])
    sent = next(body for method, path, body in fake.requests if method == "POST")
    assert sent["region"] == "lon1" and sent["size"] == "s-1vcpu-1gb" and sent["image"] == "ubuntu-24-04-x64"
    assert "inlets" in sent["tags"] and "inlets-mode:tcp" in sent["tags"]
    assert any(t.startswith("inlets-expires:") for t in sent["tags"])
    assert sent["user_data"].startswith("#cloud-config")
    token = (state / "do-e2e" / "token").read_text().strip()
    assert token in sent["user_data"] and token not in created.out + created.err
    with http_upstream(port), run_client(summary["client_command"], tmp_path / "client.log"):
        logs = (tmp_path / "client.log", fake.workdir / f"droplet-{droplet_id}" / "server.log")
        assert get_through(f"http://{ip}:{port}/via-droplet", logs=logs) == "hello from the upstream, path=/via-droplet"
    listed = run_inletsctl(*_do(fake, token_file, state, "list", "--provider", "digitalocean", "--json"))
    (row,) = listed.json()["servers"]
    assert (row["name"], row["where"], row["ip"], row["mode"]) == ("do-e2e", "both", ip, "tcp")
    assert row["expires"] == summary["expires_at"]
    status = run_inletsctl(*_do(fake, token_file, state, "status", "do-e2e", "--json"))
    assert_server_answered(status)
    assert status.json()["vm"].startswith("droplet status 'active'")
    deleted = run_inletsctl(*_do(fake, token_file, state, "delete", "do-e2e"))
    assert deleted.code == 0, deleted.err
    assert fake.droplets == {} and fake.processes == {} and not (state / "do-e2e").exists()


def test_http_mode_from_an_embedded_wheel_routes_by_host(fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """The default: the droplet runs the runtime installed from the server wheel inside its user-data."""
    state, data_port, upstream_port, control = tmp_path / "state", free_port(), free_port(), free_port()
    created = run_cli(capsys, *_do(fake, token_file, state, "create", "do-http", "--provider", "digitalocean",
                                   "--mode", "http", "--domain", "site.example.test", "--http-port", str(data_port),
                                   "--upstream", f"http://127.0.0.1:{upstream_port}", "--control-port", str(control),
                                   "--json", "--timeout", "30"))
    assert created.code == 0, created.err
    summary = created.json()
    (argv,) = fake.booted.values()
    assert argv[:2] == [sys.executable, "-c"] and "http" in argv  # not this venv's inlets: the wheel's
    try:
        with http_upstream(upstream_port), run_client(summary["client_command"], tmp_path / "client.log"):
            logs = (tmp_path / "client.log", fake.workdir / f"droplet-{summary['id']}" / "server.log")
            body = get_through(f"http://{summary['ip']}:{data_port}/from-wheel", host="site.example.test", logs=logs)
            assert body == "hello from the upstream, path=/from-wheel"
    finally:
        assert run_cli(capsys, *_do(fake, token_file, state, "delete", "do-http")).code == 0


def test_credentials_come_from_file_flag_then_environment(fake: FakeDigitalOcean, tmp_path: Path, capsys, monkeypatch) -> None:
    state = tmp_path / "state"
    monkeypatch.delenv("DIGITALOCEAN_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("INLETS_ACCESS_TOKEN", raising=False)
    missing = run_cli(capsys, "list", "--provider", "digitalocean", "--api-url", fake.url, "--state-dir", str(state))
    one_line_error(missing, "--access-token-file", "--access-token", "DIGITALOCEAN_ACCESS_TOKEN", "INLETS_ACCESS_TOKEN")
    monkeypatch.setenv("INLETS_ACCESS_TOKEN", TOKEN)
    assert run_cli(capsys, "list", "--provider", "digitalocean", "--api-url", fake.url, "--state-dir", str(state)).code == 0
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", "wrong")
    rejected = run_cli(capsys, "list", "--provider", "digitalocean", "--api-url", fake.url, "--state-dir", str(state))
    one_line_error(rejected, "access token ($DIGITALOCEAN_ACCESS_TOKEN) rejected (401)")  # the variable to fix
    flagged = run_cli(capsys, "list", "--provider", "digitalocean", "--api-url", fake.url, "--access-token", TOKEN,
                      "--state-dir", str(state))
    assert flagged.code == 0, flagged.err
    unreadable = tmp_path / "a-directory"
    unreadable.mkdir()
    bad_file = run_cli(capsys, "list", "--provider", "digitalocean", "--api-url", fake.url,
                       "--access-token-file", str(unreadable), "--access-token", TOKEN, "--state-dir", str(state))
    one_line_error(bad_file, f"access token file {unreadable} is a directory: give the file that holds the token")


def test_api_errors_are_one_line_and_leave_nothing_behind(fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    bad_region = run_cli(capsys, *_do(fake, token_file, state, "create", "x1", "--provider", "digitalocean", "--region", "mars1"))
    one_line_error(bad_region, "invalid region", "422")
    bad_plan = run_cli(capsys, *_do(fake, token_file, state, "create", "x1", "--provider", "digitalocean", "--plan", "huge"))
    one_line_error(bad_plan, "invalid size", "422")
    assert fake.droplets == {} and not (state / "x1").exists()
    with FakeDigitalOcean("another-token", tmp_path / "other") as other:
        wrong = run_cli(capsys, "create", "x1", "--provider", "digitalocean", "--api-url", other.url,
                        "--access-token-file", str(token_file), "--state-dir", str(state))
    one_line_error(wrong, f"access token (--access-token-file {token_file}) rejected (401)")
    unreachable = run_cli(capsys, "create", "x1", "--provider", "digitalocean", "--api-url", f"http://127.0.0.1:{free_port()}",
                          "--access-token-file", str(token_file), "--state-dir", str(state))
    one_line_error(unreachable, "cannot reach the API")
    assert not (state / "x1").exists()


@pytest.mark.parametrize("fault, says", [
    ({"create_answer": (500, {"id": "server_error", "message": "Server Error"})}, "Server Error"),
    ({"create_answer": (202, {"links": {}})}, "it has no 'droplet' field"),
    ({"create_delay": 2.0}, "no answer in time"),
], ids=["500", "no-droplet-field", "no-answer-in-time"])
def test_a_create_whose_answer_goes_wrong_finds_the_droplet_it_made_anyway(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys, fault: dict, says: str) -> None:
    """DigitalOcean made the droplet but its answer never came whole: the error says so and how to delete it,
    and the local state stays for that (it was removed, and the error said only "try again")."""
    state = tmp_path / "state"
    for key, value in fault.items():
        setattr(fake, key, value)
    kept = run_cli(capsys, *_do(fake, token_file, state, "create", "made", "--provider", "digitalocean", "--timeout", "1"))
    (droplet_id,) = fake.droplets
    one_line_error(kept, says, f"digitalocean created 'made' all the same (id {droplet_id})", "inletsctl delete made")
    assert json.loads((state / "made" / "server.json").read_text())["id"] == str(droplet_id)
    fake.create_answer, fake.create_delay = None, 0.0
    gone = run_cli(capsys, *_do(fake, token_file, state, "delete", "made"))
    assert gone.code == 0 and fake.droplets == {} and not (state / "made").exists(), gone
    for key, value in fault.items():
        setattr(fake, key, value)
    cleaned = run_cli(capsys, *_do(fake, token_file, state, "create", "made", "--provider", "digitalocean",
                                   "--timeout", "1", "--delete-on-failure"))
    one_line_error(cleaned, says, "created 'made' all the same", "deleted it (--delete-on-failure)")
    assert fake.droplets == {} and not (state / "made").exists()


def test_a_create_with_no_answer_whose_droplet_comes_later_keeps_the_state_delete_needs(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """The create call went out and no answer came in time, and DigitalOcean made the droplet only after create had
    looked for it: the local state went, token and all, and the droplet ran on, billed, that `delete` said it did not
    know. The state now stays, and the error names the delete that finds it by name; the API was reached, so it no
    longer says "cannot reach the API"."""
    import time

    state = tmp_path / "state"
    fake.create_delay, fake.create_late = 2.0, True
    kept = run_cli(capsys, *_do(fake, token_file, state, "create", "late", "--provider", "digitalocean", "--timeout", "1"))
    one_line_error(kept, "went out, then no answer in time", "digitalocean does not list 'late' yet but may still make it",
                   "`inletsctl delete late --state-dir")
    assert "cannot reach" not in kept.err and (state / "late" / "server.json").exists()
    deadline = time.monotonic() + 10
    while not fake.droplets and time.monotonic() < deadline:
        time.sleep(0.05)
    fake.create_delay, fake.create_late = 0.0, False
    gone = run_cli(capsys, *_do(fake, token_file, state, "delete", "late"))
    assert gone.code == 0 and fake.droplets == {} and not (state / "late").exists(), gone


def test_a_create_that_fails_where_nobody_can_tell_keeps_the_state_delete_needs(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """The API falls over after making the droplet, so the look for it fails too: the state stays and the
    error says the delete command that finds the droplet by name (or only removes the state)."""
    state = tmp_path / "state"
    fake.create_answer = fake.broken_after_create = (503, {"id": "service_unavailable", "message": "Service Unavailable"})
    kept = run_cli(capsys, *_do(fake, token_file, state, "create", "unsure", "--provider", "digitalocean"))
    one_line_error(kept, "Service Unavailable", "whether digitalocean created 'unsure' all the same could not be checked",
                   "`inletsctl delete unsure --state-dir", "deletes it if it did")
    assert len(fake.droplets) == 1 and (state / "unsure" / "server.json").exists()
    fake.broken_after_create = None
    gone = run_cli(capsys, *_do(fake, token_file, state, "delete", "unsure"))
    assert gone.code == 0 and fake.droplets == {} and not (state / "unsure").exists(), gone


def test_ctrl_c_while_the_create_call_is_under_way_says_how_to_delete_what_it_may_have_made(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path) -> None:
    """Ctrl-C before DigitalOcean answered: no silent exit 130 with the state gone and a droplet billing."""
    import signal
    import subprocess

    from helpers.prov_support import INLETSCTL, user_env

    state = tmp_path / "state"
    fake.create_delay = 30.0
    proc = subprocess.Popen([str(INLETSCTL), *_do(fake, token_file, state, "create", "hurried", "--provider", "digitalocean")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env())
    deadline = time.monotonic() + 30
    while not fake.droplets and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted while creating 'hurried' on digitalocean" in err and "inletsctl delete hurried" in err, err
    fake.create_delay = 0.0
    gone = run_inletsctl(*_do(fake, token_file, state, "delete", "hurried"))
    assert gone.code == 0 and fake.droplets == {} and not (state / "hurried").exists(), gone


def test_a_rate_limited_poll_while_the_droplet_boots_is_waited_out(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """One 429 while create polled the droplet ended create ('wait a minute and try again; delete it with ...'),
    and with --delete-on-failure deleted a droplet that was booting fine."""
    state = tmp_path / "state"
    fake.rate_limited_reads = 2
    created = run_cli(capsys, *_do(fake, token_file, state, "create", "limited", "--provider", "digitalocean",
                                   "--ports", str(free_port()), "--control-port", str(free_port()), "--timeout", "60",
                                   "--delete-on-failure", "--json"))
    assert created.code == 0, created.err
    assert fake.rate_limited_reads == 0 and len(fake.droplets) == 1
    assert run_cli(capsys, *_do(fake, token_file, state, "delete", "limited")).code == 0


def test_a_failing_api_while_the_droplet_boots_is_asked_again_when_it_says(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """A 5xx while create polled the droplet (the API's own trouble) ended create, and with --delete-on-failure
    deleted a droplet that was booting fine; a 429's Retry-After was not waited for (the next poll came 2 s later)."""
    state = tmp_path / "state"
    fake.failed_reads = [(503, {}), (429, {"Retry-After": "3"}), (502, {})]
    created = run_cli(capsys, *_do(fake, token_file, state, "create", "shaky", "--provider", "digitalocean",
                                   "--ports", str(free_port()), "--control-port", str(free_port()), "--timeout", "60",
                                   "--delete-on-failure", "--json"))
    assert created.code == 0, created.err
    assert fake.failed_reads == [] and len(fake.droplets) == 1
    assert fake.read_times[2] - fake.read_times[1] >= 2.9, fake.read_times  # the 429's, then the next ask (not 2 s)
    assert run_cli(capsys, *_do(fake, token_file, state, "delete", "shaky")).code == 0


def test_names_already_taken_locally_or_in_the_cloud(fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    fake.add_droplet("taken-in-cloud", ["inlets"])
    cloud = run_cli(capsys, *_do(fake, token_file, state, "create", "taken-in-cloud", "--provider", "digitalocean"))
    one_line_error(cloud, "already has an exit server named 'taken-in-cloud'")
    (state / "taken-here").mkdir(parents=True)
    (state / "taken-here" / "server.json").write_text(json.dumps({"name": "taken-here", "provider": "digitalocean"}))
    here = run_cli(capsys, *_do(fake, token_file, state, "create", "taken-here", "--provider", "digitalocean"))
    one_line_error(here, "already exists")
    assert len(fake.droplets) == 1


def test_never_active_times_out_non_zero_then_delete_on_failure(token_file: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", active=False) as stuck:
        started = time.monotonic()
        kept = run_cli(capsys, *_do(stuck, token_file, state, "create", "stuck", "--provider", "digitalocean", "--timeout", "1"))
        assert time.monotonic() - started < 15
        one_line_error(kept, "timed out", "droplet status 'new'", "inletsctl delete stuck")
        assert len(stuck.droplets) == 1 and (state / "stuck").exists()
        # no address yet: status says so, and how to delete what create made
        one_line_error(run_cli(capsys, *_do(stuck, token_file, state, "status", "stuck")),
                       "stuck has no IP yet (create did not finish)", "; delete what it made with: inletsctl delete stuck")
        gone = run_cli(capsys, *_do(stuck, token_file, state, "delete", "stuck"))
        assert gone.code == 0 and stuck.droplets == {} and not (state / "stuck").exists(), gone
        cleaned = run_cli(capsys, *_do(stuck, token_file, state, "create", "stuck", "--provider", "digitalocean",
                                       "--timeout", "1", "--delete-on-failure"))
        one_line_error(cleaned, "timed out", "deleted it (--delete-on-failure)")
        assert stuck.droplets == {} and not (state / "stuck").exists()


def test_an_api_url_answering_404_to_everything_never_has_delete_drop_a_running_droplets_state(
        token_file: Path, tmp_path: Path, capsys) -> None:
    """An --api-url with a wrong path (a gateway's prefix left out) answers 404 to every request: delete took the
    DELETE's 404 for "already gone", removed the token and CA and exited 0, the droplet still running; list said
    'not found while listing droplets' with nothing to do."""
    state = tmp_path / "state"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", active=False) as api:
        made = run_cli(capsys, *_do(api, token_file, state, "create", "kept", "--provider", "digitalocean", "--timeout", "1"))
        assert made.code != 0 and len(api.droplets) == 1, made
        wrong = ["--api-url", f"{api.url}/v1", "--access-token-file", str(token_file), "--state-dir", str(state)]
        listed = run_cli(capsys, "list", "--provider", "digitalocean", *wrong)
        one_line_error(listed, "answered not found (404) while listing droplets", "check that --api-url")
        kept = run_cli(capsys, "delete", "kept", *wrong)
        one_line_error(kept, "answered not found (404) while listing droplets", "check that --api-url")
        assert len(api.droplets) == 1 and (state / "kept" / "server.json").exists()
        gone = run_cli(capsys, *_do(api, token_file, state, "delete", "kept"))
        assert gone.code == 0 and api.droplets == {} and not (state / "kept").exists(), gone
        again = run_cli(capsys, *_do(api, token_file, state, "delete", "kept"))
        one_line_error(again, "no exit server named 'kept'")


def test_status_with_an_api_url_answering_404_to_everything_names_it_not_the_droplet_gone(
        token_file: Path, tmp_path: Path, capsys) -> None:
    """status read the droplet's 404 from an --api-url with a wrong path as "gone from digitalocean" and told the
    user to delete it, the droplet still running; the list's 404 now names --api-url (state api_error), as delete's."""
    state = tmp_path / "state"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", active=False) as api:
        made = run_cli(capsys, *_do(api, token_file, state, "create", "kept", "--provider", "digitalocean", "--timeout", "1"))
        assert made.code != 0 and len(api.droplets) == 1, made
        wrong = ["--api-url", f"{api.url}/v1", "--access-token-file", str(token_file), "--state-dir", str(state)]
        said = run_cli(capsys, "status", "kept", *wrong)
        line = one_line_error(said, "answered not found (404) while listing droplets", "check that --api-url")
        assert "gone" not in line, line
        as_json = run_cli(capsys, "status", "kept", "--json", *wrong)
        assert as_json.code == 1 and as_json.json()["state"] == "api_error", as_json
        api.droplets.clear()  # really gone: still said so
        gone = run_cli(capsys, *_do(api, token_file, state, "status", "kept"))
        one_line_error(gone, "exit server kept is gone from digitalocean")


def test_a_create_answered_404_names_what_to_check(token_file: Path, tmp_path: Path, capsys) -> None:
    """A create call answered 404 (a gateway that routes reads only, a region, size or image the API does not know)
    said only "digitalocean: not found while creating droplet 'w'"."""
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", active=False) as api:
        api.create_answer = (404, {"id": "not_found", "message": "The resource you were accessing could not be found."})
        failed = run_cli(capsys, *_do(api, token_file, tmp_path / "state", "create", "w", "--provider", "digitalocean",
                                      "--timeout", "2"))
        one_line_error(failed, f"the API at {api.url} answered not found (404) while creating droplet 'w'",
                       "check that --api-url", "--region", "--plan", "image")


def test_delete_on_failure_whose_api_never_answered_names_the_exit_server(token_file: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """Every poll answered 503, so the wait after --delete-on-failure's DELETE never learned the droplet's name:
    its error said "digitalocean: 300244000 was deleted, ..." (and its progress "waiting for 300244000 ...")."""
    state = tmp_path / "state"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", active=False) as stuck:
        stuck.failed_reads = [(503, {})] * 200
        result = run_cli(capsys, *_do(stuck, token_file, state, "create", "stuck", "--provider", "digitalocean",
                                      "--timeout", "1", "--delete-on-failure"))
    (droplet_id,) = [path.rsplit("/", 1)[1] for method, path, _ in stuck.requests if method == "DELETE"]
    one_line_error(result, f"deleting it also failed (digitalocean: stuck ({droplet_id}) was deleted, but whether")


def test_active_droplet_whose_tunnel_never_answers_times_out_saying_how_to_see_why(
    token_file: Path, tmp_path: Path, capsys
) -> None:
    """The timeout says what it saw, and how to read the cause on the VM: over SSH when the
    droplet got a key, on its console otherwise."""
    state = tmp_path / "state"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud", boot=False) as silent:
        result = run_cli(capsys, *_do(silent, token_file, state, "create", "silent", "--provider", "digitalocean",
                                      "--timeout", "1", "--control-port", str(free_port())))
        # the wheel does not fit DigitalOcean's user-data: the VM waits for create to send it
        line = one_line_error(result, "timed out", "/inlets/runtime-wheel never took the runtime wheel",
                              "inletsctl delete silent", "no SSH key (--ssh-key)", "cloud-init status --long",
                              "journalctl -u inlets")
        assert "(last: cannot reach" in line
        by_spec = run_cli(capsys, *_do(silent, token_file, state, "create", "by-spec", "--provider", "digitalocean",
                                       "--timeout", "1", "--control-port", str(free_port()),
                                       "--runtime-spec", "inlets-py==0.1.0"))  # pip installs it: nothing to send
        one_line_error(by_spec, "timed out", "/healthz never answered", "inletsctl delete by-spec", "cloud-init status")
        keyed = run_cli(capsys, *_do(silent, token_file, state, "create", "keyed", "--provider", "digitalocean",
                                     "--timeout", "1", "--control-port", str(free_port()), "--ssh-key", "12345"))
        ip = silent.ip_of(max(silent.droplets))
        one_line_error(keyed, f"see why with: ssh root@{ip} 'cloud-init status --long; journalctl -u inlets",
                       "inletsctl delete keyed")


def test_list_flags_one_sided_entries_and_delete_by_ip_and_id(fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    fake.gone_after_polls = 2  # deletion takes a moment, as on DigitalOcean
    orphan = fake.add_droplet("made-elsewhere", ["inlets", "inlets-mode:http", "inlets-expires:1700000000"])
    fake.add_droplet("not-ours", ["web"])
    (state / "lost").mkdir(parents=True, mode=0o700)
    (state / "lost" / "server.json").write_text(json.dumps(
        {"name": "lost", "provider": "digitalocean", "id": "123", "ip": "203.0.113.9", "mode": "tcp"}))
    listed = run_cli(capsys, *_do(fake, token_file, state, "list", "--json"))
    rows = {r["name"]: r for r in listed.json()["servers"]}
    assert set(rows) == {"made-elsewhere", "lost"}
    assert rows["made-elsewhere"]["where"] == "digitalocean only" and rows["made-elsewhere"]["mode"] == "http"
    assert rows["made-elsewhere"]["expires"] == "2023-11-14T22:13:20Z"
    assert rows["lost"]["where"] == "local state only"
    table = run_cli(capsys, *_do(fake, token_file, state, "list"))
    assert "digitalocean only" in table.out and "local state only" in table.out
    by_ip = run_cli(capsys, *_do(fake, token_file, state, "delete", "--provider", "digitalocean", "--ip", fake.ip_of(orphan["id"])))
    assert by_ip.code == 0 and orphan["id"] not in fake.droplets, by_ip
    assert by_ip.out.strip() == f"deleted made-elsewhere (digitalocean {orphan['id']})", by_ip  # its name, not its id twice
    missing = run_cli(capsys, *_do(fake, token_file, state, "delete", "--provider", "digitalocean", "--id", "999"))
    one_line_error(missing, "no exit server with id 999")
    no_provider = run_cli(capsys, *_do(fake, token_file, state, "delete", "--ip", "203.0.113.1"))
    one_line_error(no_provider, "--provider")
    lost = run_cli(capsys, *_do(fake, token_file, state, "delete", "lost"))
    assert lost.code == 0 and "already gone" in lost.out and not (state / "lost").exists()
    twins = [fake.add_droplet("twin", ["inlets", "inlets-mode:tcp"]) for _ in range(2)]  # a name cannot tell them
    refused = run_cli(capsys, *_do(fake, token_file, state, "delete", "twin", "--provider", "digitalocean"))
    one_line_error(refused, "digitalocean: 2 exit servers named 'twin'", "say which with --id")
    assert "NAME" not in refused.err and all(twin["id"] in fake.droplets for twin in twins), refused.err


def test_status_of_a_droplet_deleted_elsewhere_says_it_is_gone_and_how_to_clean_up(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """It asked the old address and said only 'did not answer: connection refused; vm: gone'."""
    state, control = tmp_path / "state", free_port()
    (state / "lost").mkdir(parents=True, mode=0o700)
    (state / "lost" / "server.json").write_text(json.dumps(
        {"name": "lost", "provider": "digitalocean", "id": "123", "ip": "127.0.0.1", "mode": "tcp", "control_port": control}))
    result = run_cli(capsys, *_do(fake, token_file, state, "status", "lost"))
    one_line_error(result, "exit server lost is gone from digitalocean (id 123;", "remove its local state with: inletsctl delete lost")
    assert ("GET", "/v2/droplets/123", None) in fake.requests


@pytest.mark.parametrize("ca", [b"", None], ids=["empty", "missing"])
def test_status_with_a_damaged_ca_file_in_the_state_is_one_line(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys, ca: bytes | None) -> None:
    """A ca.crt emptied (a full disk) or left behind (state copied without it) ended status in a traceback."""
    import socket

    state = tmp_path / "state"
    droplet = fake.add_droplet("kept", ["inlets", "inlets-mode:tcp"])
    ip = fake.ip_of(droplet["id"])
    with socket.create_server((ip, 0)) as control:  # the exit server's control port: it listens
        (state / "kept").mkdir(parents=True, mode=0o700)
        (state / "kept" / "server.json").write_text(json.dumps(
            {"name": "kept", "provider": "digitalocean", "id": str(droplet["id"]), "ip": ip, "mode": "tcp",
             "control_port": control.getsockname()[1]}))
        (state / "kept" / "token").write_text("t" * 64 + "\n")
        if ca is not None:
            (state / "kept" / "ca.crt").write_bytes(ca)
        result = run_cli(capsys, *_do(fake, token_file, state, "status", "kept"))
    one_line_error(result, str(state / "kept" / "ca.crt"), "put back a copy of it", "inletsctl delete kept")


def test_status_of_a_control_port_that_never_answers_says_so_in_words(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """Something accepts on the control port and says nothing: the error was OpenSSL's
    '_ssl.c:989: The handshake operation timed out'."""
    import socket

    from inlets_py.runtime.core.certs import generate_ca

    state = tmp_path / "state"
    droplet = fake.add_droplet("quiet", ["inlets", "inlets-mode:tcp"])
    ip = fake.ip_of(droplet["id"])
    with socket.create_server((ip, 0)) as silent:
        port = silent.getsockname()[1]
        (state / "quiet").mkdir(parents=True, mode=0o700)
        (state / "quiet" / "server.json").write_text(json.dumps(
            {"name": "quiet", "provider": "digitalocean", "id": str(droplet["id"]), "ip": ip, "mode": "tcp",
             "control_port": port}))
        (state / "quiet" / "token").write_text("t" * 64 + "\n")
        (state / "quiet" / "ca.crt").write_bytes(generate_ca(common_name="quiet test CA").cert)
        result = run_cli(capsys, *_do(fake, token_file, state, "status", "quiet"))
    line = one_line_error(result, f"{ip}:{port} accepted the connection but gave no answer within 5s")
    assert "_ssl.c" not in line


def test_delete_by_id_never_deletes_a_droplet_inletsctl_did_not_make(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """`delete --provider digitalocean --id N` deleted any droplet: a mistyped id took down a database."""
    state = tmp_path / "state"
    database = fake.add_droplet("prod-db", ["web"])
    refused = run_cli(capsys, *_do(fake, token_file, state, "delete", "--provider", "digitalocean", "--id", str(database["id"])))
    one_line_error(refused, f"no exit server with id {database['id']} among those inletsctl made (tagged inlets)")
    assert database["id"] in fake.droplets and not [r for r in fake.requests if r[0] == "DELETE"]
    ours = fake.add_droplet("made-elsewhere", ["inlets", "inlets-mode:tcp"])
    deleted = run_cli(capsys, *_do(fake, token_file, state, "delete", "--provider", "digitalocean", "--id", str(ours["id"])))
    assert deleted.code == 0 and ours["id"] not in fake.droplets, deleted.err


def test_prune_deletes_expired_droplets_only(fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    expired = fake.add_droplet("expired-one", ["inlets", "inlets-expires:1700000000"])
    alive = fake.add_droplet("alive-one", ["inlets", f"inlets-expires:{int(time.time()) + 3600}"])
    pruned = run_cli(capsys, *_do(fake, token_file, state, "list", "--provider", "digitalocean", "--prune", "--json"))
    assert pruned.code == 0, pruned.err
    assert expired["id"] not in fake.droplets and alive["id"] in fake.droplets
    assert [r["name"] for r in pruned.json()["servers"]] == ["alive-one"]


def test_delete_of_a_droplet_that_never_goes_is_one_line_and_keeps_the_local_state(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    fake.gone_after_polls = 10**6  # DigitalOcean accepts the DELETE, the droplet stays
    stuck = fake.add_droplet("stuck", ["inlets", "inlets-mode:tcp"])
    (state / "stuck").mkdir(parents=True, mode=0o700)
    (state / "stuck" / "server.json").write_text(json.dumps(
        {"name": "stuck", "provider": "digitalocean", "id": str(stuck["id"]), "ip": "203.0.113.9", "mode": "tcp"}))
    result = run_cli(capsys, *_do(fake, token_file, state, "delete", "stuck", "--timeout", "1"))
    one_line_error(result, f"digitalocean: stuck ({stuck['id']}) is still there 1s after it was deleted", "delete again")
    assert (state / "stuck" / "server.json").exists()  # so the same delete can be run again


def test_a_delete_whose_api_never_answered_does_not_say_the_droplet_is_still_there(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """Every poll after the DELETE answered 503: the error said the droplet 'is still there', which nothing showed."""
    state = tmp_path / "state"
    droplet = fake.add_droplet("unseen", ["inlets", "inlets-mode:tcp"])
    fake.failed_reads = [(503, {})] * 50
    result = run_cli(capsys, *_do(fake, token_file, state, "delete", "--provider", "digitalocean", "--id",
                                  str(droplet["id"]), "--timeout", "1"))
    line = one_line_error(result, f"digitalocean: unseen ({droplet['id']})", "the API failed (digitalocean: ",
                          "run the delete again later")
    assert "still there" not in line, line
    assert ("DELETE", f"/v2/droplets/{droplet['id']}", None) in fake.requests


def test_create_json_of_a_droplet_that_never_serves_gives_the_ip_it_was_seen_at(token_file: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    """The error said "'x' is active at IP but ... never took the runtime wheel", and the --json object beside it
    "ip": null."""
    state = tmp_path / "state"
    with FakeDigitalOcean(TOKEN, tmp_path / "cloud") as mute:  # active, with an address, and nothing serving there
        for extra, word in (([], "no_ip"), (["--delete-on-failure"], "gone")):
            answer = run_cli(capsys, *_do(mute, token_file, state, "create", "mute", "--provider", "digitalocean",
                                          "--control-port", str(free_port()), "--timeout", "1", "--json", *extra))
            shown = answer.json()
            ip = mute.ip_of(int(shown["id"])) if word == "no_ip" else shown["ip"]
            one_line_error(answer, f"timed out after 1s: 'mute' is active at {ip} but")
            assert (shown["state"], shown["ip"]) == (word, ip) and ip, shown
            if word == "no_ip":
                assert run_cli(capsys, *_do(mute, token_file, state, "delete", "mute")).code == 0
        assert mute.droplets == {} and not (state / "mute").exists()


def test_status_json_of_a_cloud_failure_is_one_object_with_the_error_and_a_state(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """A droplet gone, or an API that failed: --json printed nothing on stdout, only the error on stderr."""
    state = tmp_path / "state"
    sick = fake.add_droplet("sick", ["inlets", "inlets-mode:tcp"])
    for name, droplet_id in (("lost", 123), ("sick", sick["id"])):
        (state / name).mkdir(parents=True, mode=0o700)
        (state / name / "server.json").write_text(json.dumps(
            {"name": name, "provider": "digitalocean", "id": str(droplet_id), "ip": "127.0.0.1", "mode": "tcp",
             "control_port": free_port()}))
    cases = {"lost": ("gone", "is gone from digitalocean"), "sick": ("api_error", "")}
    for name, (word, needle) in cases.items():
        fake.failed_reads = [(401, {})] * 2 if name == "sick" else []  # a revoked token: no retry helps
        plain = run_cli(capsys, *_do(fake, token_file, state, "status", name))
        line = one_line_error(plain, needle)
        assert plain.out == "", plain
        answer = run_cli(capsys, *_do(fake, token_file, state, "status", name, "--json"))
        assert (answer.code, one_line_error(answer, needle)) == (plain.code, line), answer
        shown = answer.json()
        assert (shown["name"], shown["state"], shown["error"]) == (name, word, line.partition("error: ")[2]), shown
        assert (shown["provider"], shown["ip"], "server" in shown) == ("digitalocean", "127.0.0.1", False), shown
    bare = run_cli(capsys, "status", "lost", "--json", "--api-url", fake.url, "--state-dir", str(state),
                   "--access-token-file", str(tmp_path / "no-such-file"))
    assert bare.json()["state"] == "no_credentials" and bare.json()["provider"] == "digitalocean", bare
    assert bare.json()["error"] == one_line_error(bare).partition("error: ")[2]


def test_list_json_of_a_cloud_failure_is_one_object_with_the_local_rows_the_error_and_a_state(
        fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    """A revoked token (401) or none at all: list --json --provider printed nothing on stdout, only stderr's line."""
    state = tmp_path / "state"
    (state / "web1").mkdir(parents=True, mode=0o700)
    (state / "web1" / "server.json").write_text(json.dumps(
        {"name": "web1", "provider": "digitalocean", "id": "123", "ip": "127.0.0.1", "mode": "tcp"}))
    revoked = tmp_path / "revoked-token"
    revoked.write_text("not-the-token\n")
    revoked.chmod(0o600)
    for word, token in (("api_error", str(revoked)), ("no_credentials", str(tmp_path / "no-such-file"))):
        args = ["list", "--provider", "digitalocean", "--api-url", fake.url, "--access-token-file", token,
                "--state-dir", str(state)]
        plain = run_cli(capsys, *args)
        line = one_line_error(plain, "rejected (401)" if word == "api_error" else "access token file not found")
        assert plain.out == "", plain
        answer = run_cli(capsys, *args, "--json")
        assert (answer.code, one_line_error(answer)) == (plain.code, line), answer
        shown = answer.json()
        assert (shown["state"], shown["error"], shown["pruned"]) == (word, line.partition("error: ")[2], []), shown
        assert [(r["name"], r["status"], r["where"]) for r in shown["servers"]] == [
            ("web1", "unknown", "local state (cloud not checked)")], shown
