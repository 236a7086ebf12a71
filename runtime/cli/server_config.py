"""The servers' shared flags, validated: the control plane (token, TLS) and the data plane's gate."""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import json
import logging
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from ..core.allowlist import SourceAllowList, parse_networks
from ..core.auth import TokenError, TokenSet, read_tokens, warn_if_others_can_read, warn_loose_on_reload
from ..core.cert_expiry import iso, not_after_pem, not_before_pem, warn_if_ending
from ..core.child_env import child_environment
from ..core.hosts import HostError, check_bind_address, check_host, is_ip, is_loopback
from ..core.logs import logfmt
from ..core.tls import TlsConfigError, server_context
from ..server.admission import DEFAULT_MAX_PER_SOURCE
from ..server.control import ControlConfig, ServingCertificate
from ..server.dataplane import DataPlaneOptions
from .config import default_data_dir, fail, refuse_blank

log = logging.getLogger("inlets")
#: ``--auto-tls`` makes its files in a child process: ``python -m`` this module (see core/certs.py's main).
CERTS_MODULE = __name__.rsplit(".", 2)[0] + ".core.certs"


@dataclass(frozen=True)
class ControlSources:
    """The control port's address lists, parsed once by ``check_control`` (so a widened network is warned of once)."""

    trusted_proxies: SourceAllowList | None  # --trusted-proxies
    login_limit_exempt: SourceAllowList | None  # --login-limit-exempt


def check_control(flags: SimpleNamespace) -> ControlSources:
    """The control-plane flags every server shares, checked as written: no file read, no name resolved. Here, not in
    ``control_config``, because ``--generate`` runs it too: a unit it wrote for flags the server refuses failed at
    every start. Returns the parsed address lists."""
    chosen = sum([bool(flags.tls_cert or flags.tls_key), flags.auto_tls, flags.plaintext])
    if chosen != 1:
        fail("choose one of --tls-cert/--tls-key, --auto-tls, or --plaintext")
    if bool(flags.tls_cert) != bool(flags.tls_key):
        fail("--tls-cert and --tls-key go together")
    if (flags.auto_tls_san or flags.auto_tls_path is not None) and not flags.auto_tls:
        fail("--auto-tls-san and --auto-tls-path go with --auto-tls (they would be ignored)")
    if flags.auto_tls_san:
        auto_tls_names(flags.auto_tls_san)
    if flags.auto_tls_path is not None and str(flags.auto_tls_path) in ("", "."):
        fail("--auto-tls-path is empty (the current directory): give a directory of its own, "
             "e.g. ~/.local/share/inlets/auto-tls")
    for flag, value, listens in (("--control-addr", flags.control_addr, "the control port listens on"),
                                 ("--data-addr", flags.data_addr, "the data ports listen on")):
        refuse_blank(value, flag, f"give the address {listens}, e.g. 127.0.0.1 (leave the flag out for every interface)")
    check_bind_addresses(flags.control_addr, flags.data_addr, resolve=False)
    handshake_caps(flags)
    refuse_blank(flags.trusted_proxies, "--trusted-proxies", "give the proxies' addresses, e.g. 127.0.0.1 (leave the "
                 "flag out to believe no X-Forwarded-For)")
    refuse_blank(flags.login_limit_exempt, "--login-limit-exempt", "give the addresses the failed-login limit spares, "
                 "e.g. 10.0.0.0/8 (leave the flag out to limit every source)")
    return ControlSources(source_list(flags.trusted_proxies, "--trusted-proxies"),
                          source_list(flags.login_limit_exempt, "--login-limit-exempt"))


def source_list(text: str | None, option: str) -> SourceAllowList | None:
    """An address-list flag (``parse_networks``' rules and words); None when it is left out."""
    try:
        return SourceAllowList(parse_networks(text, option)) if text else None
    except ValueError as exc:
        fail(str(exc))


