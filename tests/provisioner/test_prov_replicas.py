"""``inletsctl create --replicas 2`` on DigitalOcean: two droplets sharing token and CA behind a load balancer.

Against the stateful fake (tests/provisioner/prov_fake_do.py), whose balancer really forwards on
loopback with the PROXY protocol; Prism checks the balancer requests in test_prov_prism.py.
"""

from __future__ import annotations

import datetime
import shlex
import signal
import time
from pathlib import Path

from helpers.prov_fake_do import FakeDigitalOcean
from helpers.prov_support import free_port, get_through, http_upstream, one_line_error, run_cli, run_client
from test_prov_digitalocean import _do  # the same flags (conftest: the same fake and token)

def _create(fake: FakeDigitalOcean, token_file: Path, state: Path, capsys, *more: str) -> dict:
    port, control = free_port(), free_port()
    created = run_cli(capsys, *_do(fake, token_file, state, "create", "ha", "--provider", "digitalocean", "--replicas", "2",
                                   "--ports", str(port), "--control-port", str(control), "--json", "--timeout", "60",
                                   *more))
    assert created.code == 0, created.err
    return created.json()


def test_two_droplets_one_token_behind_a_balancer_one_client_command(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys
) -> None:
    state = tmp_path / "state"
    summary = _create(fake, token_file, state, capsys)
    port = summary["ports"][0]
    assert sorted(d["name"] for d in fake.droplets.values()) == ["ha-1", "ha-2"]
    (balancer,) = fake.balancers.values()
    assert balancer["name"] == "ha" and sorted(balancer["droplet_ids"]) == sorted(fake.droplets)
    assert balancer["forwarding_rules"] == [{"entry_protocol": "tcp", "entry_port": port, "target_protocol": "tcp",
                                             "target_port": port}]
    assert balancer["health_check"]["protocol"] == "tcp" and balancer["health_check"]["port"] == port
    assert balancer["enable_proxy_protocol"] is True
    sent = [body for method, path, body in fake.requests if method == "POST" and path == "/v2/droplets"]
    assert len(sent) == 2 and sent[0]["user_data"] == sent[1]["user_data"]  # the same token, CA and server key
    assert all("inlets-group:ha" in body["tags"] for body in sent)
    for argv in fake.booted.values():  # each replica expects the balancer's PROXY header
        assert argv[argv.index("--lb-proxy-protocol") + 1] == "v1"
    # the summary: the balancer is the public endpoint; one client command names both replicas
    assert summary["endpoints"] == [f"{balancer['ip']}:{port}"] and summary["ip"] == balancer["ip"]
    argv = shlex.split(summary["client_command"])
    urls = [argv[i + 1] for i, a in enumerate(argv) if a == "--url"]
    ips = sorted(fake.ip_of(i) for i in fake.droplets)
    assert sorted(urls) == sorted(f"wss://{ip}:{summary['control_port']}" for ip in ips)
    assert argv.count("--token-file") == 1 and argv.count("--tls-ca") == 1
    assert len(summary["status_commands"]) == 2
    # list: one exit server
    listed = run_cli(capsys, *_do(fake, token_file, state, "list", "--json"))
    (row,) = listed.json()["servers"]
    assert (row["name"], row["ip"], row["status"], row["where"]) == ("ha", balancer["ip"], "active", "both")
    assert sorted(r["ip"] for r in row["replicas"]) == ips
    table = run_cli(capsys, *_do(fake, token_file, state, "list")).out.splitlines()
    assert len(table) == 2 and table[1].split()[:2] == ["ha", "digitalocean"]
    # without local state the cloud's tags still make it one exit server
    elsewhere = run_cli(capsys, *_do(fake, token_file, tmp_path / "other-machine", "list", "--provider", "digitalocean",
                                     "--json"))
    (row,) = elsewhere.json()["servers"]
    assert (row["name"], row["ip"], row["where"]) == ("ha", balancer["ip"], "digitalocean only")
    status = run_cli(capsys, *_do(fake, token_file, state, "status", "ha", "--json"))
    assert status.code == 0, status.err
    assert [r["name"] for r in status.json()["replicas"]] == ["ha-1", "ha-2"]
    assert all("server" in r for r in status.json()["replicas"])
    # delete: the balancer and both droplets, waited for
    fake.gone_after_polls = 2
    deleted = run_cli(capsys, *_do(fake, token_file, state, "delete", "ha"))
    assert deleted.code == 0, deleted.err
    assert fake.balancers == {} and fake.droplets == {} and fake.processes == {} and not (state / "ha").exists()
    assert "load balancer" in deleted.out and "ha-1" in deleted.out and "ha-2" in deleted.out


