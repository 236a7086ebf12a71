"""Tokens and other secrets: loading them without leaking them, checking tokens in constant time.

Every secret has three forms: its option (visible in ``ps``, so discouraged), a file
(``--OPTION-file``) and an environment variable; ``--generate`` turns each into a file.
"""

from __future__ import annotations

import errno
import hmac
import os
import re
import select
import stat
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from .hosts import is_utf8

TOKEN_ENV = "INLETS_TOKEN"
#: Tokens travel in ``Authorization: Bearer``: visible ASCII (spaces inside allowed), short enough
#: for any server's header limit. A control character made the client log the header, token and all,
#: at every retry; non-ASCII was encoded one way by the client and another by ``status``; 200 kB got
#: HTTP 431 forever.
_TOKEN_TEXT = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
MAX_TOKEN = 4096
MAX_SECRET_FILE = 64 * 1024  # a token file: a few tokens (a GCE key JSON is 2.3 KiB); more is not one
_warned_loose: set[str] = set()
CLIENTS = (("tcp", "client"), ("http", "client"))


class TokenError(Exception):
    """No usable token (or secret) was given; the message says how to give one."""


def token_refused(first_of: tuple[int, Path] | None = None) -> str:
    """What a client and ``inlets status`` say when the server refuses the token (401; a 429 refuses every login
    from an address, the right token too: ``logins_refused``). ``first_of``: (tokens, file) when the
    token was the first of a file holding several (a server's rotation file), of which only the first is sent."""
    if first_of is not None and first_of[0] > 1:
        count, path = first_of
        return (f"the server refused the first of {count} tokens in {path} (HTTP 401), the only one sent: put the "
                "token this server takes first, or give a file holding only it")
    return "the server refused the token (HTTP 401): check --token/--token-file"


def logins_refused(seconds: float | None) -> str:
    """What a client and ``inlets status`` say of a 429: the server refuses every login from this address, a right
    token too, for ``seconds`` (its Retry-After), the rest of a window after too many failed ones
    (``server/ratelimit.py``). Not "token refused": the token may be right, and the wrong ones may be another
    client's behind the same address (one NAT)."""
    when = f"for {seconds:.0f} s" if seconds is not None else "for up to a minute"
    return (f"the server refuses logins from this address {when} after too many failed ones (a wrong token from "
            "this address: this client's, or another client's behind the same address)")


def several_tokens(count: int, path: Path, line: int) -> str:
    """The start's warning of a client or ``inlets status`` given a token file holding several (a server's rotation
    file): only the first is sent, which the 401 of a server that retired it did not say."""
    return (f"token file {path} holds {count} tokens: only the first (line {line}) is sent; give a file holding "
            "the one token the server takes")