def per_source_caps(flags: SimpleNamespace, cap: str, default: int) -> tuple[int, int]:
    """``--CAP`` and ``--CAP-per-source`` (attributes ``cap`` and ``cap``_per_source): (in all, per source). The
    per-source default is ``default``, or the total if lower; one given above the total could never be reached, so it
    is refused rather than ignored (the servers' ``check`` runs this, so ``--generate`` refuses it too)."""
    total, per_source = getattr(flags, cap), getattr(flags, f"{cap}_per_source")
    if per_source is None:
        return total, min(total, default)
    if per_source > total:
        flag = "--" + cap.replace("_", "-")
        fail(f"{flag}-per-source {per_source} is above {flag} {total}: lower it, or raise {flag}")
    return total, per_source


def handshake_caps(flags: SimpleNamespace) -> tuple[int, int]:
    """The control port's --max-handshakes(-per-source): (in all, per source)."""
    return per_source_caps(flags, "max_handshakes", DEFAULT_MAX_PER_SOURCE)


def control_config(
    *,
    control_addr: str | None,
    control_port: int,
    token: str | None,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    auto_tls: bool,
    auto_tls_path: Path | None,
    auto_tls_san: list[str] | None,
    keepalive: float,
    max_client_streams: int = 4096,
    max_client_buffer_mib: int = 32,
    trusted_proxies: SourceAllowList | None = None,
    login_limit_exempt: SourceAllowList | None = None,
    max_handshakes: int = 128,
    max_handshakes_per_source: int = 16,
) -> ControlConfig:
    """The control plane from flags ``check_control`` passed: reads the token and the TLS files (or makes them)."""
    try:
        tokens = TokenSet(read_tokens(token, token_file))
        if token_file is not None:
            warn_if_others_can_read(token_file)
    except TokenError as exc:
        fail(str(exc))
    ssl_context, serving = None, None
    try:
        if tls_cert and tls_key:
            ssl_context = server_context(tls_cert, tls_key)
            warn_if_others_can_read(Path(tls_key), "TLS key", event="tls_key_readable")
            serving = serving_certificate(Path(tls_cert), TLS_FILES_HINT)
        elif auto_tls:
            names = auto_tls_names(auto_tls_san) if auto_tls_san else [
                "localhost", "127.0.0.1", "::1", socket.gethostname()]
            files = auto_tls_files(auto_tls_directory(auto_tls_path), names)
            ssl_context = server_context(Path(files["cert"]), Path(files["key"]))
            log.info("event=auto_tls ca=%s cert=%s names=%s", logfmt(files["ca_cert"]), logfmt(files["cert"]),
                     logfmt(",".join(names)))
            serving = serving_certificate(Path(files["cert"]), AUTO_TLS_HINT.format(ca=files["ca_cert"]))
    except (TlsConfigError, OSError) as exc:
        fail(str(exc))
    return ControlConfig(
        tokens=tokens, host=control_addr or None, port=control_port, ssl_context=ssl_context, keepalive=keepalive,
        max_streams=max_client_streams, max_buffer=max_client_buffer_mib * 1024 * 1024, trusted_proxies=trusted_proxies,
        max_handshakes=max_handshakes, max_handshakes_per_source=max_handshakes_per_source, certificate=serving,
        login_limit_exempt=login_limit_exempt,
    )


TLS_FILES_HINT = ("clients refuse the certificate once it has ended: write a new one to --tls-cert/--tls-key, "
                  "signed by the CA its clients pin, and send the server SIGHUP; for an exit server inletsctl made, create a new exit server")
#: --auto-tls re-issues the server certificate from its CA as needed: what ends is the CA itself.
AUTO_TLS_HINT = ("its CA {ca} ends then too, and clients refuse both: before that, move ca.crt and ca.key away and "
                 "restart to make a new CA, then give clients the new ca.crt")


def tls_reloader(config: ControlConfig, cert: Path | None, key: Path | None) -> Callable[[], None] | None:
    """What SIGHUP runs for --tls-cert/--tls-key (None without them: --auto-tls and --plaintext keep theirs)."""
    if not (cert and key):
        return None
    return lambda: reload_certificate(config, cert, key)


