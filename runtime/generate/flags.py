"""The command's flags as its service will get them: read as typer reads them, with every secret taken out (inline,
in the environment, in --proxy's URL) for a file the service reads instead, checked as the command checks it."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote

from ..core.auth import PROXY_PASSWORD, SECRETS, TOKEN, SecretOption, TokenError, read_tokens
from ..core.hosts import is_utf8

Pairs = list[tuple[str, str | None]]


class GenerateError(ValueError):
    """The flags cannot be turned into a service definition; the message says why."""


def value_options(command: list[str]) -> set[str]:
    """The flags of ``inlets <command>`` that take a value, as typer parses them (all but its on/off flags): such a
    flag takes the next item whatever it holds, so ``--token --MYSECRET`` is the token "--MYSECRET" (not two flags,
    which put the secret on the unit's ExecStart line) and ``--request-header-add '--X-Y: a=b'`` one header."""
    import typer

    from ..cli.app import app  # the command running now has added itself to it

    found = typer.main.get_command(app)
    for word in command:
        found = found.commands[word]  # type: ignore[attr-defined]
    return {name for param in found.params if not getattr(param, "is_flag", False) for name in param.opts}


def split_argv(argv: list[str], takes_value: set[str]) -> Pairs:
    """``['--a', '1', '--b=2', '--flag']`` -> ``[('--a','1'), ('--b','2'), ('--flag', None)]``, read as typer read
    it: a flag of ``takes_value`` takes the next item, else its value follows its first ``=``. A guess from the
    items themselves split a value such as ``--basic-auth-username '--token=X'`` into a flag of its own (an inline
    token the unit was given, the user name dropped): the unit ran other flags than the command."""
    pairs: Pairs = []
    index = 0
    while index < len(argv):
        item = argv[index]
        name, equals, value = item.partition("=")
        if item in takes_value and index + 1 < len(argv):
            pairs.append((item, argv[index + 1]))
            index += 1
        elif equals and name in takes_value:
            pairs.append((name, value))
        else:
            pairs.append((item, None))
        index += 1
    return pairs


def without_generate(command: list[str], argv: list[str]) -> Pairs:
    return [(name, value) for name, value in split_argv(argv, value_options(command)) if name != "--generate"]


@dataclass
class FoundSecret:
    secret: SecretOption
    value: str | None  # given inline or in the environment
    file: str | None  # given as a file
    key: str = ""  # its file's name in /etc/inlets or key in the Secret: the secret's own key unless told

    def __post_init__(self) -> None:
        self.key = self.key or self.secret.key

    @property
    def option(self) -> str:
        """The flag the service reads it with: ``--token-file``, ..."""
        return self.secret.file_option


def split_secrets(command: list[str], pairs: Pairs) -> tuple[Pairs, list[FoundSecret]]:
    """Take every secret out of the flags (inline, as a file, in --proxy's URL), adding those from the environment.

    ``--token-file`` given once per ``--url`` (a client of several servers) stays one secret per server,
    keyed ``token-1``, ``token-2``... in order, unless an inline ``--token`` serves them all.
    """
    rest: Pairs = []
    found: dict[str, FoundSecret] = {}
    token_files: list[FoundSecret] = []  # a client of several servers: --token-file once per --url, in order
    last_proxy = max((index for index, (name, _) in enumerate(pairs) if name == "--proxy"), default=None)
    for index, (name, value) in enumerate(pairs):
        if name == "--proxy" and index != last_proxy:  # typer takes the last: an earlier one, and its password, the
            continue  # command never used (kept, its password file went with --proxy none and refused every start)
        if name == "--proxy" and value and (password := _proxy_password(value)) is not None:
            from ..client.outbound_proxy import redact  # scheme://USER@HOST:PORT, the password left out

            rest.append((name, redact(value)))
            found[PROXY_PASSWORD.key] = FoundSecret(PROXY_PASSWORD, password, None)
            continue
        secret = next((s for s in SECRETS if name in (s.option, s.file_option)), None)
        if secret is None:
            rest.append((name, value))
        elif name == secret.option:
            if secret.guards_a_site:  # the token is checked below
                _read(secret, value)
            found[secret.key] = FoundSecret(secret, value, None)
        elif secret is TOKEN:
            token_files.append(FoundSecret(secret, None, value))
            found.setdefault(secret.key, token_files[0])
        else:
            found[secret.key] = FoundSecret(secret, None, value)
    for secret in SECRETS:
        if secret.key not in found and tuple(command) in secret.commands:
            from_env = _read(secret, None)
            if from_env is not None:
                found[secret.key] = FoundSecret(secret, from_env, None)
    for token_found in [f for f in found.values() if f.secret is TOKEN] + token_files:
        _check_token(token_found)
    if len(token_files) > 1 and found[TOKEN.key] is token_files[0]:  # one file (or Secret key) per server
        for number, token_file in enumerate(token_files, 1):
            token_file.key = f"{TOKEN.key}-{number}"
        found = {**{f.key: f for f in token_files}, **{k: v for k, v in found.items() if k != TOKEN.key}}
    return rest, list(found.values())


def _split_proxy(value: str) -> SplitResult:
    """--proxy split as the client will split it: a malformed one (urlsplit's "Invalid IPv6 URL", a port of 0)
    is refused in the client's words now, not as a traceback, nor by the unit at every start."""
    from ..client.outbound_proxy import ProxyConfigError, split

    try:
        return split(value, "--proxy")
    except ProxyConfigError as exc:
        raise GenerateError(str(exc)) from None


def _proxy_password(value: str) -> str | None:
    """The password --proxy holds, for a file the unit reads with --proxy-password-file; None if it holds none, or
    an empty one (``http://USER:@HOST``: no secret, so the URL goes as given). One the file could not give back as
    the command sends it is refused: the unit failed at every start, or sent another password."""
    from ..client.outbound_proxy import redact

    proxy = _split_proxy(value)
    if not proxy.password:
        return None
    if not proxy.username:  # sent as ":PASSWORD", as curl sends it; --proxy-password-file completes a user only
        raise GenerateError(f"--proxy {redact(value)} holds a password but no user, and a unit keeps the password in "
                            "--proxy-password-file, which needs one: give --proxy http://USER:PASSWORD@HOST:PORT")
    password = unquote(proxy.password)
    if not is_utf8(password):  # a Secret or a file holds text: writing it raised a traceback
        raise GenerateError(f"--proxy {redact(value)}: its password is not UTF-8 (a byte such as Latin-1's): give it as "
                            "UTF-8 text")
    if (password + "\n").splitlines()[0].strip() != password:  # a file's first line, stripped, is its password
        raise GenerateError(f"--proxy {redact(value)}: its password begins or ends with a space or holds a line break, "
                            "which --proxy-password-file (where a unit keeps it) cannot hold: change the password")
    return password


def environment_proxy(command: list[str], pairs: Pairs) -> Pairs:
    """A client without --proxy takes its proxy from HTTPS_PROXY and the like, which a unit's environment lacks: the
    command connected through it, the unit tried directly (and failed where only the proxy gets out). The proxy the
    environment names for the --urls becomes the unit's --proxy (its password a file, as for --proxy's own)."""
    if command[-1] != "client" or any(option == "--proxy" for option, _ in pairs):
        return pairs
    from ..client.outbound_proxy import ProxyConfigError, choose

    try:
        chosen = {choose(None, url).url for option, url in pairs if option == "--url" and url}
    except ProxyConfigError as exc:
        raise GenerateError(str(exc)) from None
    if len(chosen) > 1:
        raise GenerateError("the environment's proxy settings (HTTPS_PROXY, NO_PROXY, ...) send these --urls different "
                            "ways, which one --proxy cannot say: give --proxy URL or --proxy none")
    proxy = next(iter(chosen), None)
    return pairs if proxy is None else [*pairs, ("--proxy", proxy)]


#: Request header names whose value is likely a credential: the upstream's own login, carried by the tunnel.
_CREDENTIAL_HEADER = re.compile(r"authorization|cookie|.*(token|secret|key|auth|passw|session|credential).*", re.I)


def warn_of_credential_headers(pairs: Pairs, where: str) -> None:
    """One stderr line per ``--request-header-add`` whose name says its value is a credential: unlike the secrets
    above, a header value has no file form, so it goes into ``where`` as given (the name is said, never the value).
    A warning, not a refusal: the value may be no secret, and the unit is the user's to protect."""
    for option, value in pairs:
        name = (value or "").partition(":")[0].strip()
        if option == "--request-header-add" and _CREDENTIAL_HEADER.fullmatch(name):
            print(f"inlets: warning: --request-header-add {name}: a header's value has no file form, so it goes as "
                  f"given into {where}; if it is the upstream's own login, let the upstream listen on 127.0.0.1 only "
                  "and protect the site with --bearer-token-file or --basic-auth-password-file instead", file=sys.stderr)


def _read(secret: SecretOption, value: str | None) -> str | None:
    """The secret given inline (``value``) or in its variable, read as the command reads it, so refused in its words
    (blank, set but blank, not UTF-8...): the unit served the site unprotected (a blank variable), a Secret held a
    secret the pod refused at each start, or writing it raised a traceback; an error named --token for $INLETS_TOKEN."""
    try:
        return secret.read(value, None)
    except TokenError as exc:
        raise GenerateError(str(exc)) from None


def _check_token(found: FoundSecret) -> None:
    """The checks a running command applies to its token, applied before it goes into a unit or a Secret:
    an empty or blank file, a value that is the next flag, characters a header cannot carry."""
    try:
        if found.file is not None:
            if Path(found.file).expanduser().exists():  # a unit may name a file written later, elsewhere
                read_tokens(None, Path(found.file).expanduser())
        elif found.value is not None:
            read_tokens(found.value, None)
    except TokenError as exc:
        raise GenerateError(str(exc)) from None
