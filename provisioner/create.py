"""``inletsctl create``: secrets, user-data, the VM, the wait, and the summary, in that order; what a create that
fails says and leaves is ``create_failure``'s."""

from __future__ import annotations

import datetime
import functools
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import material as material_mod
from . import replicas
from .create_failure import (Learned, credential_flags, failed_after_making, interrupted_after_making,
                             interrupted_when_ready, made_anyway, record_id)
from .errors import NotFound, ProvisionError, UsageError
from .names import check_name, random_name
from .providers import Credentials, registry
from .providers.base import Host, Plan, Provisioner
from .output import command_word
from .render import UserDataOptions, client_command, fitting_user_data
from .spec import (CONTROL_PORT, DEFAULT_HTTP_PORT, TLS_SERVER_NAME, LetsEncrypt, TunnelSpec, build_spec,
                   check_runtime_spec, check_timeout, check_vm_ports, control_url, parse_ports, parse_ttl)
from .state import ServerState, delete_command, prepare_root
from .status import connect, state_gone
from .wait import Delivery, Progress, wait_until_balanced, wait_until_ready
from .wheel import build_runtime_wheel

LOCAL_DEFAULT_PORTS = (8080,)
LOCAL_HTTP_PORT = 8000


@dataclass
class CreateOptions:
    provider: str
    state_root: Path
    name: str | None = None
    mode: str = "tcp"
    ports: str | None = None
    domains: list[str] = field(default_factory=list)
    http_port: int | None = None
    upstream: str | None = None
    control_port: int | None = None
    region: str | None = None
    size: str | None = None
    ssh_key: str | None = None
    ttl: str | None = None
    timeout: float = 600.0
    delete_on_failure: bool = False
    runtime_spec: str | None = None  # a pip requirement to install instead of this inletsctl's server wheel
    creds: Credentials = field(default_factory=Credentials)
    letsencrypt: bool | None = None  # None: on for a cloud's http mode with --domain on port 80
    letsencrypt_email: str | None = None
    letsencrypt_issuer: str = "prod"
    letsencrypt_ca: Path | None = None  # a private ACME CA's bundle, copied to the VM
    replicas: int = 1  # >1: that many exit servers sharing token and CA, behind the provider's load balancer


def _free_control_port(opts: CreateOptions, http_port: int) -> int:
    """A free port for the local control plane that is none of the data ports: the data ports listen on
    another loopback address, where a port free here may be the one asked for (a spec refuses a control
    port that is also a data port)."""
    from .providers.local import free_port

    data = {http_port}
    if opts.mode == "tcp":
        try:
            data = set(parse_ports(opts.ports)) if opts.ports is not None else set(LOCAL_DEFAULT_PORTS)
        except ProvisionError:
            data = set()  # build_spec says what is wrong with --ports
    port = free_port()
    for _ in range(16):
        if port not in data:
            break
        port = free_port()
    return port


def _spec(opts: CreateOptions) -> TunnelSpec:
    local = opts.provider == "local"
    default_http_port = LOCAL_HTTP_PORT if local else DEFAULT_HTTP_PORT
    http_port = opts.http_port if opts.http_port is not None else default_http_port
    if opts.control_port is not None:
        control_port = opts.control_port
    elif local:
        control_port = _free_control_port(opts, http_port)
    else:
        control_port = CONTROL_PORT
    spec = build_spec(
        opts.mode,
        opts.ports,
        opts.domains,
        default_ports=LOCAL_DEFAULT_PORTS if local else (80, 443),
        http_port=opts.http_port,
        default_http_port=default_http_port,
        control_port=control_port,
        upstream=opts.upstream,
        letsencrypt=_letsencrypt(opts, http_port),
        lb_proxy_protocol="v1" if opts.replicas > 1 else None,  # the balancer tells each replica the real source
    )
    # a cloud boots an image running sshd on 22; ssh's host may reach its sshd through a forwarded port, and the
    # server then names the port in use to the client (bind_failure); local has no sshd on its data address
    return check_vm_ports(spec) if registry.info(opts.provider).user_data_limit else spec


