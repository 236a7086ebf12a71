"""``--generate=k8s_yaml`` validates against the Kubernetes API schemas of the current and previous minor
release (the ``kubernetes-validate`` package carries them; strict: an unknown field fails too)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.process import inlets, one_line_error
from helpers.tunnel import TlsFiles

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                          "(pip install -e '.[test]' installs it)")
from kubernetes_validate import utils as k8s_utils  # noqa: E402


def _minors() -> list[str]:
    """The newest two minor releases the package has schemas for: the current one and the one before."""
    minors = sorted({k8s_utils.major_minor(v) for v in k8s_utils.all_versions()},
                    key=lambda minor: tuple(int(part) for part in minor.split(".")))
    return [f"{minor}.0" for minor in minors[-2:]]


VERSIONS = _minors()


def _valid(text: str) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    assert docs, text
    for doc in docs:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{doc['kind']} {doc['metadata']['name']} is not valid Kubernetes {version}: "
                                     f"{exc.message} at {'/'.join(map(str, exc.path))}") from None
    return docs


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("k8s-token-Zq81\n")
    return path


def test_two_minor_releases_are_checked() -> None:
    assert len(VERSIONS) == 2 and VERSIONS[0] != VERSIONS[1], VERSIONS


@pytest.mark.parametrize("argv", [
    ("tcp", "server", "--allow-ports", "80,443", "--control-port", "8123"),
    ("http", "server", "--port", "8000"),
    ("http", "server", "--port", "80"),  # a pod sysctl lets its user bind it
    ("tcp", "client", "--url", "wss://inlets-tcp-server:8123", "--upstream", "127.0.0.1", "--ports", "80"),
    ("http", "client", "--url", "wss://inlets-http-server:8123", "--upstream", "http://web:3000"),
], ids=["tcp-server", "http-server", "http-server-80", "tcp-client", "http-client"])
def test_generated_yaml_is_valid_kubernetes(argv: tuple[str, ...], token_file: Path, tmp_path: Path) -> None:
    extra = ["--plaintext"] if argv[1] == "server" else []
    result = inlets(*argv, *extra, "--token-file", str(token_file), "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    docs = _valid(result.stdout)
    kinds = [doc["kind"] for doc in docs]
    assert kinds == (["Secret", "Deployment", "Service"] if argv[1] == "server" else ["Secret", "Deployment"])
    pod = docs[1]["spec"]["template"]["spec"]
    # The kubelet writes a Secret's files as root's, here 0400: the container's user reads them only through
    # fsGroup (the files then get its group, with read for it) or a mode that lets others read (never, here).
    mode = pod["volumes"][0]["secret"]["defaultMode"]
    assert pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsGroup"] or mode & 0o004


def test_the_check_fails_what_kubernetes_would_refuse(token_file: Path) -> None:
    """A control: the same output with a misspelt field or a port as text is refused."""
    result = inlets("tcp", "server", "--plaintext", "--allow-ports", "80", "--token-file", str(token_file),
                    "--generate=k8s_yaml")
    docs = _valid(result.stdout)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 2
    with pytest.raises(AssertionError, match="replica"):
        _valid(yaml.safe_dump(deployment))
    service = next(d for d in docs if d["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(AssertionError, match="not valid Kubernetes"):
        _valid(yaml.safe_dump(service))


def _published(docs: list[dict[str, Any]]) -> tuple[set[tuple[int, str]], dict[str, set[tuple[int, str]]]]:
    """The pod's (containerPort, protocol)s and each Service's (port, protocol)s, its port names checked as the API
    server checks them (unique in the Service, at most 15 characters, lowercase letters, digits and '-')."""
    pod = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))["spec"]["template"]["spec"]
    container = {(p["containerPort"], p["protocol"]) for p in pod["containers"][0]["ports"]}
    services = {}
    for service in (d for d in docs if d["kind"] == "Service"):
        names = [p["name"] for p in service["spec"]["ports"]]
        assert len(set(names)) == len(names), names
        assert all(len(name) <= 15 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) for name in names), names
        services[service["metadata"]["name"]] = {(p["port"], p["protocol"]) for p in service["spec"]["ports"]}
    return container, services


def test_allowed_data_ports_are_published_for_udp_too(tls: TlsFiles, token_file: Path) -> None:
    """--allow-ports admits a client's UDP data port as well as its TCP one (the server learns which at the
    handshake), but the Service and the pod published TCP only: a UDP port such a server opened was unreachable."""
    both = {(port, protocol) for port in (53, 80) for protocol in ("TCP", "UDP")}
    result = inlets("tcp", "server", "--plaintext", "--allow-ports", "80,53", "--token-file", str(token_file),
                    "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    container, services = _published(_valid(result.stdout))
    assert container == services["inlets-tcp-server"] == both | {(8123, "TCP")}
    replicated = _published(_replicated("tcp", tls, token_file)[1])[1]
    assert replicated["inlets-tcp-server-data"] == {(port, protocol) for port in (80, 443) for protocol in ("TCP", "UDP")}
    assert replicated["inlets-tcp-server-0"] == {(8123, "TCP")}  # the control plane: TCP only
    http = inlets("http", "server", "--plaintext", "--token-file", str(token_file), "--generate=k8s_yaml")
    assert _published(_valid(http.stdout)) == ({(8000, "TCP"), (8123, "TCP")},
                                               {"inlets-http-server": {(8000, "TCP"), (8123, "TCP")}})
    assert "for TCP and UDP" in result.stdout and "UDP" not in http.stdout  # the comment on mixed protocols


# ------------------------------------------------- --replicas: the FAQ's two servers, a client holding both

POD_NAME = "statefulset.kubernetes.io/pod-name"


def _replicated(mode: str, tls: TlsFiles, token_file: Path, *extra: str) -> tuple[str, list[dict[str, Any]]]:
    data = ["--allow-ports", "80,443"] if mode == "tcp" else ["--port", "8000"]
    result = inlets(mode, "server", *data, "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
                    "--token-file", str(token_file), "--replicas", "2", *extra, "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    return result.stdout, _valid(result.stdout)


@pytest.mark.parametrize("mode", ["tcp", "http"])
def test_replicas_make_a_statefulset_a_service_per_replica_and_one_for_the_data_plane(
        mode: str, tls: TlsFiles, token_file: Path) -> None:
    text, docs = _replicated(mode, tls, token_file)
    name = f"inlets-{mode}-server"
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    assert [d["kind"] for d in docs].count("Deployment") == 0 and len(sets) == 1
    stateful = sets[0]
    pods = [f"{stateful['metadata']['name']}-{i}" for i in range(stateful["spec"]["replicas"])]  # its pods' names
    assert pods == [f"{name}-0", f"{name}-1"]
    pod_labels = stateful["spec"]["template"]["metadata"]["labels"]
    assert stateful["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services[stateful["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"  # the governing, headless one

    def selected(service: dict[str, Any]) -> list[str]:
        """The pods a Service's selector picks, each pod carrying the template's labels and its own name."""
        return [pod for pod in pods if service["spec"]["selector"].items() <= {**pod_labels, POD_NAME: pod}.items()]

    control = 8123
    for pod in pods:  # one Service per replica, for its control plane, selecting that pod only
        assert selected(services[pod]) == [pod]
        assert [p["port"] for p in services[pod]["spec"]["ports"]] == [control]
    data = services[f"{name}-data"]
    assert selected(data) == pods and data["spec"]["type"] == "LoadBalancer"
    assert control not in {p["port"] for p in data["spec"]["ports"]}
    assert {p["port"] for p in data["spec"]["ports"]} == ({80, 443} if mode == "tcp" else {8000})
    # one Secret for all: every replica mounts it, so one CA and one token reach each of them
    secrets = [d for d in docs if d["kind"] == "Secret"]
    volume = stateful["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert len(secrets) == 1 and volume == secrets[0]["metadata"]["name"]
    assert {"token", "tls-cert", "tls-key"} <= set(secrets[0]["data"])
    args = stateful["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--replicas" not in args  # it shapes the YAML, the server does not take it
    hint = next(line for line in text.splitlines() if f"inlets {mode} client" in line)
    assert hint.startswith("#") and f"--url wss://{name}-0:8123 --url wss://{name}-1:8123" in hint, hint


def test_a_client_holding_both_replica_services_is_one_valid_deployment(tls: TlsFiles, tmp_path: Path) -> None:
    name = "inlets-tcp-server"
    tokens = []
    for n in range(2):
        tokens.append(tmp_path / f"token-{n}")
        tokens[-1].write_text(f"replica-token-{n}\n")
    result = inlets("tcp", "client", "--url", f"wss://{name}-0:8123", "--url", f"wss://{name}-1:8123",
                    "--token-file", str(tokens[0]), "--token-file", str(tokens[1]), "--tls-ca", str(tls.ca),
                    "--upstream", "127.0.0.1", "--ports", "80", "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    docs = _valid(result.stdout)
    assert [d["kind"] for d in docs] == ["Secret", "Deployment"]
    args = docs[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--url"] == [f"wss://{name}-0:8123", f"wss://{name}-1:8123"]


def test_one_replica_is_the_deployment_as_without_the_flag(token_file: Path) -> None:
    argv = ("tcp", "server", "--plaintext", "--allow-ports", "80", "--token-file", str(token_file), "--generate=k8s_yaml")
    plain, one = inlets(*argv), inlets(*argv, "--replicas", "1")
    assert one.returncode == 0 and plain.returncode == 0, one.stderr
    assert _valid(one.stdout) == _valid(plain.stdout)


@pytest.mark.parametrize("argv, error", [
    (("tcp", "server", "--replicas", "2"), "--replicas shapes the Kubernetes YAML: use it with --generate=k8s_yaml"),
    (("http", "server", "--replicas", "2", "--generate=systemd"), "--replicas shapes the Kubernetes YAML"),
    (("tcp", "server", "--plaintext", "--replicas", "2", "--generate=k8s_yaml"), "--replicas needs the data ports"),
    (("tcp", "server", "--replicas", "2", "--allow-ports", "80", "--auto-tls", "--generate=k8s_yaml"),
     "--auto-tls cannot be used with --generate=k8s_yaml: the pod's filesystem is read-only"),
], ids=["no-generate", "systemd", "no-data-ports", "auto-tls"])
def test_replicas_misused_get_one_line(argv: tuple[str, ...], error: str, token_file: Path) -> None:
    result = inlets(*argv, "--token-file", str(token_file))
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith(f"inlets: error: {error}") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("argv, error", [
    (("tcp", "server"), "--generate=k8s_yaml needs --allow-ports for a tcp server: its Service publishes only"),
    (("tcp", "server", "--allow-ports", "80", "--control-addr", "127.0.0.1"), "--control-addr 127.0.0.1 cannot be used"),
    (("http", "server", "--data-addr", "::1"), "--data-addr ::1 cannot be used with --generate=k8s_yaml"),
    (("tcp", "server", "--allow-ports", "80", "--data-addr=localhost"), "--data-addr localhost cannot be used"),
    # 127.0.0.1 as an IPv6 socket binds it: Python's is_loopback calls it no loopback, and it was let through
    (("tcp", "server", "--allow-ports", "80", "--data-addr", "::ffff:127.0.0.1"),
     "--data-addr ::ffff:127.0.0.1 cannot be used with --generate=k8s_yaml"),
    (("http", "server", "--control-addr", "::FFFF:7f00:1"), "--control-addr ::FFFF:7f00:1 cannot be used"),
], ids=["tcp-no-allow-ports", "control-loopback", "data-loopback-v6", "data-localhost", "data-loopback-v4-mapped",
        "control-loopback-v4-mapped"])
def test_a_server_its_service_could_not_reach_is_refused(argv: tuple[str, ...], error: str, token_file: Path) -> None:
    """A tcp server without --allow-ports got a Service with the control port only (the ports its clients opened
    unreachable), and one listening on loopback a Service that reaches the pod's address: both printed, exit 0."""
    result = inlets(*argv, "--plaintext", "--token-file", str(token_file), "--generate=k8s_yaml")
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith(f"inlets: error: {error}") and result.stderr.count("\n") == 1, result.stderr