def test_the_printed_client_serves_through_the_balancer_and_survives_a_replica(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys
) -> None:
    """The printed client holds both replicas; the balancer's address answers, also after one replica dies."""
    state = tmp_path / "state"
    summary = _create(fake, token_file, state, capsys)
    port, public = summary["ports"][0], summary["endpoints"][0]
    logs = (tmp_path / "client.log", *(fake.workdir / f"droplet-{i}" / "server.log" for i in fake.droplets))
    try:
        with http_upstream(port), run_client(summary["client_command"], tmp_path / "client.log"):
            for n in range(4):  # round robin: both replicas serve
                assert get_through(f"http://{public}/r{n}", logs=logs) == f"hello from the upstream, path=/r{n}"
            for droplet_id in fake.droplets:
                log = (fake.workdir / f"droplet-{droplet_id}" / "server.log").read_text()
                assert "event=refused" not in log, log  # every connection came with the balancer's header
            first = min(fake.processes)
            fake.processes[first].send_signal(signal.SIGKILL)
            fake.processes[first].wait(timeout=10)
            deadline = time.monotonic() + 20
            for n in range(6):  # the balancer skips the dead one; the client still holds the other
                assert get_through(f"http://{public}/after{n}", logs=logs) == f"hello from the upstream, path=/after{n}"
            assert time.monotonic() < deadline
    finally:
        assert run_cli(capsys, *_do(fake, token_file, state, "delete", "ha")).code == 0
    assert fake.balancers == {} and fake.droplets == {}


def test_replicas_are_refused_where_no_balancer_is_made(tmp_path: Path, capsys) -> None:
    for provider in ("local", "ssh", "hetzner"):
        refused = run_cli(capsys, "create", "--provider", provider, "--replicas", "2", "--state-dir", str(tmp_path))
        one_line_error(refused, f"--replicas is not offered on --provider {provider}", "digitalocean")
    one_line_error(run_cli(capsys, "create", "--provider", "digitalocean", "--replicas", "11", "--state-dir",
                           str(tmp_path)), "'11' is not a whole number from 1 to 10")
    assert not any(tmp_path.iterdir())


def test_replicas_refuse_lets_encrypt(fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys) -> None:
    refused = run_cli(capsys, *_do(fake, token_file, tmp_path / "state", "create", "--provider", "digitalocean",
                                   "--replicas", "2", "--mode", "http", "--domain", "a.example.test", "--letsencrypt"))
    one_line_error(refused, "--replicas", "--no-letsencrypt")
    assert fake.droplets == {} and fake.balancers == {}


def test_a_balancer_made_by_a_create_whose_answer_failed_is_deleted_with_the_group(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys
) -> None:
    """DigitalOcean made the balancer, then the answer failed (a 500, a cut connection): create failed, and delete
    removed the droplets only. The balancer stayed, billed, and list said nothing was left."""
    made = fake._create_balancer

    def made_then_failed(body: dict) -> tuple[int, dict]:
        made(body)
        return 500, {"id": "server_error", "message": "Server Error"}

    fake._create_balancer = made_then_failed  # type: ignore[method-assign]
    state = tmp_path / "state"
    failed = run_cli(capsys, *_do(fake, token_file, state, "create", "ha", "--provider", "digitalocean", "--replicas",
                                  "2", "--ports", str(free_port()), "--control-port", str(free_port()), "--timeout", "60"))
    one_line_error(failed, "Server Error", "inletsctl delete ha")
    assert len(fake.balancers) == 1 and len(fake.droplets) == 2
    deleted = run_cli(capsys, *_do(fake, token_file, state, "delete", "ha"))
    assert deleted.code == 0, deleted.err
    assert fake.balancers == {} and fake.droplets == {} and "load balancer" in deleted.out


def test_a_rate_limited_read_of_the_balancer_is_asked_again(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys
) -> None:
    """One 429 while create waited for the balancer failed it ('wait a minute and try again', which the name now
    taken would refuse), leaving both droplets and the balancer billed; the VMs' own waits already asked again."""
    route = fake._balancer_route
    limited = {"left": 2}

    def rate_limited_once(method: str, rest: list[str], query: dict, body: object):
        if method == "GET" and rest and limited["left"] > 0:
            limited["left"] -= 1
            return 429, {"id": "too_many_requests", "message": "API Rate limit exceeded."}
        return route(method, rest, query, body)

    fake._balancer_route = rate_limited_once  # type: ignore[method-assign]
    summary = _create(fake, token_file, tmp_path / "state", capsys)
    assert limited["left"] == 0 and summary["ip"] == next(iter(fake.balancers.values()))["ip"]
    assert run_cli(capsys, *_do(fake, token_file, tmp_path / "state", "delete", "ha")).code == 0


