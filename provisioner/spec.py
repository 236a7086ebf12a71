"""What an exit server serves (mode, ports, domains) and the exact commands that serve it.

The server argv is built here once and used three ways: the systemd unit in the
cloud-init user-data, the local provider's background process, and the test fake's
"booting" droplet; so all three run the same flags.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Literal

from inlets_py.runtime.core.hosts import is_ip
from inlets_py.runtime.core.ports import parse_port
from inlets_py.runtime.core.tls import EXIT_SERVER_NAME

from .errors import UsageError

Mode = Literal["tcp", "http"]
CONTROL_PORT = 8123
DEFAULT_TCP_PORTS = (80, 443)
DEFAULT_HTTP_PORT = 80
HTTPS_PORT = 443  # HTTP mode with Let's Encrypt: the data plane's HTTPS
DEFAULT_TCP_UPSTREAM = "127.0.0.1"
DEFAULT_HTTP_UPSTREAM = "http://127.0.0.1:8080"
#: sshd listens on this port, on every address, on the image of every cloud VM: the exit server cannot listen there
VM_SSH_PORT = 22
MAX_TTL_DAYS = 365  # --ttl is for exit servers that should not outlive a task; longer ones are deleted by hand
# Whole-string patterns, used with fullmatch (a pattern ending in $ lets a trailing newline through).
_DOMAIN_RE = re.compile(r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TTL_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
#: a pip requirement or URL: printable, no spaces at either end, no line breaks or control characters
_RUNTIME_SPEC_RE = re.compile(r"[!-~](?:[ -~]*[!-~])?")


@dataclass(frozen=True)
class LetsEncrypt:
    """HTTP mode: the exit server gets public certificates for its domains (HTTP-01 on port 80, HTTPS on 443)."""

    email: str | None = None
    issuer: str = "prod"  # prod, staging or an ACME directory URL
    ca_pem: str | None = None  # a private issuer's CA bundle, written to LETSENCRYPT_CA on the VM


@dataclass(frozen=True)
class TunnelSpec:
    """The tunnel an exit server offers, independent of where it runs."""

    mode: Mode
    ports: tuple[int, ...] = ()  # tcp: data ports opened for the client
    domains: tuple[str, ...] = ()  # http: host names the client serves
    http_port: int = DEFAULT_HTTP_PORT  # http: data-plane port
    control_port: int = CONTROL_PORT
    upstream: str = DEFAULT_TCP_UPSTREAM  # what the printed client forwards to: tcp host, or http URL
    letsencrypt: LetsEncrypt | None = None  # http: serve the domains over HTTPS with Let's Encrypt
    lb_proxy_protocol: str | None = None  # v1|v2: a balancer in front sends the real source (--replicas)

    @property
    def data_ports(self) -> tuple[int, ...]:
        return self.ports if self.mode == "tcp" else (self.http_port,)


def parse_ports(text: str) -> tuple[int, ...]:
    """``80,443`` -> (80, 443); every port 1-65535, no duplicates."""
    if not text.strip():
        raise UsageError("--ports is empty: give the data ports, e.g. --ports 80,443, or leave it out for the default")
    ports: list[int] = []
    for item in text.split(","):
        item = item.strip()
        port = parse_port(item)
        if port is None:
            raise UsageError(f"invalid port {item!r} in --ports {text!r}: ports are 1-65535")
        if port in ports:
            raise UsageError(f"port {item} given twice in --ports {text!r}")
        ports.append(port)
    return tuple(ports)


def check_domain(domain: str) -> str:
    name = domain.strip().lower().removesuffix(".")  # the root's dot alone (example.com.)
    if not _DOMAIN_RE.fullmatch(name):
        try:  # an international name: DNS, the Host header and Let's Encrypt all take its xn-- form
            ascii_name = name.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_name = ""
        if ascii_name != name and _DOMAIN_RE.fullmatch(ascii_name):
            raise UsageError(f"invalid domain {domain!r}: give it in its ASCII (xn--) form: --domain {ascii_name}")
        raise UsageError(f"invalid domain {domain!r}: give a DNS name such as example.com (labels of letters, "
                             "digits and inner hyphens, no wildcards)")
    return name


def check_runtime_spec(text: str) -> str:
    """``--runtime-spec``: one pip requirement (``inlets-py==0.2.0``, ``inlets-py @ https://...``), on one line."""
    if not _RUNTIME_SPEC_RE.fullmatch(text):
        raise UsageError(f"invalid --runtime-spec {text!r}: give one pip requirement on one line, "
                             "e.g. inlets-py==0.2.0 or 'inlets-py @ https://example.com/inlets_py-0.2.0-py3-none-any.whl'")
    return text


def parse_ttl(text: str) -> datetime.timedelta:
    """``2h``, ``90m``, ``1d12h``, ``45s``: how long the exit server may live, 1s to MAX_TTL_DAYS.

    Summed as Python ints first: timedelta and dates overflow (in C) long before a regex-valid number ends."""
    match = _TTL_RE.fullmatch(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise UsageError(f"invalid --ttl {text!r}: use e.g. 30m, 2h, 1d12h")
    if any(len(g or "") > 12 for g in match.groups()):  # int() refuses numbers of thousands of digits
        seconds = MAX_TTL_DAYS * 86400 + 1
    else:
        seconds = sum(int(g or 0) * unit for g, unit in zip(match.groups(), (86400, 3600, 60, 1), strict=True))
    if seconds < 1:
        raise UsageError(f"invalid --ttl {text!r}: must be at least 1s")
    if seconds > MAX_TTL_DAYS * 86400:
        raise UsageError(f"invalid --ttl {text!r}: at most {MAX_TTL_DAYS}d; leave --ttl out for an exit server "
                             "that stays until you delete it")
    return datetime.timedelta(seconds=seconds)


def check_timeout(seconds: float) -> float:
    """``--timeout``: float() takes 'nan' and 'inf' too, and neither ends a wait."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds such as 600, not {seconds:g}")
    return seconds


def build_spec(
    mode: str,
    ports: str | None,
    domains: list[str],
    *,
    default_ports: tuple[int, ...] = DEFAULT_TCP_PORTS,
    http_port: int | None = None,
    default_http_port: int = DEFAULT_HTTP_PORT,
    control_port: int = CONTROL_PORT,
    upstream: str | None = None,
    letsencrypt: LetsEncrypt | None = None,
    lb_proxy_protocol: str | None = None,
) -> TunnelSpec:
    """Validate the create options into a spec, with one-line errors. ``ports`` and ``http_port`` are as given
    (None: left out, so the defaults apply): a flag of the other mode is refused, never silently ignored.

    The client's upstream parsers are imported here, not with this module: they bring the tunnel runtime
    (websockets), which ``inletsctl --help`` and the provider declarations do not need."""
    from inlets_py.runtime.client import http_upstreams, tcp_upstreams

    if mode not in ("tcp", "http"):
        raise UsageError(f"unknown --mode {mode!r}: choose tcp or http")
    if not 1 <= control_port <= 65535:
        raise UsageError(f"invalid --control-port {control_port}: ports are 1-65535")
    if mode == "tcp":
        if domains:
            raise UsageError("--domain is for --mode http; give --ports for --mode tcp")
        if http_port is not None:
            raise UsageError("--http-port is for --mode http; give --ports for --mode tcp")
        parsed = parse_ports(ports) if ports is not None else default_ports
        if control_port in parsed:
            raise UsageError(f"port {control_port} is the control port; choose other --ports")
        host = _untrimmed(upstream or DEFAULT_TCP_UPSTREAM, "tcp")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if "=" in host or (":" in bare and not is_ip(bare)):  # the client's forms for its own --ports, not create's
            raise UsageError(f"invalid --upstream {host!r} for --mode tcp: give the host alone (e.g. 127.0.0.1); "
                                 "the client forwards each of --ports to the same port on it")
        try:  # the client's own check: the printed client command takes what create took
            tcp_upstreams.parse_upstreams([host], [",".join(map(str, parsed))])
        except tcp_upstreams.UpstreamError as exc:
            raise UsageError(f"invalid --upstream for --mode tcp: {exc}") from None
        return TunnelSpec("tcp", ports=parsed, control_port=control_port, upstream=host,
                          lb_proxy_protocol=lb_proxy_protocol)
    if ports is not None:
        raise UsageError("--ports is for --mode tcp; give --domain for --mode http")
    http_port = default_http_port if http_port is None else http_port
    if not 1 <= http_port <= 65535:
        raise UsageError(f"invalid --http-port {http_port}: ports are 1-65535")
    if http_port == control_port:
        raise UsageError(f"--http-port {http_port} is also the control port: choose another --http-port or --control-port")
    names = tuple(dict.fromkeys(check_domain(d) for d in domains))  # Example.COM. and example.com are one name
    url = _untrimmed(upstream or DEFAULT_HTTP_UPSTREAM, "http")
    try:  # the client's own check, as for tcp
        http_upstreams.parse_upstream_url(url)
    except http_upstreams.UpstreamError as exc:
        raise UsageError(f"invalid --upstream for --mode http: {exc}") from None
    if letsencrypt is not None:
        _check_letsencrypt(letsencrypt, names, http_port, control_port)
    return TunnelSpec("http", domains=names, http_port=http_port, control_port=control_port, upstream=url,
                      letsencrypt=letsencrypt, lb_proxy_protocol=lb_proxy_protocol)


def check_vm_ports(spec: TunnelSpec) -> TunnelSpec:
    """For a cloud VM, whose sshd holds port 22: a control or HTTP port there stops the server at boot (create
    then waits out --timeout); a TCP data port there refuses every client, which asks for all its ports at once.
    Not for --provider local (no VM, no sshd: the data ports listen on 127.0.0.2)."""
    why = "the VM's SSH server (sshd) listens there"
    if spec.control_port == VM_SSH_PORT:
        raise UsageError(f"--control-port {VM_SSH_PORT}: {why}; choose another --control-port (default {CONTROL_PORT})")
    if spec.mode == "tcp" and VM_SSH_PORT in spec.ports:
        raise UsageError(f"--ports {','.join(map(str, spec.ports))} includes {VM_SSH_PORT}: {why}, so the tunnel "
                             "cannot; choose other --ports (SSH to the VM needs no data port)")
    if spec.mode == "http" and spec.http_port == VM_SSH_PORT:
        raise UsageError(f"--http-port {VM_SSH_PORT}: {why}; choose another --http-port (default {DEFAULT_HTTP_PORT})")
    return spec


def _untrimmed(upstream: str, mode: str) -> str:
    """The client's parsers strip what they read; the value create writes into the VM's files must be bare."""
    if upstream != upstream.strip():
        raise UsageError(f"invalid --upstream {upstream!r} for --mode {mode}: no spaces or line breaks around it")
    return upstream


def _check_letsencrypt(letsencrypt: LetsEncrypt, domains: tuple[str, ...], http_port: int, control_port: int) -> None:
    from inlets_py.runtime.acme.store import AcmeConfigError, check_domain, check_email, directory_url

    if not domains:
        raise UsageError("Let's Encrypt needs --domain: certificates are issued for names, not the catch-all")
    if http_port != 80:
        raise UsageError(f"Let's Encrypt validates on port 80, not --http-port {http_port}; drop one of them")
    if control_port == HTTPS_PORT:  # the server refuses two listeners on one port: the unit would never start
        raise UsageError(f"--control-port {HTTPS_PORT} is where Let's Encrypt's HTTPS listens: choose another "
                             f"--control-port (default {CONTROL_PORT}), or --no-letsencrypt")
    try:
        for domain in domains:
            check_domain(domain)
        check_email(letsencrypt.email)
        directory_url(letsencrypt.issuer)
    except AcmeConfigError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class ServerFiles:
    """Where the server reads its secrets (on the VM, or in the local state folder)."""

    token: str
    cert: str
    key: str


VM_FILES = ServerFiles("/etc/inlets/token", "/etc/inlets/server.crt", "/etc/inlets/server.key")
VM_INLETS = "/opt/inlets/venv/bin/inlets"
#: --letsencrypt-ca's bundle on the VM (root's, readable by the service: not a secret)
LETSENCRYPT_CA = "/etc/inlets/letsencrypt-ca.crt"


def server_argv(
    spec: TunnelSpec,
    files: ServerFiles,
    inlets: list[str] | None = None,
    *,
    control_addr: str | None = None,
    data_addr: str | None = None,
) -> list[str]:
    """The ``inlets tcp|http server`` command line for ``spec``."""
    argv = list(inlets or [VM_INLETS]) + [spec.mode, "server"]
    if control_addr:
        argv += ["--control-addr", control_addr]
    argv += ["--control-port", str(spec.control_port)]
    if data_addr:
        argv += ["--data-addr", data_addr]
    argv += ["--token-file", files.token, "--tls-cert", files.cert, "--tls-key", files.key]
    if spec.lb_proxy_protocol:
        argv += ["--lb-proxy-protocol", spec.lb_proxy_protocol]
    if spec.mode == "tcp":
        argv += ["--allow-ports", ",".join(map(str, spec.ports))]
    else:
        argv += ["--port", str(spec.http_port)]
        if spec.letsencrypt is not None:  # keys under $XDG_DATA_HOME/inlets/letsencrypt (render: the unit's state dir)
            for domain in spec.domains:
                argv += ["--letsencrypt-domain", domain]
            if spec.letsencrypt.email:
                argv += ["--letsencrypt-email", spec.letsencrypt.email]
            argv += ["--letsencrypt-issuer", spec.letsencrypt.issuer]
            if spec.letsencrypt.ca_pem:
                argv += ["--letsencrypt-ca", LETSENCRYPT_CA]
    return argv


def client_upstreams(spec: TunnelSpec) -> list[str]:
    if spec.mode == "tcp" or not spec.domains:
        return [spec.upstream]
    return [f"{domain}={spec.upstream}" for domain in spec.domains]


def control_url(host: str, port: int) -> str:
    bracketed = f"[{host}]" if ":" in host else host
    return f"wss://{bracketed}:{port}"


TLS_SERVER_NAME = EXIT_SERVER_NAME