def test_a_forwarding_only_server_needs_no_data_ports(token_file: Path) -> None:
    """--client-forwarding without data ports (the clients' --local reach in through the control port) is served."""
    result = inlets("tcp", "server", "--plaintext", "--client-forwarding", "--client-forwarding-allow", "db:5432",
                    "--token-file", str(token_file), "--data-addr", "0.0.0.0", "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    service = next(d for d in _valid(result.stdout) if d["kind"] == "Service")
    assert [port["port"] for port in service["spec"]["ports"]] == [8123]


@pytest.mark.parametrize("argv, advice", [
    (("tcp", "server", "--auto-tls", "--allow-ports", "80"), "give --tls-cert/--tls-key"),
    (("http", "server", "--auto-tls", "--auto-tls-san", "tunnel.example.com"), "give --tls-cert/--tls-key"),
    (("http", "server", "--plaintext", "--letsencrypt-domain", "tunnel.example.com"), "terminate TLS in an Ingress"),
    (("http", "server", "--tls-cert", "{cert}", "--tls-key", "{key}", "--letsencrypt-domain=a.example.com"),
     "terminate TLS in an Ingress"),
], ids=["tcp-auto-tls", "http-auto-tls", "letsencrypt", "letsencrypt-with-tls-files"])
def test_a_server_that_writes_its_certificates_is_refused(argv: tuple[str, ...], advice: str, tls: TlsFiles,
                                                         token_file: Path) -> None:
    """The pod's root filesystem is read-only and only the Secret is mounted: such a pod failed at every start
    ("could not prepare .../auto-tls: read-only file system"); a fresh volume per start would change the CA
    clients pin, or ask Let's Encrypt again each time. Refused in one line saying what to give instead."""
    option = "--auto-tls" if "--auto-tls" in argv else "--letsencrypt-domain"
    argv = tuple(arg.format(cert=tls.cert, key=tls.key) for arg in argv)
    result = inlets(*argv, "--token-file", str(token_file), "--generate=k8s_yaml")
    line = one_line_error(result, f"{option} cannot be used with --generate=k8s_yaml: the pod's filesystem is read-only")
    assert advice in line and result.stdout == ""


def test_a_client_s_local_ports_are_a_cluster_ip_service(token_file: Path) -> None:
    """A client's --local (a service on the server's side brought into the cluster) got no Service and listened on
    the pod's loopback: nothing else in the cluster could reach the ports. Now a ClusterIP Service (never a
    LoadBalancer: the forwarded service stays inside) targets them, listened on at the pod's address."""
    argv = ("tcp", "client", "--url", "wss://inlets-tcp-server:8123", "--local", "5432:127.0.0.1:5432",
            "--local", "80:db:80", "--token-file", str(token_file), "--generate=k8s_yaml")
    result = inlets(*argv)
    assert result.returncode == 0, result.stderr
    docs = _valid(result.stdout)
    assert [d["kind"] for d in docs] == ["Secret", "Deployment", "Service"]
    container, services = _published(docs)
    assert container == services["inlets-tcp-client"] == {(80, "TCP"), (5432, "TCP")}
    service, pod = docs[2]["spec"], docs[1]["spec"]["template"]
    assert service["type"] == "ClusterIP" and service["selector"].items() <= pod["metadata"]["labels"].items()
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--local-addr") + 1] == "0.0.0.0"
    assert "inlets-tcp-client:80, inlets-tcp-client:5432" in result.stdout  # the comment naming where they are
    given = _valid(inlets(*argv, "--local-addr", "::").stdout)[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert given.count("--local-addr") == 1 and given[given.index("--local-addr") + 1] == "::"
    line = one_line_error(inlets(*argv, "--local-addr", "127.0.0.1"), "--local-addr 127.0.0.1 cannot be used with "
                          "--generate=k8s_yaml: nothing else in the cluster reaches the pod's loopback")
    assert "leave it out" in line
    one_line_error(inlets(*argv, "--local-addr", "::ffff:127.0.0.1"), "--local-addr ::ffff:127.0.0.1 cannot be used")
    plain = _valid(inlets("tcp", "client", "--url", "wss://s:8123", "--upstream", "127.0.0.1", "--ports", "80",
                          "--token-file", str(token_file), "--generate=k8s_yaml").stdout)
    assert [d["kind"] for d in plain] == ["Secret", "Deployment"]  # no --local: nothing listens, no Service


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))["spec"]["template"]["spec"][
        "containers"][0]