def test_an_expired_group_is_pruned_from_a_machine_without_its_state(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys
) -> None:
    """The README's cron job: ``list --prune`` where the group was not made. Its row's id is the balancer's, which
    prune passed to delete as a droplet's: refused every run, and the group stayed up."""
    made = _create(fake, token_file, tmp_path / "laptop", capsys, "--ttl", "1s")  # expired by the time create returns
    expires = datetime.datetime.strptime(made["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    time.sleep(max(0.0, expires.timestamp() - time.time()))  # (else wait for it: prune must see it expired)
    pruned = run_cli(capsys, *_do(fake, token_file, tmp_path / "cron", "list", "--provider", "digitalocean", "--prune"))
    assert pruned.code == 0, pruned.err
    assert fake.balancers == {} and fake.droplets == {}
    assert "deleted ha (digitalocean: load balancer" in pruned.err


def test_a_name_too_long_for_its_replicas_is_refused_before_anything_is_made(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys  # noqa: F811  (pytest fixtures)
) -> None:
    """A 63-character name is valid alone, but its replicas were sent to the cloud as 65-character hostnames."""
    state, name = tmp_path / "state", "a" * 62
    created = run_cli(capsys, *_do(fake, token_file, state, "create", name, "--provider", "digitalocean", "--replicas",
                                   "10", "--ports", str(free_port()), "--json", "--timeout", "60"))
    one_line_error(created, f"the name {name!r} is too long for --replicas 10: its VMs are named {name}-1 to {name}-10, "
                            "and a name is at most 63 characters; use at most 60")
    assert not fake.droplets and not fake.balancers and not (state / name).exists()


def test_status_shows_each_replica_and_fails_while_one_is_down(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys
) -> None:
    """Only the first replica's clients were shown, and a dead replica still exited 0: a client holding one replica
    of two looked like "no clients connected", and `inletsctl status ha || alert` never fired for a dead replica."""
    state = tmp_path / "state"
    summary = _create(fake, token_file, state, capsys)
    argv = shlex.split(summary["client_command"])
    first_url = argv.index("--url")
    del argv[first_url:first_url + 2]  # a client holding only the second replica
    try:
        with run_client(shlex.join(argv), tmp_path / "client.log"):
            deadline = time.monotonic() + 20
            while "holds 1/2 servers" not in (out := run_cli(capsys, *_do(fake, token_file, state, "status", "ha")).out):
                assert time.monotonic() < deadline, out
                time.sleep(0.2)
            assert "ha-1" in out and "ha-2" in out and "(not ha-1" in out
            first = min(fake.processes)
            fake.processes[first].send_signal(signal.SIGKILL)
            fake.processes[first].wait(timeout=10)
            down = run_cli(capsys, *_do(fake, token_file, state, "status", "ha"))
            assert down.code == 1 and "holds 1/2 servers" in down.out, down
            one_line_error(down, "ha-1")
            assert run_cli(capsys, *_do(fake, token_file, state, "status", "ha", "--json")).code == 1
    finally:
        assert run_cli(capsys, *_do(fake, token_file, state, "delete", "ha")).code == 0


def test_a_group_delete_whose_api_never_answered_names_what_it_waited_for(
    fake: FakeDigitalOcean, token_file: Path, tmp_path: Path, capsys
) -> None:
    """Every poll after the DELETEs answered 503: the errors named the balancer and each replica by bare id only."""
    state = tmp_path / "state"
    _create(fake, token_file, state, capsys)
    (balancer_id,) = fake.balancers
    fake.failed_reads = [(503, {})] * 200
    first = run_cli(capsys, *_do(fake, token_file, state, "delete", "ha", "--timeout", "1"))
    one_line_error(first, f"digitalocean: load balancer ha ({balancer_id}) was deleted, but whether it is gone")
    replica = next(str(d["id"]) for d in fake.droplets.values() if d["name"] == "ha-1")
    again = run_cli(capsys, *_do(fake, token_file, state, "delete", "ha", "--timeout", "1"))  # the balancer is gone now
    one_line_error(again, f"digitalocean: ha-1 ({replica}) was deleted, but whether it is gone")
