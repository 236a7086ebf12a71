"""``--generate=k8s_yaml``: the Kubernetes objects that run this very command, written by a YAML serializer.

One replica (the default): a Secret, a Deployment and, for a server, a LoadBalancer Service.
A server with ``--replicas N`` (the FAQ's high availability): a client must hold a session with
every replica, so each replica needs an address of its own, which a Deployment's pods cannot
have. So it becomes a StatefulSet (stable pod names ``NAME-0``..``NAME-(N-1)``), one Service per
replica for its control plane (selecting that one pod by ``statefulset.kubernetes.io/pod-name``),
one Service balancing the data plane over all replicas, and the headless Service the StatefulSet's
pods take their DNS names from; every replica mounts the one Secret (token, TLS files), so one CA
and one token reach all of them. The client command, one ``--url`` per replica, heads the output.
"""

from __future__ import annotations

import base64
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..core.hosts import is_loopback
from ..core.ports import parse_port_list
from ..core.auth import MAX_SECRET_FILE, TOKEN, NotARegularFile, SecretFileTooLarge, read_secret_file
from .flags import GenerateError, Pairs, split_secrets, warn_of_credential_headers, without_generate
from .service import FILE_OPTIONS, K8S_SECRET_DIR, name_of

#: The image the pods run: the one the user built from the checkout's Containerfile and pushed, named by
#: $INLETS_IMAGE when the YAML is generated; no registry publishes the project's. Its default is this version's
#: build as a node holds it when loaded there: under localhost/, which no registry serves, so a pull can never fetch
#: whatever someone else publishes as docker.io/inlets-py/inlets (a tag holds no '+': a local version's becomes '-').
IMAGE_ENV = "INLETS_IMAGE"
IMAGE_NAME = "inlets-py/inlets:" + re.sub(r"[^\w.-]", "-", __version__, flags=re.ASCII)
DEFAULT_IMAGE = f"localhost/{IMAGE_NAME}"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])"
#: An image reference as container runtimes parse it (distribution/reference): [HOST[:PORT]/]path[:tag][@digest],
#: the path lowercase, the digest one go-digest validates: sha256, sha384 or sha512, in lowercase hex of its exact
#: length (the grammar's looser ALGORITHM:HEX{32,} passes the parse, then fails that check). One they refuse leaves
#: the pod in InvalidImageName, long after the YAML was applied.
IMAGE_REFERENCE = re.compile(rf"(?:{_HOST}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*(?::\w[\w.-]{{0,127}})?"
                             r"(?:@(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}))?", re.ASCII)
#: The longest name (registry and path, without tag or digest) they take: distribution/reference's NameTotalLengthMax.
MAX_IMAGE_NAME = 255
CONTROL_PORT = 8123
HTTP_PORT = 8000
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
#: Flags whose server writes its certificates at run time. The pod mounts only the Secret, read-only, on a read-only
#: root filesystem, so it could never start; and a volume would not do: a fresh one (emptyDir) at each pod start makes
#: a new CA under clients that pin the old one, or asks Let's Encrypt again until its rate limits refuse.
WRITES_CERTIFICATES = {
    "--auto-tls": "a CA made at each pod start would break the clients that pin it: give --tls-cert/--tls-key "
                  "(they go into the Secret; clients pin the CA with --tls-ca)",
    "--letsencrypt-domain": "certificates asked for again at each pod start would hit Let's Encrypt's rate limits: "
                            "terminate TLS in an Ingress in front instead (e.g. with cert-manager)",
}


#: (port, protocol) of a port the pod serves: TCP or UDP.
Port = tuple[int, str]
MIXED_PROTOCOLS = ("# The --allow-ports data ports are published for TCP and UDP: the server admits either, as its clients\n"
                   "# ask. A LoadBalancer serving both needs Kubernetes 1.26+ and a cloud load balancer that supports it;\n"
                   "# drop the protocol your clients do not use.\n")


#: A Kubernetes Secret holds at most 1 MiB (its TLS files and tokens together).
MAX_K8S_SECRET = 1 << 20