def reload_certificate(config: ControlConfig, cert: Path, key: Path) -> None:
    """SIGHUP: the pair now in --tls-cert/--tls-key serves every handshake from then on (a renewed certificate
    without cutting a client); connections already up keep theirs. The pair is loaded into a new context, so
    files caught half-written, or a key not matching, leave the current pair serving."""
    try:
        context = server_context(cert, key)
    except TlsConfigError as exc:
        log.error("event=reload_failed error=%s keeping=current_certificate", logfmt(exc))
        return
    config.ssl_context = context
    config.certificate = serving_certificate(Path(cert), TLS_FILES_HINT, reloaded=True)
    warn_loose_on_reload(Path(key), "tls_key_readable", "the TLS key")  # a renewed key put in 0644 (cp)


def serving_certificate(cert: Path, hint: str, reloaded: bool = False) -> ServingCertificate:
    """The certificate OpenSSL has just loaded (``reloaded``: by SIGHUP, which is logged first), with a
    warning when it has ended, ends within 30 days (cert_expiry.WARN_WITHIN) or is not valid yet. One this reader
    cannot parse is left to OpenSSL, not refused."""
    try:
        pem = cert.read_bytes()
        not_before, not_after = not_before_pem(pem), not_after_pem(pem)
    except (OSError, ValueError):
        not_before = not_after = None
    if reloaded:
        log.info("event=certificate_reloaded cert=%s not_after=%s", logfmt(cert), iso(not_after) if not_after else "-")
    if not_before is None or not_after is None:
        return ServingCertificate(cert, None, hint)
    if not_before > datetime.datetime.now(datetime.timezone.utc):  # clients refuse it until then
        log.warning("event=certificate_not_yet_valid cert=%s not_before=%s hint=%s", logfmt(cert), iso(not_before),
                    logfmt("clients refuse the certificate until then: check this machine's clock (and the one "
                           "where it was made), or give a certificate valid now (--tls-cert/--tls-key)"))
    serving = ServingCertificate(cert, not_after, hint)
    warn_if_certificate_ending(serving)
    return serving


def warn_if_certificate_ending(serving: ServingCertificate | None) -> None:
    """At start, at a reload, and every day (``lifecycle.DAY``): a warning from 30 days before the serving certificate ends."""
    if serving is not None and serving.end is not None:
        warn_if_ending(log, f"cert={logfmt(serving.path)}", serving.end, serving.hint)


def daily_certificate_check(config: ControlConfig) -> Callable[[], None]:
    """What the server runs every day: a server that runs for months was warned of its certificate's end only at
    start, when the end was still far."""
    return lambda: warn_if_certificate_ending(config.certificate)


def warn_if_plaintext_reachable(control_addr: str | None) -> None:
    """Once the server runs (after every flag was checked: a bad one stays the only line): --plaintext where others
    reach the control port sends tokens in clear, which the flag's help says it is not for."""
    if not is_loopback(control_addr):
        log.warning("event=plaintext_control_plane addr=%s hint=%s", logfmt(control_addr or "*"),
                    logfmt("--plaintext on an address others reach sends the token and every tunnelled byte "
                           "unencrypted: give --control-addr 127.0.0.1 behind a TLS-terminating proxy, "
                           "or use --auto-tls"))


def check_bind_addresses(control_addr: str | None, data_addr: str | None, resolve: bool = True) -> None:
    """--control-addr and --data-addr: an IP address or a name that resolves, checked before anything
    listens (a bad --data-addr was only found when a client's handshake asked for a port, and hung).
    ``resolve=False`` checks the form only (``check_control``): a name may resolve only where a service runs."""
    try:
        for value, flag in ((control_addr, "--control-addr"), (data_addr, "--data-addr")):
            if value:
                (check_bind_address if resolve else check_host)(value, flag)
    except HostError as exc:
        fail(str(exc))


def _overlap(first: str | None, second: str | None) -> bool:
    """Whether two bind addresses can share no port: the same address, or one covering the other ("" is every
    interface; 0.0.0.0 every IPv4 one; :: every one, IPv4 too as Linux binds it). Two names: only when equal
    (they are not resolved here; the listen still says what it finds)."""
    if first == second or not first or not second:
        return True
    try:
        one, two = ipaddress.ip_address(first.strip("[]")), ipaddress.ip_address(second.strip("[]"))
    except ValueError:
        return False
    return one == two or any(a.is_unspecified and (a.version == 6 or b.version == 4) for a, b in ((one, two), (two, one)))


