"""``--generate=k8s_yaml``'s pod, run here as a container runtime runs it: its own network namespace with a pod
address, the pod's user, the capabilities and sysctls its securityContext names (runc: the bounding set from
``capabilities``, no ambient ones, so a non-root user keeps none across its exec), the Secret's files read-only.
Each port a Service targets must then accept a connection at the pod's address."""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.process import INLETS, inlets
from helpers.tunnel import TlsFiles

POD_IP = "10.244.0.5"
SECRET_DIR = "/var/run/secrets/inlets"
NEEDED = ("unshare", "nsenter", "setpriv", "ip", "sysctl", "python3")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace and another user need root"),
    pytest.mark.skipif(not all(map(shutil.which, NEEDED)), reason=f"needs {', '.join(NEEDED)}"),
]


def _pod_command(pod: dict[str, Any], secrets: str) -> list[str]:
    """The shell line that sets up the pod's network and sysctls, then execs its container as its user."""
    context, container = pod["securityContext"], pod["containers"][0]
    caps = container["securityContext"]["capabilities"]
    bounding = ",".join(["-all", *(f"+{cap.lower()}" for cap in caps.get("add", []))])
    setup = ["ip link set lo up", f"ip addr add {POD_IP}/32 dev lo",  # the pod's address, not a loopback one
             *(f"sysctl -q -w {s['name']}={s['value']}" for s in context.get("sysctls", []))]
    args = [arg.replace(SECRET_DIR, secrets).replace("$$", "$") for arg in container["args"]]
    run = ["setpriv", f"--reuid={context['runAsUser']}", f"--regid={context['runAsGroup']}", "--clear-groups",
           "--no-new-privs", "--inh-caps=-all", f"--bounding-set={bounding}", "--", *INLETS, *args]
    return ["unshare", "-n", "sh", "-ec", " && ".join(setup) + " && exec " + shlex.join(run)]


def _connects(pid: int, port: int) -> bool:
    """Whether the pod's address accepts a connection on ``port``, asked from inside the pod's namespace."""
    probe = f"import socket; socket.create_connection(({POD_IP!r}, {port}), timeout=2).close()"
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "python3", "-c", probe], capture_output=True,
                          timeout=10).returncode == 0


def _probe(pid: int, probe: dict[str, Any]) -> str:
    """What an httpGet probe gets at the pod's address, as the kubelet asks: the manifest's scheme, port and path,
    the certificate not verified. The status code, or the error that stood for none."""
    get = probe["httpGet"]
    url = f"{get['scheme'].lower()}://{POD_IP}:{get['port']}{get['path']}"
    script = ("import ssl, sys, urllib.request\n"
              "try:\n"
              f"    print(urllib.request.urlopen({url!r}, timeout={probe['timeoutSeconds']}, "
              "context=ssl._create_unverified_context()).status)\n"
              "except Exception as exc:\n"
              "    print(repr(exc))\n")
    result = subprocess.run(["nsenter", "-t", str(pid), "-n", "python3", "-c", script], capture_output=True,
                            text=True, timeout=30)
    return (result.stdout or result.stderr).strip()


def _serve_pod(docs: list[dict[str, Any]]) -> tuple[dict[int, bool], str, str | None]:
    """Run the Deployment's pod: for each port a Service targets, whether it accepted a connection within 15 s;
    what the pod printed; and what its readinessProbe got once those ports listened (None: it has none)."""
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    services = [d for d in docs if d["kind"] == "Service"]
    targets = sorted({port["targetPort"] for service in services for port in service["spec"]["ports"]})
    assert targets, "no Service reaches the pod"
    secret = next(d for d in docs if d["kind"] == "Secret")
    folder = tempfile.mkdtemp()  # not under pytest's tmp_path: root's 0700 folders, which the pod's user cannot enter
    os.chmod(folder, 0o755)
    for key, value in secret["data"].items():
        path = Path(folder, key)
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o400)
        os.chown(path, pod["securityContext"]["runAsUser"], -1)
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(_pod_command(pod, folder), stdout=log, stderr=subprocess.STDOUT, cwd="/")
    reached: dict[int, bool] = {}
    try:
        for port in targets:
            deadline = time.monotonic() + 15
            reached[port] = False
            while not reached[port] and process.poll() is None and time.monotonic() < deadline:
                reached[port] = _connects(process.pid, port)
                if not reached[port]:
                    time.sleep(0.1)
        readiness = pod["containers"][0].get("readinessProbe")
        probed = _probe(process.pid, readiness) if readiness and all(reached.values()) else None
    finally:
        process.terminate()
        process.wait(15)
        shutil.rmtree(folder)
        log.seek(0)
        output = log.read().decode(errors="replace")
    return reached, output, probed


@pytest.mark.parametrize("argv", [
    ("http", "server", "--plaintext"),  # a control: ports 8000 and 8123, which any user may bind
    ("http", "server", "--plaintext", "--port", "80"),
    ("tcp", "client", "--url", "ws://10.244.0.9:8123", "--local", "80:127.0.0.1:80", "--local", "5432:db:5432"),
], ids=["http-server", "http-server-port-80", "tcp-client-local-80"])
def test_every_port_a_service_targets_answers_at_the_pod_address(argv: tuple[str, ...], tmp_path: Path) -> None:
    """An HTTP server on port 80 exited at once ("cannot listen on *:80 (data port): Permission denied": the
    NET_BIND_SERVICE it was given does not survive a non-root user's exec), and a client's --local ports had no
    Service and listened on the pod's loopback, where nothing else in the cluster reaches them."""
    token = tmp_path / "token"
    token.write_text("pod-token-Zq81\n")
    result = inlets(*argv, "--token-file", str(token), "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    reached, output, _ = _serve_pod(docs)
    assert all(reached.values()), (reached, output)


@pytest.mark.parametrize("mode", ["http-plaintext", "http-tls", "http-tls-replicas"])
def test_a_server_s_readiness_probe_answers_200_at_the_pod_address(mode: str, tls: TlsFiles, tmp_path: Path) -> None:
    """A server's pods had no probe, so a Service sent users to a pod before it listened. Its readinessProbe must
    reach the running pod as the kubelet would: the manifest's scheme (HTTPS unless --plaintext), port and path."""
    token = tmp_path / "token"
    token.write_text("pod-token-Zq81\n")
    argv = ["http", "server", "--plaintext"] if mode == "http-plaintext" else [
        "http", "server", "--control-port", "9443", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    if mode == "http-tls-replicas":
        argv += ["--replicas", "2"]
    result = inlets(*argv, "--token-file", str(token), "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    if mode == "http-tls-replicas":  # one replica's pod: the StatefulSet's template, run as a Deployment's is
        docs = [{**doc, "kind": "Deployment"} if doc["kind"] == "StatefulSet" else doc for doc in docs]
    probe = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "readinessProbe"]
    assert probe["httpGet"]["scheme"] == ("HTTP" if mode == "http-plaintext" else "HTTPS"), probe
    reached, output, probed = _serve_pod(docs)
    assert all(reached.values()), (reached, output)
    assert probed == "200", (probe, probed, output)