def _image() -> tuple[str, bool]:
    """The image the pods run, and whether $INLETS_IMAGE named it. One no container runtime could pull is refused now:
    applied, its pods would wait in InvalidImageName; a blank one is most likely ``$UNSET_VAR``, not the default."""
    image = os.environ.get(IMAGE_ENV)
    if image is None:
        return DEFAULT_IMAGE, False
    if not image:
        raise GenerateError(f"${IMAGE_ENV} is set but blank: set it to the image you pushed, or unset it for "
                            f"{DEFAULT_IMAGE}")
    if not IMAGE_REFERENCE.fullmatch(image) or len(_image_name(image)) > MAX_IMAGE_NAME:
        raise GenerateError(f"${IMAGE_ENV} {image!r} is not an image reference: give one such as "
                            f"registry.example.com/{IMAGE_NAME} (a lowercase name of at most {MAX_IMAGE_NAME} "
                            "characters, then :TAG or @sha256: and the digest's 64 lowercase hex digits)")
    return image, True


def _image_name(image: str) -> str:
    """An image reference's name: without its digest, nor its tag (a ':' in the last path component; one before
    it is the registry's port)."""
    head, slash, last = image.partition("@")[0].rpartition("/")
    return head + slash + last.partition(":")[0]


def _header(image: str, named: bool) -> str:
    """The YAML's opening comment: where the secrets are, and how to make the image it names (none is published)."""
    head = ("# Generated by inlets --generate=k8s_yaml. The token and TLS files live in the Secret,\n"
            f"# mounted read-only; the container reads them from {K8S_SECRET_DIR}.\n")
    if named:
        return f"{head}# The pods run the image ${IMAGE_ENV} named (from inlets-py's Containerfile):\n#   {image}\n"
    tag = f"REGISTRY/{IMAGE_NAME}"
    return (f"{head}# The pods run the image {image}, which no registry serves: build it from the Containerfile\n"
            "# in inlets-py's checkout, push it where the cluster pulls from, and generate this again with\n"
            f"# {IMAGE_ENV} naming it (podman takes the same commands):\n"
            f"#   docker build -f Containerfile -t {tag} .\n#   docker push {tag}\n"
            f"#   {IMAGE_ENV}={tag} inlets ... --generate=k8s_yaml\n"
            f"# (or load the build into every node as {image}, e.g. with kind load docker-image).\n")


def _finish(image: str, named: bool, body: str) -> str:
    """The YAML under its header; with the default image, one stderr line on how to make it (stdout is the YAML,
    redirected to a file: only stderr reaches the user now)."""
    if not named:
        print(f"inlets: note: the pods run the image {image}, which no registry serves: build it from inlets-py's "
              f"Containerfile, push it and set {IMAGE_ENV} to its name (the YAML's first lines say how)",
              file=sys.stderr)
    return _header(image, named) + body