def _letsencrypt(opts: CreateOptions, http_port: int) -> LetsEncrypt | None:
    """Public certificates where they can work: a cloud VM serving named domains on port 80."""
    cloud = opts.provider not in ("local", "ssh")
    wanted = opts.letsencrypt
    if wanted is None:
        wanted = cloud and opts.mode == "http" and bool(opts.domains) and http_port == 80 and opts.replicas == 1
    if wanted and opts.replicas > 1:
        raise UsageError("--letsencrypt cannot be combined with --replicas: the balancer's health checks and "
                             "HTTP-01 challenges would reach either replica; serve plain HTTP behind it (--no-letsencrypt)")
    if not wanted:
        if opts.letsencrypt_email or opts.letsencrypt_issuer != "prod" or opts.letsencrypt_ca:
            what = "--letsencrypt-email/--letsencrypt-issuer/--letsencrypt-ca need Let's Encrypt"
            if not cloud:  # "(or --letsencrypt)" named a flag this provider then refuses
                raise UsageError(f"{what}, and --provider {opts.provider} does not offer it: drop them (or run "
                                     "`inlets http server --letsencrypt-domain` there yourself)")
            raise UsageError(f"{what}: --mode http --domain on a cloud provider (or --letsencrypt)")
        return None
    if opts.mode != "http":
        raise UsageError("--letsencrypt is for --mode http")
    if not cloud:
        raise UsageError(f"--letsencrypt needs a cloud provider; --provider {opts.provider} is not offered it "
                             "(run `inlets http server --letsencrypt-domain` there yourself)")
    return LetsEncrypt(opts.letsencrypt_email, opts.letsencrypt_issuer, _ca_bundle(opts))


def _ca_bundle(opts: CreateOptions) -> str | None:
    """The PEM of --letsencrypt-ca, checked here: on the VM a bad one failed every issuance, an hour apart."""
    path = opts.letsencrypt_ca
    if path is None:
        return None
    if opts.letsencrypt_issuer in ("prod", "staging"):
        raise UsageError(f"--letsencrypt-ca is for a private CA's --letsencrypt-issuer URL; "
                             f"{opts.letsencrypt_issuer} is verified with the system's CAs: drop --letsencrypt-ca")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise UsageError(f"--letsencrypt-ca {path} holds no PEM certificate: give the CA's root "
                             "(-----BEGIN CERTIFICATE-----)") from None
    except OSError as exc:
        raise UsageError(f"cannot read --letsencrypt-ca {path}: {(exc.strerror or str(exc)).lower()}") from None
    # written out again, certificates only: what else the file held (openssl's "Bag Attributes", control
    # characters) never reaches the user-data's YAML
    return "".join(cert.public_bytes(Encoding.PEM).decode() for cert in certificates)


def create(opts: CreateOptions, progress: Progress) -> dict[str, Any]:
    """Create one exit server (or ``--replicas`` of it behind a balancer) and return its summary; what was
    made is left alone on failure unless asked. A failure is a StatusFailed whose ``result`` is the object
    ``create --json`` prints: the name, provider, id and ip known, ``error`` and ``state``."""
    learned = Learned({"name": opts.name, "provider": opts.provider, "id": None, "ip": None})
    try:
        return _create(opts, progress, learned)
    except ProvisionError as exc:
        raise learned.failed(exc) from None