def check_token(token: str, where: str) -> str:
    """``token`` when an HTTP header can carry it; the error names where it came from, never the token."""
    if len(token) > MAX_TOKEN:
        raise TokenError(f"the token from {where} is longer than {MAX_TOKEN} characters: use a shorter one "
                         "(inletsctl makes 64)")
    if not _TOKEN_TEXT.fullmatch(token):
        raise TokenError(f"the token from {where} holds a character a token cannot have (a control character or "
                         "a letter outside ASCII): use printable ASCII letters, digits and punctuation")
    return token


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (C0, DEL or C1), which RFC 7617 forbids in basic auth's user name
    and password: no browser sends one, so a site protected with it could never be entered."""
    return any(unicodedata.category(char) == "Cc" for char in text)


def check_password(password: str, where: str) -> str:
    """A basic-auth password a browser can send: any printable text (UTF-8 included: it travels base64-encoded)."""
    if has_control(password):
        raise TokenError(f"the password from {where} holds a control character (a line break, a tab...), which no "
                         "browser can send: use printable characters only")
    return password


def refuse_left_out(value: str, option: str, file_option: str) -> str:
    """``value`` of an inline secret flag, unless it starts with '--': ``--bearer-token --rewrite-host`` gave the
    flag the next one as its value (typer takes it so), the secret left out and the flag lost without a word."""
    if value.startswith("--"):
        raise TokenError(f"{option}'s value starts with '--': was the value left out? (a secret that starts with "
                         f"'--' goes in {file_option})")
    return value


@dataclass(frozen=True)
class SecretOption:
    """A secret flag and the forms that keep it off the command line."""

    option: str  # --bearer-token (for the proxy password: none, it rides in the --proxy URL)
    env: str  # INLETS_BEARER_TOKEN
    key: str  # bearer-token: its file in a generated unit (/etc/inlets/KEY), its key in a Kubernetes Secret
    commands: tuple[tuple[str, ...], ...] = CLIENTS  # the commands that take it
    #: a site's protection: its variable set but blank (``INLETS_BEARER_TOKEN=$UNSET_VAR``) is refused, as a blank
    #: option is, not taken as no secret (the site was served unprotected without a word)
    guards_a_site: bool = False
    #: what the secret may hold, given it and where it came from (``check_token``); TokenError names the source
    check: Callable[[str, str], str] | None = None
    #: a password is taken as written, without a line ending: RFC 7617 lets it begin or end with a space, and htpasswd
    #: keeps them (stripped, the site refused the real password with 401); a token is stripped, as documented
    as_written: bool = False

    @property
    def file_option(self) -> str:
        return f"{self.option}-file"

    def check_given_once(self, value: str | None, file: object | None) -> None:
        """Refuse the secret given both inline and as a file, without reading the file: which one to take would be
        a guess. The run path and ``--generate`` (which turns it into one file) share this check."""
        if value is not None and file is not None:
            raise TokenError(f"give {self.option} or {self.file_option}, not both")

    def given(self, value: str | None, file: object | None) -> bool:
        """Is the secret given at all (inline, as a file, or set in the environment)? No file is read: ``check``
        asks it, which ``--generate`` runs for a unit whose files may exist only where it will run. A variable set
        but blank counts as given: reading it refuses it in its own words ("set but blank")."""
        return value is not None or file is not None or self.env in os.environ

    def blank_variable(self) -> bool:
        """Is its variable set but blank (``INLETS_TOKEN=$UNSET_VAR``)? Said so where it is read: "no token: give
        ... $INLETS_TOKEN" sent the user to set the variable they had set."""
        found = os.environ.get(self.env)
        return found is not None and not found.strip()

    def read(self, value: str | None, file: Path | None) -> str | None:
        """The secret from the option, else its file (first line), else the environment; None if none is given.

        Stripped as the token is, unless ``as_written``: a blank one (spaces only) is refused, never taken as the
        secret "   ", nor its variable set but blank as none."""
        self.check_given_once(value, file)
        if value is not None:
            if not value.strip():
                raise TokenError(f"{self.option} is blank: give the secret, or use {self.file_option} or ${self.env}")
            return self._checked(refuse_left_out(value, self.option, self.file_option), self.option)
        if file is not None:
            lines = _read_text(file, f"{self.file_option} file").splitlines()
            if not lines or not lines[0].strip():
                raise TokenError(f"{self.file_option} file {file} is empty (or blank): put the secret on its first line")
            warn_if_others_can_read(file, f"{self.file_option} file", event="secret_file_loose")  # as for the token file: a secret all the same
            return self._checked(lines[0], f"{self.file_option} file {file}")
        if self.blank_variable():
            unset = "unset it to serve without one" if self.guards_a_site else "unset it"
            raise TokenError(f"${self.env} is set but blank: put the secret in it, or {unset}")
        found = os.environ.get(self.env)
        return None if found is None else self._checked(found, f"${self.env}")

    def _checked(self, secret: str, where: str) -> str:
        """A secret no header could carry (a control character in a bearer token) let the client start, and then no
        request ever matched it: the site was locked without a word. Refused here, where the source is known; so is
        a byte that is not UTF-8 (from the environment or the command line), which raised a traceback where it was
        sent or written into a Kubernetes Secret."""
        # as written, but for a line ending (a Kubernetes Secret made from a file gives it to the variable too)
        secret = secret.removesuffix("\n").removesuffix("\r") if self.as_written else secret.strip()
        checked = self.check(secret, where) if self.check is not None else secret
        if not is_utf8(checked):
            how = "set it" if where.startswith("$") else "give it"
            raise TokenError(f"{where} is not UTF-8 (a byte such as Latin-1's): {how} as UTF-8 text")
        return checked