class _Dumper(yaml.SafeDumper):
    """Every string value double-quoted: PyYAML leaves plain what YAML 1.1 reads as a string, yet Kubernetes' reader
    (YAML 1.2 in part) took ``n``, ``1e3``, ``08080`` in the args for false, 1000, 8080, and refused the Deployment
    ("is not of type 'string'"). Keys are this module's own names and stay plain; ints (ports) stay ints."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')

    def represent_mapping(self, tag: str, mapping: Any, flow_style: bool | None = None) -> yaml.MappingNode:
        node = super().represent_mapping(tag, mapping, flow_style)
        for key, _ in node.value:
            key.style = None  # plain where YAML 1.1 reads it as the string it is; the emitter quotes it otherwise
        return node


_Dumper.add_representer(str, _Dumper.represent_str)


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _read(option: str, path: str, limit: int = MAX_K8S_SECRET) -> bytes:
    """A file that goes into the Secret, read up to ``limit``: /dev/zero was read whole (a MemoryError)."""
    try:
        return read_secret_file(Path(path).expanduser(), limit)
    except SecretFileTooLarge:
        size = "1 MiB" if limit == 1 << 20 else f"{limit // 1024} KiB"
        raise GenerateError(f"{option} {path} is larger than {size}, too large to go into the Secret: give the file "
                            "itself") from None
    except NotARegularFile as exc:
        raise GenerateError(f"{option} {path} is {exc.kind}, not a regular file: give the file itself") from None
    except OSError as exc:
        raise GenerateError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


def _check_secret_size(secret: dict[str, bytes], files: dict[str, str]) -> None:
    """The API server refuses a Secret whose data adds up to more than 1 MiB, when it is applied: said now, naming
    the files (each under 1 MiB alone, as ``_read`` checked) and their sizes."""
    total = sum(len(data) for data in secret.values())
    if total > MAX_K8S_SECRET:
        named = ", ".join(f"{files[key]} ({len(data)} bytes)" for key, data in
                          sorted(secret.items(), key=lambda item: -len(item[1])) if key in files)
        raise GenerateError(f"the Secret would hold {total} bytes, more than the {MAX_K8S_SECRET} (1 MiB) Kubernetes "
                            f"takes: {named}; give smaller files (a CA bundle of only the CAs the peer needs)")


def _ports(option: str, value: str | None) -> list[int]:
    try:
        return parse_port_list(value or "")
    except ValueError as exc:
        raise GenerateError(f"{option}: {exc}") from None


#: A server's listening addresses: the Service (and a client in another pod) reaches the pod's own address only.
BIND_OPTIONS = ("--control-addr", "--data-addr")
#: Where a client's --local ports listen in the pod when not told: its own address, which its Service reaches (the
#: command's default, 127.0.0.1, is the pod's loopback: nothing else in the cluster could connect). IPv4, as most
#: clusters are; an IPv6-only one gives ``--local-addr ::``.
POD_LOCAL_ADDR = "0.0.0.0"
LOCAL_FORWARDS = ("# The --local ports are this client's ClusterIP Service, in the cluster only; pods in the namespace\n"
                  "# reach them at {where}. Any pod may connect: a NetworkPolicy narrows who.\n")


def _replicas(pairs: Pairs) -> tuple[Pairs, int]:
    """Take ``--replicas`` out of the args (it shapes the YAML, not the server); typer checked it is a number."""
    values = [value for option, value in pairs if option == "--replicas"]
    return [(o, v) for o, v in pairs if o != "--replicas"], int(values[-1]) if values and values[-1] else 1


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def _meta(name: str, app: str) -> dict[str, Any]:
    return {"name": name, "labels": _labels(app)}


def _literal(value: str) -> str:
    """``value`` as a container's command or args must spell it to reach the process unchanged: the kubelet expands
    ``$(VAR)`` there and turns ``$$`` into ``$``, so every ``$`` is written ``$$`` (Kubernetes' own escape)."""
    return value.replace("$", "$$")


def _port_name(port: Port) -> str:
    """Unique per Service, at most 15 characters: ``port-N`` (TCP, as before UDP was published), ``udp-N``."""
    number, protocol = port
    return f"port-{number}" if protocol == "TCP" else f"udp-{number}"


def _both(ports: list[int], udp: list[int]) -> list[Port]:
    """Each port for TCP, and those in ``udp`` for UDP too, sorted."""
    return sorted({(port, "TCP") for port in ports} | {(port, "UDP") for port in udp})


#: The sysctl that lets the pod's non-root user bind its ports under 1024, in the pod's own network namespace only
#: (one of Kubernetes' safe sysctls since 1.22, allowed by the baseline and restricted Pod Security Standards). A
#: capability would not do: NET_BIND_SERVICE in ``capabilities.add`` reaches a non-root user's bounding set only, and
#: Kubernetes sets no ambient capabilities, so the exec leaves the process none (kubernetes/kubernetes#56374): an HTTP
#: server on port 80 exited at start with "cannot listen on *:80 (data port): Permission denied".
UNPRIVILEGED_PORT_START = "net.ipv4.ip_unprivileged_port_start"


def _pod_security(ports: list[Port]) -> dict[str, Any]:
    """The pod's securityContext: non-root, and the lowest port it binds made bindable when under 1024."""
    context: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                               "seccompProfile": {"type": "RuntimeDefault"}}
    lowest = min((port for port, _ in ports), default=1024)
    if lowest < 1024:
        context["sysctls"] = [{"name": UNPRIVILEGED_PORT_START, "value": str(lowest)}]
    return context


def _plaintext(pairs: Pairs) -> bool:
    """Whether the control port speaks plain HTTP: the last of ``--plaintext`` / ``--no-plaintext`` wins."""
    flags = [option for option, _ in pairs if option in ("--plaintext", "--no-plaintext")]
    return bool(flags) and flags[-1] == "--plaintext"