def _create(opts: CreateOptions, progress: Progress, learned: Learned) -> dict[str, Any]:
    name = check_name(opts.name) if opts.name is not None else random_name()
    learned.result["name"] = name
    replicas.check(opts.provider, opts.replicas)
    group = name if opts.replicas > 1 else None
    names = replicas.replica_names(name, opts.replicas) if group else [name]
    registry.info(opts.provider).names.check(opts.provider, name, names)  # before the cloud is asked anything
    spec = _spec(opts)
    runtime_spec = check_runtime_spec(opts.runtime_spec) if opts.runtime_spec is not None else None
    check_timeout(opts.timeout)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    expires_at = now + parse_ttl(opts.ttl) if opts.ttl else None
    prepare_root(opts.state_root)  # before the provider is asked anything
    provider = connect(opts.provider, opts.state_root, opts.creds)  # credentials missing: STATE_NO_CREDENTIALS
    state = ServerState(opts.state_root, name)
    state.check_free()
    _refuse_orphan(opts, name)
    learned.asking = True
    listed = provider.list() if provider.user_data_limit else []
    learned.asking = False
    if any(h.name in names or (group and h.group == group) for h in listed):
        raise ProvisionError(f"{opts.provider} already has an exit server named {name!r}; choose another name")
    progress("generating token and TLS material")
    secrets = material_mod.generate(name)
    text, delivery = "", None
    if provider.user_data_limit:
        wheel = None if runtime_spec else build_runtime_wheel(spec.mode, letsencrypt=spec.letsencrypt is not None)
        options = UserDataOptions(name, runtime_spec or "", wheel, expires_at, provider.user_data_limit)
        text, push = fitting_user_data(spec, secrets, options)
        delivery = Delivery(wheel, secrets.token) if push and wheel else None
    state.reserve()
    learned.reserved = state
    hosts: list[Host] = []
    creating: str | None = None  # the host whose create call is under way: it may exist though the call failed
    try:
        state.write_secret(state.token_file, (secrets.token + "\n").encode())
        state.write_public(state.ca_file, secrets.ca_cert)
        if provider.keeps_server_key:  # elsewhere the key travels only inside the user-data
            state.write_public(state.cert_file, secrets.server.cert)
            state.write_secret(state.key_file, secrets.server.key)
        meta: dict[str, Any] = {
            "name": name, "provider": opts.provider, "mode": spec.mode, "ports": list(spec.ports),
            "domains": list(spec.domains), "http_port": spec.http_port if spec.mode == "http" else None,
            "control_port": spec.control_port, "created_at": _iso(now), "letsencrypt": spec.letsencrypt is not None,
            "expires_at": _iso(expires_at) if expires_at else None, "region": opts.region, "size": opts.size,
            "id": None, "ip": None,
        }
        learned.meta = meta
        api_url = registry.info(opts.provider).api_url(opts.creds)
        if api_url:  # delete and status ask the API create used, whatever --api-url (or its variable) says then
            meta["api_url"] = api_url
        if group:
            meta |= {"replicas": [{"name": n, "id": None, "ip": None} for n in names], "balancer_id": None}
        state.save(meta)
        for index, host_name in enumerate(names):
            plan = Plan(host_name, spec, text, state.dir, opts.region, opts.size, opts.ssh_key, expires_at, group)
            progress(f"creating {host_name!r} on {opts.provider}")
            creating = host_name
            hosts.append(provider.create(plan))
            creating = None
            record_id(meta, index if group else None, hosts[-1].id)
            state.save(meta)
    except BaseException as exc:
        cloud_unsure = provider.user_data_limit and isinstance(exc, ProvisionError) and not isinstance(exc, NotFound)
        if creating is not None and (cloud_unsure or isinstance(exc, KeyboardInterrupt)):  # it may exist all the same
            exc, known = made_anyway(exc, provider, creating, hosts, meta, state, opts)
            if not known:
                raise exc from None  # the state stays, for the delete command it names
        if not hosts:
            kept = state.remove()
            learned.asking = creating is not None and opts.provider != "local"  # local: this machine (a port taken)
            if kept and isinstance(exc, ProvisionError):  # nothing made, yet the folder stays: say so, not a delete
                raise ProvisionError(f"{exc}; {kept}", exc.exit_code) from None
            raise exc
        if isinstance(exc, KeyboardInterrupt):
            raise interrupted_after_making(exc, hosts, state, opts) from None
        if not isinstance(exc, ProvisionError):
            raise
        raise failed_after_making(exc, provider, meta, state, opts, progress) from None
    started = time.monotonic()
    why = None
    if provider.user_data_limit:
        why = functools.partial(_seen, learned, functools.partial(_why_hint, opts), group)
    try:
        for index, host in enumerate(hosts):
            host.control_port = host.control_port or spec.control_port
            remaining = max(0.0, opts.timeout - (time.monotonic() - started))  # each wait looks at least once
            learned.ip = None if group else host.ip  # local and ssh: known from the start; a cloud's: once active
            hosts[index] = wait_until_ready(provider, host, state.ca_file, remaining, progress, provider.poll_interval,
                                            delivery=delivery, why=why, deleted=lambda: not state.dir.exists())
            if group:
                meta["replicas"][index]["ip"] = hosts[index].ip
        if group:
            _balance(provider, hosts, spec, meta, state, opts, progress, started)
    except ProvisionError as exc:
        raise failed_after_making(exc, provider, meta, state, opts, progress) from None
    except KeyboardInterrupt as exc:
        raise interrupted_after_making(exc, hosts, state, opts) from None
    recorded = False  # the client command is in the state: a Ctrl-C from here on leaves a ready server
    try:  # a Ctrl-C here exited 130 without a word, the server up and its state without an address
        ips = [host.ip or "" for host in hosts]
        if not group:
            meta.update(ip=hosts[0].ip, data_addr=hosts[0].data_addr or hosts[0].ip)
        inlets = command_word("inlets")
        meta["client_command"] = client_command(spec, ips, state.token_file, state.ca_file, inlets)
        meta["status_command"] = status_command(spec, ips[0], state.token_file, state.ca_file, inlets)
        if group:
            meta["status_commands"] = [status_command(spec, ip, state.token_file, state.ca_file, inlets) for ip in ips]
        state.save(meta)
        recorded = True
        note = registry.firewall_note(opts.provider, name, spec)  # in the try: a Ctrl-C while the summary was
        made = summary(meta, state, credential_flags(opts.creds))  # made exited 130 without a word
        return made | ({"firewall": note} if note else {})
    except KeyboardInterrupt as exc:
        if recorded:
            raise interrupted_when_ready(exc, name, state.root, credential_flags(opts.creds)) from None
        raise interrupted_after_making(exc, hosts, state, opts) from None