TOKEN = SecretOption("--token", TOKEN_ENV, "token", (("tcp", "server"), ("http", "server"), *CLIENTS), check=check_token)
#: checked as --token is: the proxy compares the Authorization value after "Bearer " (RFC 6750's b64token is stricter)
BEARER_TOKEN = SecretOption("--bearer-token", "INLETS_BEARER_TOKEN", "bearer-token", (("http", "client"),), True,
                            check_token)
BASIC_AUTH_PASSWORD = SecretOption(
    "--basic-auth-password", "INLETS_BASIC_AUTH_PASSWORD", "basic-auth-password", (("http", "client"),), True,
    check_password, as_written=True,
)
PROXY_PASSWORD = SecretOption("--proxy-password", "INLETS_PROXY_PASSWORD", "proxy-password")
SECRETS = (TOKEN, BEARER_TOKEN, BASIC_AUTH_PASSWORD, PROXY_PASSWORD)


class SecretFileTooLarge(ValueError):
    """A token or secret file holds more than MAX_SECRET_FILE bytes: not a token file (/dev/zero, a log...)."""


class NotARegularFile(OSError):
    """A file flag names a FIFO, a device or a socket (no errno: ``str()`` says which). A FIFO hung the command in
    open() until something wrote to it; a device or socket is nothing the command can re-read (SIGHUP, reconnects)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"it is {kind}, not a regular file: put its contents in a file and give that")
        self.kind = kind


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


#: Paths naming a pipe this process already holds open: a shell's process substitution (``--token-file <(pass show
#: inlets)``, /dev/fd/63) or a redirection (``/dev/stdin``). They are read; a FIFO anywhere else is refused.
OPEN_PIPES = ("/dev/fd/", "/proc/self/fd/", "/dev/stdin")
#: How long such a pipe may take to bring its secret (a password manager may ask for its own passphrase first).
PIPE_WAIT = 30.0


def open_regular_file(path: Path, pipes: bool = False) -> BinaryIO:
    """``path`` opened to read, at once whatever it is: IsADirectoryError for a folder, NotARegularFile for anything
    else not a regular file (checked on the open file, so nothing swapped in between), a FIFO too unless ``pipes``.
    O_NONBLOCK: opening a FIFO waits for a writer, forever when none comes; on a regular file it changes nothing."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    handle = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or (pipes and stat.S_ISFIFO(mode)):
        return handle
    handle.close()
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    raise NotARegularFile(next((kind for test, kind in _KINDS if test(mode)), "not a file"))