def _readiness(control: int, plaintext: bool) -> dict[str, Any]:
    """A server's readinessProbe: ``/healthz`` on the control port, which answers 200 without a token from the
    moment it listens and refuses connections once SIGTERM has it draining (its listener closes), so a Service
    sends clients only to a pod that can take them. No livenessProbe: a loop stalled by a burst of work or a full
    handshake queue would fail it, and the kubelet's restart would cut every tunnel the pod holds."""
    return {"httpGet": {"path": "/healthz", "port": control, "scheme": "HTTP" if plaintext else "HTTPS"},
            "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3}


#: Seconds past --drain-timeout before Kubernetes' SIGKILL: its default grace, 30 s, is --drain-timeout's default
#: too, so the kill came as the drain ended (a tie the kill could win), and before it with a longer --drain-timeout.
KILL_MARGIN = 5


def _grace(pairs: Pairs) -> int:
    """terminationGracePeriodSeconds: the drain the command was given (the last --drain-timeout, as typer takes
    it; already checked a number), then ``KILL_MARGIN``."""
    drain = next((float(value) for option, value in reversed(pairs) if option == "--drain-timeout" and value), 30.0)
    return math.ceil(drain) + KILL_MARGIN


def _pod_template(name: str, image: str, args: list[str], ports: list[Port], grace: int,
                  readiness: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "inlets", "image": image, "command": [_literal("inlets")],
                                 "args": [_literal(arg) for arg in args]}
    if ports:
        container["ports"] = [{"containerPort": port, "protocol": protocol} for port, protocol in ports]
    if readiness is not None:
        container["readinessProbe"] = readiness
    container["securityContext"] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    container["volumeMounts"] = [{"name": "secrets", "mountPath": K8S_SECRET_DIR, "readOnly": True}]
    return {
        "metadata": {"labels": _labels(name)},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": grace,
            # fsGroup: the kubelet makes the Secret's files (root's, defaultMode 0400) readable by this group
            "securityContext": _pod_security(ports),
            "containers": [container],
            "volumes": [{"name": "secrets", "secret": {"secretName": name, "defaultMode": 0o400}}],
        },
    }


def _service(name: str, app: str, selector: dict[str, str], ports: list[Port], headless: bool = False,
             internal: bool = False) -> dict[str, Any]:
    """A LoadBalancer Service; ``internal``: ClusterIP, in the cluster only (a client's --local forwards)."""
    spec: dict[str, Any] = {"clusterIP": "None"} if headless else {"type": "ClusterIP" if internal else "LoadBalancer"}
    spec["selector"] = selector
    spec["ports"] = [{"name": _port_name((p, protocol)), "port": p, "targetPort": p, "protocol": protocol}
                     for p, protocol in ports]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, app), "spec": spec}


def _client_hint(command: list[str], name: str, replicas: int, control: int, scheme: str) -> str:
    urls = " ".join(f"--url {scheme}://{name}-{i}:{control}" for i in range(replicas))
    return (f"# Clients hold a session with every replica, one --url per replica Service (in the cluster; from "
            f"outside,\n# each Service's external address, named in the certificate):\n"
            f"#   inlets {command[0]} client {urls} --token-file TOKEN"
            f"{' --tls-ca CA' if scheme == 'wss' else ''} ...\n")


