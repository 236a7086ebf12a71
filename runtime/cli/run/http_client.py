"""What ``inlets http client`` does once typer has parsed its flags (cli/handoff.py: no typer here)."""

from __future__ import annotations

from types import SimpleNamespace

from ...client.http_upstreams import HttpUpstreams, UpstreamError, parse_upstreams, upstream_tls, warn_unverified
from ...core.auth import BASIC_AUTH_PASSWORD, BEARER_TOKEN, TOKEN, TokenError
from ...core.heap import freeze_startup_objects
from ...core.tls import TlsConfigError
from ...http.options import HttpOptions, OptionError
from ..client_config import check_secrets, check_servers, client_configs, tunnel_client
from ..config import check_logs, fail, refuse_blank, setup_logs
from ..lifecycle import run_client


def check(flags: SimpleNamespace) -> dict:
    """What the flags say, checked without reading a file (``--generate`` runs this too): the upstreams. The header
    options are built once more by ``run``, with the secrets read and the hosts to rewrite."""
    check_logs(flags.log_level, flags.log_format)
    try:
        mapping = parse_upstreams(flags.upstream)
        HttpOptions.build(request_add=flags.request_header_add or [], request_remove=flags.request_header_remove or [],
                          response_add=flags.response_header_add or [], response_remove=flags.response_header_remove or [])
    except (UpstreamError, OptionError) as exc:
        fail(str(exc))
    if flags.upstream_ca is not None and flags.upstream_insecure:  # the CA was ignored: the user believed it pinned
        fail("give --upstream-ca or --upstream-insecure, not both: --upstream-insecure would ignore the CA")
    if not any(upstream.scheme == "https" for upstream in mapping.values()):  # ignored: the user believed it applied
        for flag, given in (("--upstream-ca", flags.upstream_ca is not None),
                            ("--upstream-insecure", flags.upstream_insecure)):
            if given:
                fail(f"{flag} is for an https:// upstream's certificate, and every --upstream is http:// (no TLS): "
                     "give the upstream's https:// URL, or leave the flag out")
    refuse_blank(flags.basic_auth_username, "--basic-auth-username", "give the user name the site asks for (leave the "
                 "flag out to serve the site without basic auth)")
    check_servers(flags)
    check_secrets(flags, (BASIC_AUTH_PASSWORD, BEARER_TOKEN, TOKEN))
    check_site_auth(flags)
    return mapping


def check_site_auth(flags: SimpleNamespace) -> None:
    """Basic auth's user and password together, not with a bearer token, a user without ':': checked by whether each
    is given, not by reading its file. ``run`` alone checked them: --generate wrote a unit that failed at every start.
    A secret given inline or in its variable is read first: a variable set but blank (or not UTF-8) counts as given,
    and was blamed on flags the user never typed ("choose one of ... --bearer-token")."""
    for secret, value, file in ((BASIC_AUTH_PASSWORD, flags.basic_auth_password, flags.basic_auth_password_file),
                                (BEARER_TOKEN, flags.bearer_token, flags.bearer_token_file)):
        if file is None:
            try:
                secret.read(value, None)
            except TokenError as exc:
                fail(str(exc))
    username = flags.basic_auth_username
    if bool(username) != BASIC_AUTH_PASSWORD.given(flags.basic_auth_password, flags.basic_auth_password_file):
        fail("--basic-auth-username and --basic-auth-password (or its file or $INLETS_BASIC_AUTH_PASSWORD) go together")
    if username and BEARER_TOKEN.given(flags.bearer_token, flags.bearer_token_file):
        fail("choose one of --basic-auth-username/--basic-auth-password and --bearer-token")
    try:
        HttpOptions.build(basic_auth=(username, "") if username else None)  # its own checks of the user name
    except OptionError as exc:
        fail(str(exc))


def run(flags: SimpleNamespace) -> None:
    """Run an HTTP tunnel client with the flags of ``inlets http client``."""
    mapping = check(flags)
    setup_logs(flags.log_level, flags.log_format)

    try:
        basic_auth_password = BASIC_AUTH_PASSWORD.read(flags.basic_auth_password, flags.basic_auth_password_file)
        bearer_token = BEARER_TOKEN.read(flags.bearer_token, flags.bearer_token_file)
    except TokenError as exc:
        fail(str(exc))
    if bool(flags.basic_auth_username) != bool(basic_auth_password):
        fail("--basic-auth-username and --basic-auth-password (or its file or $INLETS_BASIC_AUTH_PASSWORD) go together")
    try:
        tls = upstream_tls(flags.upstream_ca, flags.upstream_insecure)
    except TlsConfigError as exc:
        fail(str(exc))
    upstreams = HttpUpstreams(mapping, tls)
    if flags.upstream_insecure:
        warn_unverified(mapping)
    try:
        options = HttpOptions.build(
            request_add=flags.request_header_add or [], request_remove=flags.request_header_remove or [],
            response_add=flags.response_header_add or [], response_remove=flags.response_header_remove or [],
            rewrite_host=upstreams.host_headers() if flags.rewrite_host else None,
            basic_auth=(flags.basic_auth_username, basic_auth_password) if flags.basic_auth_username else None,  # type: ignore[arg-type]
            bearer_token=bearer_token,
        )
    except OptionError as exc:
        fail(str(exc))
    configs = client_configs(
        urls=flags.url, token=flags.token, token_files=flags.token_file, tls_ca=flags.tls_ca, tls_server_name=flags.tls_server_name,
        tls_insecure=flags.tls_insecure, keepalive=flags.keepalive, mode="http", services=upstreams.services, proxy=flags.proxy,
        proxy_password_file=flags.proxy_password_file, drain_timeout=flags.drain_timeout, max_streams=flags.max_streams,
        max_buffer_mib=flags.max_buffer,
    )
    for config in configs:
        config.extra = options.to_extra()
    freeze_startup_objects()
    run_client(tunnel_client(configs, upstreams.on_stream))
