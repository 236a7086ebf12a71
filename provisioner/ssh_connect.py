"""SSH connections for ``--provider ssh``: paramiko, with host keys always checked.

A host key is accepted only when it is in known_hosts, when it matches the pinned
``--host-key-fingerprint``, or (``--accept-new-host-key``, like OpenSSH's
``StrictHostKeyChecking=accept-new``) when the host is not in known_hosts at all;
a key that differs from a known one is always refused. The key seen at create is
pinned in the exit server's state folder, so later status and delete calls accept
nothing else.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
from pathlib import Path
from typing import Callable

import paramiko

from inlets_py.runtime.core.hosts import authority

from .errors import ProvisionError, os_words
from .known_hosts import Known, host_entry, host_matches, read_known_hosts
from .ssh_keys import ENCRYPTED, BadKey, fingerprint, load_key, read_key
from .ssh_options import SshOptions  # cli and the tests import SshOptions from here too

#: paramiko's transport thread logs failures with tracebacks (a port that is not SSH gives ~20 lines);
#: without a handler Python prints them to stderr. connect() says what went wrong in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 300.0


def _saved_key_error(opts: SshOptions, pinned_file: Path, bad: BadKey, agent_tried: bool) -> ProvisionError:
    """The key file create used and ssh.json keeps (no flag of status or delete names it) cannot be used."""
    path = str(opts.key_file)
    where = f"the key file {path} that create used (\"key_file\" in {pinned_file.with_name('ssh.json')})"
    if not bad.agent:
        return ProvisionError(f"ssh: {where} {bad.words}")
    agent = "ssh-agent does not hold it either" if agent_tried else "no ssh-agent runs (SSH_AUTH_SOCK is not set)"
    if bad.encrypted:
        return ProvisionError(f"ssh: {where} is encrypted and {agent}: load it with `ssh-add {shlex.quote(path)}`, "
                              "then run this again")
    return ProvisionError(f"ssh: {where} does not exist and {agent}: put the key back there, or set \"key_file\" in "
                          f"{pinned_file.with_name('ssh.json')} to where it is now (or load it with `ssh-add FILE`)")


class _Policy(paramiko.MissingHostKeyPolicy):
    """Every host key comes here (paramiko's own store stays empty: it matches no patterns and compares one key of a
    type): the known_hosts lines for the host, then the pinned fingerprint or accept-new, else refuse."""

    def __init__(self, opts: SshOptions, pinned: str | None, known_hosts: Path | None,
                 pinned_file: Path | None = None, revoked: dict[str, Path] | None = None,
                 known: list[Known] | None = None) -> None:
        self._opts, self._pinned, self._known_hosts, self._pinned_file = opts, pinned, known_hosts, pinned_file
        self._revoked = revoked or {}
        self._known = known or []  # the lines whose patterns name the host
        self.accepted: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = fingerprint(key)
        where = authority(self._opts.host, self._opts.port)
        if seen in self._revoked:
            raise ProvisionError(f"host key of {where} ({key.get_name()} {seen}) is marked @revoked in "
                                 f"{self._revoked[seen]}: refusing to connect, as ssh does; the "
                                 "host needs a new host key (or remove that @revoked line if it is a mistake)")
        if any(line.key.asbytes() == key.asbytes() for line in self._known):  # any line, as ssh: keys are rotated
            self.accepted = key
            return
        # a line with another key of this type: changed (after create, any pinned key: it alone was seen then)
        old = [line for line in self._known if self._pinned_file is not None or line.key.get_name() == key.get_name()]
        if old:
            known_as = " or ".join(f"{fingerprint(line.key)} ({line.where})" for line in old)
            raise ProvisionError(f"host key of {where} changed: it is {seen}, known as {known_as}: refusing to "
                                 f"connect; {_changed_key_advice(self._opts, self._pinned_file, self._known_hosts)}")
        if self._pinned_file is not None:  # after create: the state's known_hosts was removed or edited
            state = "holds no key for that host (edited or emptied)" if self._pinned_file.exists() else "is missing"
            raise ProvisionError(f"{self._pinned_file}, which pins the host key of {where} seen at create, {state}; "
                                 f"the host offers {key.get_name()} {seen}: refusing to connect; "
                                 f"{_repin_advice(self._opts, self._pinned_file)}")
        if self._pinned is not None:
            if seen != self._pinned:
                raise ProvisionError(
                    f"host key of {where} is {key.get_name()} {seen}, not the pinned {self._pinned}: refusing to connect"
                )
        elif not self._opts.accept_new:
            raise ProvisionError(
                f"host key of {where} ({key.get_name()} {seen}) is not in {self._known_hosts or '~/.ssh/known_hosts'}: "
                f"check it, then pass --host-key-fingerprint {seen} (or --accept-new-host-key)"
            )
        elif self._known_hosts is not None:  # accept-new: remember it as OpenSSH does
            self._known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self._known_hosts, "a") as out:
                out.write(f"{host_entry(self._opts.host, self._opts.port)} {key.get_name()} {key.get_base64()}\n")
        self.accepted = key


def connect(opts: SshOptions, pinned_file: Path | None = None) -> paramiko.SSHClient:
    """An authenticated client; ``pinned_file`` (the state's known_hosts) overrides every other trust."""
    client = paramiko.SSHClient()
    known: Path | None = Path(opts.known_hosts) if opts.known_hosts else Path("~/.ssh/known_hosts").expanduser()
    pinned = opts.fingerprint
    # known_hosts' @revoked lines hold whatever else is trusted (a pinned fingerprint, the state's key), as ssh's do
    entries, revoked = read_known_hosts(known) if known is not None and known.exists() else ([], {})
    if pinned_file is not None:  # its key alone is trusted; a missing file is said by the policy once the host answers
        pinned_entries, pinned_revoked = read_known_hosts(pinned_file) if pinned_file.exists() else ([], {})
        entries, revoked = pinned_entries, pinned_revoked | revoked
        known, pinned = None, "SHA256:(the key seen at create)"
    elif pinned is not None:
        entries = []  # the fingerprint alone is trusted
    name = host_entry(opts.host, opts.port)
    lines = [line for line in entries if host_matches(line.hosts, name)]
    policy = _Policy(opts, pinned, known, pinned_file, revoked, lines)
    client.set_missing_host_key_policy(policy)
    pkey: paramiko.PKey | None = None
    saved_key: BadKey | None = None  # the key file ssh.json names cannot be used: ssh-agent may hold its key
    if opts.key_file and pinned_file is not None:
        try:
            pkey = read_key(opts.key_file)
        except BadKey as bad:
            if not bad.agent or not os.environ.get("SSH_AUTH_SOCK"):
                raise _saved_key_error(opts, pinned_file, bad, agent_tried=False) from None
            saved_key = bad
    elif opts.key_file:
        pkey = load_key(opts.key_file)
    where = f"{opts.user}@{authority(opts.host, opts.port)}"
    try:
        client.connect(
            opts.host, port=opts.port, username=opts.user, pkey=pkey, look_for_keys=pkey is None and saved_key is None,
            allow_agent=pkey is None, timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT,
            auth_timeout=CONNECT_TIMEOUT, transport_factory=_preferring({line.key.get_name() for line in lines}),
        )
    except ProvisionError:
        client.close()
        raise
    except paramiko.AuthenticationException:
        client.close()
        if saved_key is not None and pinned_file is not None:
            raise _saved_key_error(opts, pinned_file, saved_key, agent_tried=True) from None
        encrypted = [] if opts.key_file else [p for p in _default_keys() if _encrypted(p)]
        if encrypted:  # paramiko tried it, could not open it, and says only "refused"
            other = ", or give an unencrypted key with --ssh-key" if pinned_file is None else ""
            raise ProvisionError(f"ssh: {encrypted[0]} is encrypted and ssh-agent does not hold it: load it with "
                                 f"`ssh-add {encrypted[0]}`{other}") from None
        how = f"the key {opts.key_file}" if opts.key_file else "ssh-agent and ~/.ssh keys"
        raise ProvisionError(f"ssh: {where} refused {how}; {_refused_advice(opts, pinned_file)}") from None
    except (paramiko.SSHException, socket.timeout, OSError) as exc:
        transport = client.get_transport()
        greeting = transport.remote_version if transport is not None else ""  # the host's "SSH-2.0-...", if it came
        client.close()
        if str(exc) == "No authentication methods available" and saved_key is not None and pinned_file is not None:
            raise _saved_key_error(opts, pinned_file, saved_key, agent_tried=True) from None
        if str(exc) == "No authentication methods available":  # paramiko's words when it had no key to offer
            fix = "give one with --ssh-key" if pinned_file is None else "load the key create used with ssh-add"
            raise ProvisionError(f"ssh: no key to log in to {where} with: ssh-agent holds none and ~/.ssh has no "
                                 f"id_ed25519, id_ecdsa or id_rsa; {fix}") from None
        if pinned_file is None:  # create: the flags say where
            raise ProvisionError(f"ssh: cannot connect to {where}: {describe(exc, greeting=greeting)}") from None
        # status, list, delete: where create recorded, which no flag changes
        why = describe(exc, port_flag=False, greeting=greeting)
        then = " If" if why.endswith("?") else "; if"
        raise ProvisionError(f"ssh: cannot connect to {where}: {why}{then} that host is gone for good, remove this exit "
                             f"server's local state: rm -r {shlex.quote(str(pinned_file.parent))}") from None
    return client


def _refused_advice(opts: SshOptions, pinned_file: Path | None) -> str:
    """What to do about a refused login: let the host accept the key (ssh-copy-id), or, at create, give another;
    after create the key is the one create used, which the host took then."""
    copy = shlex.join(["ssh-copy-id", *(["-i", opts.key_file] if opts.key_file else []),
                       *(["-p", str(opts.port)] if opts.port != 22 else []), f"{opts.user}@{opts.host}"])
    keys = f"{opts.user}'s ~/.ssh/authorized_keys there ({copy})"
    if pinned_file is not None:
        return (f"it took this key at create: put its public key back in {keys}; if that host is gone for good, "
                f"remove this exit server's local state: rm -r {shlex.quote(str(pinned_file.parent))}")
    if opts.key_file:
        return f"add its public key to {keys}, or give --ssh-key the key it accepts"
    return f"give --ssh-key the key it accepts, or add your public key to {keys}"


def _default_keys() -> list[Path]:
    """The files paramiko's ``look_for_keys`` tries, as OpenSSH does without -i."""
    home = Path("~/.ssh").expanduser()
    return [home / f"id_{kind}" for kind in ("rsa", "dsa", "ecdsa", "ed25519") if (home / f"id_{kind}").is_file()]


def _encrypted(path: Path) -> bool:
    try:
        paramiko.PKey.from_path(path)
    except ENCRYPTED:
        return True
    except (OSError, paramiko.SSHException, ValueError, UnicodeDecodeError):
        return False
    return False


def _changed_key_advice(opts: SshOptions, pinned_file: Path | None, known: Path | None) -> str:
    """What to do about a changed host key: check the new one on the host, then replace the old one where it is
    kept (the exit server's own known_hosts after create, else the user's); or drop an exit server that is gone."""
    check = "if the host was reinstalled, check its new key there (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"
    if pinned_file is not None:
        port = f"-p {opts.port} " if opts.port != 22 else ""
        return (f"{check}, then pin it instead of the old one: ssh-keyscan {port}{shlex.quote(opts.host)} > "
                f"{shlex.quote(str(pinned_file))}; or, if the exit server went with the host, remove its local "
                f"state: rm -r {shlex.quote(str(pinned_file.parent))}")
    where = f" -f {shlex.quote(str(known))}" if known is not None else ""
    return f"{check}, then forget the old one: ssh-keygen -R {shlex.quote(host_entry(opts.host, opts.port))}{where}"


def _repin_advice(opts: SshOptions, pinned_file: Path) -> str:
    port = f"-p {opts.port} " if opts.port != 22 else ""
    return (f"check the host's key there (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then pin it again: "
            f"ssh-keyscan {port}{shlex.quote(opts.host)} > {shlex.quote(str(pinned_file))}")


#: the key type (``PKey.get_name()``) each host key algorithm shows, where they differ
_ALGORITHM_KEY = {"rsa-sha2-512": "ssh-rsa", "rsa-sha2-256": "ssh-rsa"}


def _preferring(types: set[str]) -> Callable[..., paramiko.Transport]:
    """A ``transport_factory`` asking first for the host key types known for the host, as ssh orders them: the host
    then shows a key known_hosts has rather than one of another type (which it would take for a new host)."""
    def make(sock: socket.socket, **kwargs: object) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)  # type: ignore[arg-type]
        options = transport.get_security_options()
        first = [algorithm for algorithm in options.key_types if _ALGORITHM_KEY.get(algorithm, algorithm) in types]
        options.key_types = first + [algorithm for algorithm in options.key_types if algorithm not in first]
        return transport

    return make if types else paramiko.Transport