def test_a_server_s_pods_are_ready_when_healthz_answers_and_a_client_s_have_no_probe(tls: TlsFiles,
                                                                                   token_file: Path) -> None:
    """Server pods had no probe: a Service sent users to a pod before it listened. Now a readinessProbe GETs
    /healthz (no token needed) on the control port, with the scheme the flags give it; no livenessProbe, whose
    restart would cut every tunnel of a server that is only busy. A client serves no HTTP: no probe."""
    def probe(*argv: str) -> dict[str, Any]:
        result = inlets(*argv, "--token-file", str(token_file), "--generate=k8s_yaml")
        assert result.returncode == 0, result.stderr
        container = _container(_valid(result.stdout))
        assert "livenessProbe" not in container and "startupProbe" not in container, container
        return container["readinessProbe"]

    plain = probe("http", "server", "--plaintext")
    assert plain["httpGet"] == {"path": "/healthz", "port": 8123, "scheme": "HTTP"}
    assert plain["timeoutSeconds"] < plain["periodSeconds"] and plain["failureThreshold"] > 1, plain
    tls_files = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    assert probe("tcp", "server", "--allow-ports", "80", "--control-port", "9443", *tls_files)["httpGet"] == {
        "path": "/healthz", "port": 9443, "scheme": "HTTPS"}
    assert probe("tcp", "server", "--allow-ports", "80", "--plaintext", "--no-plaintext", *tls_files)["httpGet"][
        "scheme"] == "HTTPS"  # the last of the pair is what the server does
    text, docs = _replicated("tcp", tls, token_file, "--plaintext", "--no-plaintext")
    assert _container(docs)["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert "--url wss://" in text and "ws://" not in text.replace("wss://", "")  # the clients' hint too (was ws://)
    client = inlets("tcp", "client", "--url", "wss://s:8123", "--local", "80:db:80", "--token-file", str(token_file),
                    "--generate=k8s_yaml")
    assert client.returncode == 0, client.stderr
    assert not {"readinessProbe", "livenessProbe"} & set(_container(_valid(client.stdout))), client.stdout


@pytest.mark.parametrize("drain, grace", [([], 35), (["--drain-timeout", "120"], 125),
                                          (["--drain-timeout", "0.5", "--drain-timeout", "59.2"], 65)])
def test_kubernetes_waits_out_the_drain_before_it_kills(drain: list[str], grace: int, tls: TlsFiles,
                                                        token_file: Path) -> None:
    """No terminationGracePeriodSeconds: Kubernetes' 30 s, which is --drain-timeout's default too, so its SIGKILL
    came as the drain ended, and cut a longer --drain-timeout's streams. Now the drain the flags give, and 5 s."""
    tls_files = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    for argv in (("tcp", "server", "--allow-ports", "80", *tls_files),
                 ("tcp", "client", "--url", "wss://s:8123", "--upstream", "127.0.0.1", "--ports", "80")):
        result = inlets(*argv, *drain, "--token-file", str(token_file), "--generate=k8s_yaml")
        assert result.returncode == 0, result.stderr
        pod = next(d for d in _valid(result.stdout) if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == grace, (argv, pod)


def _unquoted_strings(node: yaml.Node, path: str = "") -> list[str]:
    """Where a string value is written plain: YAML 1.1 (PyYAML) and 1.2 (Kubernetes' reader, in part) disagree on
    which plain scalars are strings, so only a quoted one reads as the same string in both."""
    if isinstance(node, yaml.MappingNode):
        return [spot for key, value in node.value for spot in _unquoted_strings(value, f"{path}/{key.value}")]
    if isinstance(node, yaml.SequenceNode):
        return [spot for n, item in enumerate(node.value) for spot in _unquoted_strings(item, f"{path}/{n}")]
    plain = node.tag == "tag:yaml.org,2002:str" and node.style not in ('"', "'")
    return [f"{path}: {node.value}"] if plain else []


@pytest.mark.parametrize("argv, given", [
    (("http", "client", "--url", "wss://h:8123", "--upstream", "http://127.0.0.1:3000", "--basic-auth-username", "n",
      "--basic-auth-password", "pw-123456789", "--request-header-remove", "1e3"), ["n", "1e3"]),
    (("http", "server", "--plaintext", "--port", "08080"), ["08080"]),
    (("tcp", "server", "--plaintext", "--allow-ports", "80", "--control-port", "08123", "--drain-timeout", "09"),
     ["08123", "09"]),
], ids=["http-client", "http-server", "tcp-server"])
def test_every_string_is_quoted_so_kubernetes_reads_the_args_as_given(argv: tuple[str, ...], given: list[str],
                                                                      token_file: Path) -> None:
    """PyYAML quoted only what YAML 1.1 reads as no string: ``- n``, ``- 1e3``, ``- 08080`` were written plain, and
    kubectl (sigs.k8s.io/yaml) read them as false, 1000 and 8080: "False is not of type 'string'", the Deployment
    refused. Every string value is quoted now; numbers the schema wants (ports, replicas) stay numbers."""
    result = inlets(*argv, "--token-file", str(token_file), "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    assert [spot for node in yaml.compose_all(result.stdout) for spot in _unquoted_strings(node)] == []
    docs = _valid(result.stdout)
    args = _container(docs)["args"]
    assert [args[args.index(value)] for value in given] == given, args
    assert docs[1]["spec"]["replicas"] == 1
    assert all(type(port["containerPort"]) is int for port in _container(docs).get("ports", [])), docs


def test_a_secret_over_kubernetes_1_mib_is_refused_and_a_file_given_twice_is_stored_once(tls: TlsFiles,
                                                                                         token_file: Path,
                                                                                         tmp_path: Path) -> None:
    """Each file was checked alone (under 1 MiB), never their sum, and one CA bundle given as --tls-ca and
    --upstream-ca went in twice: a 669,600-byte bundle made a Secret of 1,339,221 bytes, which the API server
    refuses (at most 1 MiB of data) only when applied. Now the one file is one key, and a sum over it is refused."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(tls.cert.read_bytes() * (640 * 1024 // len(tls.cert.read_bytes()) + 1))  # over half a MiB
    argv = ["http", "client", "--url", "wss://h:8123", "--upstream", "https://127.0.0.1:3000",
            "--token-file", str(token_file), "--generate=k8s_yaml"]
    result = inlets(*argv, "--tls-ca", str(bundle), "--upstream-ca", str(bundle))
    assert result.returncode == 0, result.stderr
    docs = _valid(result.stdout)
    assert sorted(docs[0]["data"]) == ["tls-ca", "token"], list(docs[0]["data"])
    args = _container(docs)["args"]
    assert args[args.index("--tls-ca") + 1] == args[args.index("--upstream-ca") + 1] == "/var/run/secrets/inlets/tls-ca"
    other = tmp_path / "other.pem"
    other.write_bytes(bundle.read_bytes() + b"\n")  # another file: both go in, over 1 MiB together
    refused = inlets(*argv, "--tls-ca", str(bundle), "--upstream-ca", str(other))
    assert refused.returncode == 2, refused.stderr  # (the YAML would be 2 MB of assertion message)
    line = one_line_error(refused, f"the Secret would hold {2 * bundle.stat().st_size + 1 + token_file.stat().st_size}"
                                   " bytes, more than the 1048576 (1 MiB) Kubernetes takes: ")
    assert f"--upstream-ca {other} ({other.stat().st_size} bytes), --tls-ca {bundle} ({bundle.stat().st_size} " in line
    assert "give smaller files" in line and refused.stdout == "" and "k8s-token" not in line
    # an option given again with another file (the command takes the last): that file is a key of its own
    again = inlets(*argv, "--tls-ca", str(tls.cert), "--upstream-ca", str(tls.cert), "--tls-ca", str(tls.ca))
    docs = _valid(again.stdout)
    args, data = _container(docs)["args"], docs[0]["data"]
    mounted = {arg.rpartition("/")[2] for arg in args if arg.startswith("/var/run/secrets/inlets/")}
    assert mounted == set(data) == {"tls-ca", "tls-ca-2", "token"}, (args, list(data))
    last = args[len(args) - 1 - args[::-1].index("--tls-ca") + 1].rpartition("/")[2]
    assert base64.b64decode(data[last]) == tls.ca.read_bytes() and base64.b64decode(
        data[args[args.index("--upstream-ca") + 1].rpartition("/")[2]]) == tls.cert.read_bytes()


@pytest.mark.parametrize("digest, taken", [
    ("sha256:" + "0123456789abcdef" * 4, True),
    ("sha512:" + "0123456789abcdef" * 8, True),
    ("sha256:" + "a" * 32, False),  # the grammar's {32,}: go-digest wants sha256's 64 digits
    ("sha256:" + "A" * 64, False),  # uppercase: go-digest's encoding is lowercase hex
    ("md5:" + "a" * 32, False),  # no algorithm go-digest registers
    ("sha256:" + "a" * 65, False),
], ids=["sha256", "sha512", "sha256-short", "sha256-uppercase", "md5", "sha256-long"])
def test_an_image_digest_the_kubelet_refuses_is_refused(digest: str, taken: bool, token_file: Path) -> None:
    """distribution/reference's grammar takes any ALGORITHM:HEX{32,}, then go-digest's check refuses what is not a
    registered algorithm with lowercase hex of its length: those passed here, and the pods sat in InvalidImageName."""
    image = f"registry.example.com/inlets@{digest}"
    result = inlets("tcp", "server", "--plaintext", "--allow-ports", "2222", "--token-file", str(token_file),
                    "--generate=k8s_yaml", env={"INLETS_IMAGE": image})
    if taken:
        assert result.returncode == 0, result.stderr
        assert _container(_valid(result.stdout))["image"] == image
    else:
        line = one_line_error(result, f"$INLETS_IMAGE {image!r} is not an image reference: ")
        assert "@sha256: and the digest's 64 lowercase hex digits" in line and result.stdout == ""