def check_distinct_ports(listeners: list[tuple[str, str | None, set[int]]]) -> None:
    """(flag, bind address, ports) of each of the server's own listeners: one port named by two of its flags on
    overlapping addresses is one line naming both, before anything listens (the OS's "Address already in use"
    sent users looking for another program)."""
    for index, (flag, address, ports) in enumerate(listeners):
        for other_flag, other_address, other_ports in listeners[index + 1:]:
            shared = sorted(ports & other_ports)
            if shared and _overlap(address, other_address):
                fail(f"{flag} and {other_flag} both name port {shared[0]}: the server cannot listen on it twice; "
                     f"give one of them another port")


def auto_tls_names(sans: list[str]) -> list[str]:
    """--auto-tls-san values as a certificate carries them: IP addresses, DNS names (an IDN as its
    A-label, xn--...), ``*.`` wildcards; anything else is one line now, not the crypto library's words."""
    names = []
    for san in sans:
        name = san.strip().strip("[]") if san.strip().startswith("[") else san.strip()
        if is_ip(name):
            names.append(name)
            continue
        wildcard, rest = ("*.", name[2:]) if name.startswith("*.") else ("", name)
        try:
            check_host(rest, "--auto-tls-san")
        except HostError as exc:
            fail(str(exc) if rest else "--auto-tls-san is empty: give a DNS name or an IP address")
        names.append(wildcard + rest.encode("idna").decode("ascii").rstrip("."))
    return names


def auto_tls_directory(path: Path | None) -> Path:
    """Where --auto-tls keeps its files (``check_control`` refused "", the current directory). A directory that
    already exists keeps its mode: it is the user's, so others being able to enter it is said, not changed."""
    if path is None:
        return default_data_dir() / "auto-tls"
    if path.is_dir() and path.stat().st_mode & 0o077:
        log.warning("event=auto_tls_path_open path=%s mode=%04o hint=%s", logfmt(path), path.stat().st_mode & 0o777,
                    logfmt("other users may enter it: the keys stay 0600, but chmod 700 it"))
    return path


def auto_tls_files(directory: Path, names: list[str]) -> dict[str, str]:
    """Create or reuse the --auto-tls CA and certificate, in a child process (see core/certs.py's main)."""
    if importlib.util.find_spec(CERTS_MODULE) is None:  # the exit server's wheel (inletsctl's) carries no certs
        raise TlsConfigError("--auto-tls is not in this server-only install of inlets (an exit server's): pass "
                             "--tls-cert and --tls-key, or install inlets-py in full (pip install . in its checkout)")
    result = subprocess.run(  # it only makes certificates: none of the server's secrets ($INLETS_TOKEN, a cloud's)
        [sys.executable, "-m", CERTS_MODULE, str(directory), *names], capture_output=True, text=True, timeout=60,
        env=child_environment(),
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise TlsConfigError(f"--auto-tls could not prepare {directory}: {last}")
    files = json.loads(result.stdout)
    for key in files.pop("fixed", []):
        log.warning("event=auto_tls_key_mode_fixed file=%s now=0600 reason=%s", logfmt(key),
                    logfmt("others could read the key"))
    return files


def _proxy_version(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    if value not in ("v1", "v2"):
        fail(f"{option} must be v1 or v2, got {value!r}")
    return value


def data_plane_options(
    *, allow_ips: str | None, proxy_protocol: str | None, lb_proxy_protocol: str | None
) -> DataPlaneOptions:
    allow = None
    if allow_ips is not None:
        try:
            allow = SourceAllowList(parse_networks(allow_ips))
        except ValueError as exc:
            fail(str(exc))
    return DataPlaneOptions(
        allow_ips=allow,
        proxy_protocol=_proxy_version(proxy_protocol, "--proxy-protocol"),
        lb_proxy_protocol=_proxy_version(lb_proxy_protocol, "--lb-proxy-protocol"),
    )