def pin(client: paramiko.SSHClient, opts: SshOptions, path: Path) -> str:
    """Write the key this connection presented to ``path`` (the state's known_hosts); its fingerprint."""
    key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
    path.write_text(f"{host_entry(opts.host, opts.port)} {key.get_name()} {key.get_base64()}\n")
    path.chmod(0o600)
    return fingerprint(key)


def run(client: paramiko.SSHClient, command: str, stdin: bytes = b"", timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
    """Run ``command`` on the host; (exit status, stdout, stderr), bounded by ``timeout``."""
    try:
        chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
        cut = False
        try:
            if stdin:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
        except OSError:
            if not chan_in.channel.closed:
                raise
            cut = True  # the command ended before it read its input (sudo missing, say): its output and status say why
        out = chan_out.read().decode(errors="replace")
        err = chan_err.read().decode(errors="replace")
        status = chan_out.channel.recv_exit_status()
        if cut and status == -1:  # closed with no exit status: the connection went, not the command
            raise ProvisionError("ssh: the connection to the host closed while a command ran there (was sshd "
                                 "restarted, or the host rebooted?)")
        return status, out, err
    except (paramiko.SSHException, socket.timeout, OSError) as exc:
        raise ProvisionError(f"ssh: running a command on the host failed: {describe(exc)}") from None


_BANNER = "Error reading SSH protocol banner"  # paramiko's, for a timeout or a close before the greeting


def describe(exc: BaseException, port_flag: bool = True, greeting: str = "") -> str:
    """What a failed SSH or socket call means, in words (never an exception class name); ``port_flag``: the
    command has --port to point elsewhere; ``greeting``: the SSH greeting the host sent, if any."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and exc.errors:
        exc = next(iter(exc.errors.values()))  # paramiko's "[Errno None] Unable to connect to port 1 on ..."
        if isinstance(exc, ConnectionRefusedError):
            return f"{os_words(exc)}: is sshd running there, on that port{' (--port)' if port_flag else ''}?"
    if isinstance(exc, OSError) and exc.errno:
        return os_words(exc)
    said = str(exc)
    if said == "No existing session" and greeting:  # an sshd that is stuck, or a host too busy to go on
        return (f"it sent its SSH greeting ({' '.join(greeting.split())[:80]}), then no answer to the key exchange "
                f"within {CONNECT_TIMEOUT:.0f} s: is the host too busy, or its sshd stuck? try again later")
    if said == "No existing session" or said.startswith(_BANNER) and isinstance(exc.__context__, socket.timeout):
        # paramiko's words when the port took the connection and then said nothing (a firewall's tarpit, a stuck daemon)
        return (f"the connection was taken but no SSH greeting came within {CONNECT_TIMEOUT:.0f} s: is the host too "
                f"busy, or is that port{' (--port)' if port_flag else ''} not sshd's?")
    if said.startswith((_BANNER, "Indecipherable protocol version")):  # a web server's answer, or a close
        fix = "give --port the port the host's sshd listens on" if port_flag else "has the host's sshd moved to another port?"
        return f"what answers there sent no SSH greeting (it is not an SSH server, or one refusing this client): {fix}"
    text = " ".join(said.split())[:200]
    return text or "the connection failed"


def upload(sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` made ``mode`` before the first byte lands (secrets are never readable)."""
    with sftp.open(path, "wb") as out:
        out.chmod(mode)
        out.write(data)