def k8s_yaml(command: list[str], argv: list[str]) -> str:
    """The YAML for ``inlets <command> <argv>`` (see the module's docstring)."""
    pairs, secrets = split_secrets(command, without_generate(command, argv))
    pairs, replicas = _replicas(pairs)
    image, named = _image()
    name = name_of(command)
    server = command[-1] == "server"
    for option, _ in pairs:
        if option in WRITES_CERTIFICATES:
            raise GenerateError(f"{option} cannot be used with --generate=k8s_yaml: the pod's filesystem is read-only, "
                                f"and {WRITES_CERTIFICATES[option]}")
    warn_of_credential_headers(pairs, "the Deployment's args, which whoever may read Deployments sees (unlike the Secret)")
    if not any(found.secret is TOKEN for found in secrets):
        raise GenerateError("no token: give --token-file (or --token / $INLETS_TOKEN) so it goes into the Secret")
    secret: dict[str, bytes] = {}
    files: dict[str, str] = {}  # a Secret key: the "--OPTION FILE" it was read from, for the size check's message
    for found in secrets:
        secret[found.key] = (found.value.encode() if found.file is None else
                             _read(found.option, found.file, MAX_SECRET_FILE))
        if found.file is not None:
            files[found.key] = f"{found.option} {found.file}"
        pairs.append((found.option, f"{K8S_SECRET_DIR}/{found.key}"))
    keys = {content: key for key, content in secret.items()}  # the bytes a key holds: a file given twice is one key
    args: list[str] = [*command]
    control, data = CONTROL_PORT, [HTTP_PORT] if command[0] == "http" else []
    udp: list[int] = []  # --allow-ports admits a UDP data port as well as a TCP one (the clients choose)
    local: list[int] = []  # a client's --local ports, which it listens on
    if not server and any(option == "--local" for option, _ in pairs) and not any(
            option == "--local-addr" for option, _ in pairs):
        pairs.append(("--local-addr", POD_LOCAL_ADDR))
    for option, value in pairs:
        if option in FILE_OPTIONS and value is not None and not value.startswith(K8S_SECRET_DIR + "/"):
            content = _read(option, value)
            key = keys.get(content)  # one CA bundle as --tls-ca and --upstream-ca: one key, mounted for both
            if key is None:  # numbered when the option came before with another file (the command takes the last)
                key, number = option.lstrip("-"), 1
                while key in secret:
                    number += 1
                    key = f"{option.lstrip('-')}-{number}"
                keys[content], secret[key], files[key] = key, content, f"{option} {value}"
            value = f"{K8S_SECRET_DIR}/{key}"
        if option in BIND_OPTIONS and server and is_loopback(value):
            raise GenerateError(f"{option} {value} cannot be used with --generate=k8s_yaml: the Service reaches the pod "
                                "at the pod's own address, never its loopback; leave it out")
        if option == "--control-port":
            control = next(iter(_ports(option, value)), control)
        elif option == "--port":  # the HTTP data port
            data = _ports(option, value)
        elif option == "--allow-ports":  # the tcp server's data ports, each TCP or UDP as a client asks
            data, udp = data + _ports(option, value), udp + _ports(option, value)
        elif option == "--local" and value:  # LOCAL_PORT:HOST:REMOTE_PORT, checked by the command already
            local += _ports(option, value.partition(":")[0])
        elif option == "--local-addr" and is_loopback(value) and any(o == "--local" for o, _ in pairs):
            raise GenerateError(f"--local-addr {value} cannot be used with --generate=k8s_yaml: nothing else in the "
                                "cluster reaches the pod's loopback; leave it out (the pod's own address is used)")
        args.append(option)
        if value is not None:
            args.append(value)
    ports = _both([control, *data], udp) if server else _both(local, [])
    forwarding = any(option == "--client-forwarding" for option, _ in pairs)  # clients' --local: the control port only
    if server and replicas == 1 and not forwarding and not sorted(set(data) - {control}):  # --replicas: see below
        raise GenerateError("--generate=k8s_yaml needs --allow-ports for a tcp server: its Service publishes only "
                            "the data ports named there, so a port a client opened could not be reached")
    _check_secret_size(secret, files)
    note = MIXED_PROTOCOLS if server and udp else ""
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, name),
                                   "type": "Opaque", "data": {key: _b64(data) for key, data in sorted(secret.items())}}]
    plaintext = _plaintext(pairs)
    template = _pod_template(name, image, args, ports, _grace(pairs), _readiness(control, plaintext) if server else None)
    if replicas == 1:
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, name), "spec": {
            "replicas": 1, "selector": {"matchLabels": _labels(name)}, "template": template}})
        if server or local:
            docs.append(_service(name, name, _labels(name), ports, internal=not server))
        if local:
            note += LOCAL_FORWARDS.format(where=", ".join(f"{name}:{port}" for port in sorted(set(local))))
        return _finish(image, named, note + _dump(docs))
    if not server:
        raise GenerateError("--replicas is for servers: a client holds every replica with one --url each")
    if not sorted(set(data) - {control}):
        raise GenerateError("--replicas needs the data ports for the data Service to balance: give --allow-ports")
    headless = f"{name}-headless"
    docs.append({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name, name), "spec": {
        "replicas": replicas, "serviceName": headless, "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": _labels(name)}, "template": template}})
    docs.append(_service(headless, name, _labels(name), ports, headless=True))
    docs += [_service(f"{name}-{i}", name, {POD_NAME_LABEL: f"{name}-{i}"}, [(control, "TCP")]) for i in range(replicas)]
    docs.append(_service(f"{name}-data", name, _labels(name), _both(sorted(set(data) - {control}), udp)))
    scheme = "ws" if plaintext else "wss"
    return _finish(image, named, note + _client_hint(command, name, replicas, control, scheme)
                   + _dump(docs))