def _read_pipe(fd: int, limit: int) -> bytes:
    """Up to ``limit`` + 1 bytes of a pipe, until its writer closes it, within ``PIPE_WAIT`` (nonblocking: a writer
    that never writes or never closes is refused, not waited for)."""
    deadline = time.monotonic() + PIPE_WAIT
    data = b""
    while len(data) <= limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise NotARegularFile(f"a pipe whose writer did not finish within {PIPE_WAIT:g} s")
        chunk = os.read(fd, limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_secret_file(path: Path, limit: int = MAX_SECRET_FILE) -> bytes:
    """A token or secret file's bytes, read up to ``limit`` (OSError as open() raises, NotARegularFile for a FIFO or
    device; SecretFileTooLarge beyond): read whole, /dev/zero or a disk image given by mistake took all memory. A
    pipe the process holds (``<(pass show inlets)``) is read too: the secret then touches no disk."""
    with open_regular_file(path, pipes=str(path).startswith(OPEN_PIPES)) as handle:
        if stat.S_ISFIFO(os.fstat(handle.fileno()).st_mode):
            data = _read_pipe(handle.fileno(), limit)
        else:
            data = handle.read(limit + 1)
    if len(data) > limit:
        raise SecretFileTooLarge(f"{path} is larger than {limit // 1024} KiB")
    return data


def _read_text(path: Path, what: str) -> str:
    try:
        return read_secret_file(path).decode()
    except FileNotFoundError:
        raise TokenError(f"{what} not found: {path}") from None
    except SecretFileTooLarge:
        raise TokenError(f"{what} {path} is larger than {MAX_SECRET_FILE // 1024} KiB, more than tokens take: "
                         "give the file that holds the token") from None
    except IsADirectoryError:
        raise TokenError(f"{what} {path} is a directory: give the file that holds the secret") from None
    except NotARegularFile as exc:
        raise TokenError(f"{what} {path} is {exc.kind}, not a regular file: put the secret in a file (chmod 600) "
                         "and give its path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None


def loose_mode(path: Path) -> int | None:
    """The permission bits of a regular file others (group or world) may read or write; None otherwise."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return stat.S_IMODE(mode) if stat.S_ISREG(mode) and mode & 0o077 else None


def warn_if_others_can_read(path: Path, what: str = "token file", prog: str = "inlets",
                            event: str = "token_file_loose") -> None:
    """Once per file, on stderr, as ssh says of a loose key: a warning, not a refusal, since secret
    mounts (Kubernetes, Docker) are often 0644 and cannot be changed. (inletsctl's cloud tokens too.)
    Once the log is set up, its level applies (--log-level error hides it), and in JSON it is a record, as a
    reload says it: a plain line broke a ``| jq`` pipeline."""
    import logging

    from . import logs

    mode = loose_mode(path)
    if mode is None or str(path) in _warned_loose:
        return
    _warned_loose.add(str(path))
    if logs.configured() == "json":
        warn_loose_on_reload(path, event, f"the {what}")  # ``event``: as a SIGHUP's re-read names it
    elif logs.configured() is None or logging.getLogger("inlets").isEnabledFor(logging.WARNING):
        print(f"{prog}: warning: {what} {path} can be read by other users (mode {mode:04o}): "
              f"run chmod 600 {path}", file=sys.stderr)


def read_tokens(token: str | None, token_file: Path | None) -> list[str]:
    """Tokens from ``--token``, else ``--token-file`` (one per line), else $INLETS_TOKEN; each checked."""
    TOKEN.check_given_once(token, token_file)
    if token is not None:
        return [TOKEN.read(token, None)]  # type: ignore[list-item]  # a value gives a str or raises
    if token_file is not None:
        return [token for _, token in read_token_lines(token_file)]
    if TOKEN.blank_variable():
        raise TokenError(f"no token: give --token, --token-file or ${TOKEN_ENV}, which is set but blank")
    from_env = TOKEN.read(None, None)  # $INLETS_TOKEN, checked as the flag's value is
    if from_env is not None:
        return [from_env]
    raise TokenError(f"no token: give --token, --token-file or ${TOKEN_ENV}")


def read_token_lines(token_file: Path) -> list[tuple[int, str]]:
    """A token file's tokens with their line numbers (blank lines and ``#`` comments skipped), each checked."""
    text = _read_text(token_file, "token file")
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    tokens = [(number, check_token(line, f"token file {token_file} (line {number})"))
              for number, line in lines if line and not line.startswith("#")]
    if not tokens:
        raise TokenError(f"token file {token_file} holds no token")
    return tokens


class TokenSet:
    """The tokens a server accepts. Replaceable at run time (rotation)."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def replace(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def check_header(self, authorization: str | None) -> bool:
        """True when the ``Authorization: Bearer`` value matches one token, compared in constant time. The scheme
        is case-insensitive (RFC 9110 11.1), as the HTTP data plane's --bearer-token takes it."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = value.strip().encode()
        ok = False
        for token in self._tokens:  # check every token: timing says nothing about which
            ok |= hmac.compare_digest(offered, token)
        return ok


def warn_loose_on_reload(path: Path, event: str, what: str) -> None:
    """A secret file others can read, re-read by SIGHUP: said in the log, as the start says it on stderr (a renewed
    key or a rotated token file written 0644, by cp or echo >>, was taken without a word). The start's own warning
    in a JSON log too (``warn_if_others_can_read``)."""
    import logging  # here: only a server's reload logs it

    from .logs import logfmt

    mode = loose_mode(path)
    if mode is not None:
        logging.getLogger("inlets").warning("event=%s file=%s mode=%04o hint=%s", event, logfmt(str(path)), mode,
                                            logfmt(f"other users can read {what}: run chmod 600 {path}"))