def _refuse_orphan(opts: CreateOptions, name: str) -> None:
    """Refuse the name of a local exit server still running after its folder was removed (``list``'s "local only"):
    a new folder of that name hid it from ``delete NAME``, which then stopped the new exit server instead."""
    orphan = next((h for h in connect("local", opts.state_root, opts.creds).list() if h.name == name), None)
    if orphan is not None:
        raise ProvisionError(f"{state_gone(orphan, opts.state_root, by_id=True)}; or choose another name")


def _balance(provider: Provisioner, hosts: list[Host], spec: TunnelSpec, meta: dict[str, Any], state: ServerState,
             opts: CreateOptions, progress: Progress, started: float) -> None:
    """Put the provider's load balancer in front of the replicas' data ports and wait until it has an address."""
    balancers = replicas.balancing(provider)
    progress(f"creating load balancer {meta['name']!r} on {opts.provider}")
    balancer = balancers.create_balancer(meta["name"], spec, [h.id for h in hosts], opts.region)
    meta.update(id=balancer.id, balancer_id=balancer.id)
    state.save(meta)
    balancer = wait_until_balanced(balancers, balancer, opts.timeout, progress, started=started)
    meta.update(ip=balancer.ip, data_addr=balancer.ip)




def _seen(learned: Learned, why: Callable[[Host], str], group: str | None, host: Host) -> str:
    """``why``, which the wait asks once the VM is active at its address: that address is then known, and a wait
    that fails after raises without it (``create --json``'s failure said "ip": null beside "is active at IP")."""
    if not group:  # a replica's is not the exit server's (its balancer's)
        learned.ip = host.ip
    return why(host)


def _why_hint(opts: CreateOptions, host: Host) -> str:
    """How to read why a VM's tunnel server never came up: cloud-init's report and the unit's journal."""
    look = "cloud-init status --long; journalctl -u inlets --no-pager -n 50"
    if not opts.ssh_key:
        return (f"the VM has no SSH key (--ssh-key), so run `{look}` on its console in {opts.provider}'s web console "
                "to see why")
    user = registry.info(opts.provider).login_user
    if opts.provider == "gce" and ":" in opts.ssh_key:  # gce keys name their user: USER:ssh-ed25519 ...
        user = opts.ssh_key.split(":", 1)[0]
    sudo = "" if user == "root" else "sudo "
    return f"see why with: ssh {user}@{host.ip or host.id} '{sudo}cloud-init status --long; {sudo}journalctl -u inlets --no-pager -n 50'"


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(meta: dict[str, Any], state: ServerState, flags: str = "") -> dict[str, Any]:
    """What ``create`` prints (and ``--json`` emits): everything but the token itself; ``flags``: the credential
    files its delete command needs (``credential_flags``)."""
    data_host = meta.get("data_addr") or meta.get("ip")
    if meta["mode"] == "tcp":
        endpoints = [f"{_hostport(data_host, p)}" for p in meta["ports"]]
    else:
        endpoints = [f"https://{d}" for d in meta["domains"]] if meta.get("letsencrypt") else None
        endpoints = endpoints or [f"http://{d}:{meta['http_port']}" for d in meta["domains"]] or [
            f"http://{_hostport(data_host, meta['http_port'])}"
        ]
    # a data plane on an address of its own (local: 127.0.0.2), which the domains' DNS does not name: said beside
    served_at = (_hostport(data_host, meta["http_port"]) if meta["mode"] == "http" and meta["domains"]
                 and not meta.get("letsencrypt") and data_host != meta.get("ip") else None)
    return {
        "name": meta["name"], "provider": meta["provider"], "id": meta["id"], "ip": meta["ip"],
        "mode": meta["mode"], "ports": meta["ports"], "domains": meta["domains"], "endpoints": endpoints,
        **({"served_at": served_at} if served_at else {}),
        "control_port": meta["control_port"], "created_at": meta["created_at"], "expires_at": meta["expires_at"],
        "token_file": str(state.token_file), "ca_file": str(state.ca_file),
        "client_command": meta["client_command"], "status_command": meta.get("status_command"),
        "delete_command": delete_command(meta["name"], state.root) + flags,
    } | ({"replicas": meta["replicas"], "balancer_id": meta["balancer_id"],
          "status_commands": meta.get("status_commands", [])} if replicas.is_group(meta) else {})


def status_command(spec: TunnelSpec, host: str, token_file: Path, ca_file: Path, inlets: str = "inlets") -> str:
    """``inlets status`` for this exit server, pinned to its CA and name like the client command."""
    return shlex.join([inlets, "status", "--url", control_url(host, spec.control_port), "--token-file",
                       str(token_file), "--tls-ca", str(ca_file), "--tls-server-name", TLS_SERVER_NAME])


def _hostport(host: str | None, port: int) -> str:
    host = host or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
