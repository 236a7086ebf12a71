"""``--generate=k8s_yaml`` validates against the Kubernetes API schemas of the current and previous minor
release (the ``kubernetes-validate`` package carries them; strict: an unknown field fails too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.process import inlets

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
    ("tcp", "client", "--url", "wss://inlets-tcp-server:8123", "--upstream", "127.0.0.1", "--ports", "80"),
    ("http", "client", "--url", "wss://inlets-http-server:8123", "--upstream", "http://web:3000"),
], ids=["tcp-server", "http-server", "tcp-client", "http-client"])
def test_generated_yaml_is_valid_kubernetes(argv: tuple[str, ...], token_file: Path, tmp_path: Path) -> None:
    extra = ["--plaintext"] if argv[1] == "server" else []
    result = inlets(*argv, *extra, "--token-file", str(token_file), "--generate=k8s_yaml")
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in _valid(result.stdout)]
    assert kinds == (["Secret", "Deployment", "Service"] if argv[1] == "server" else ["Secret", "Deployment"])


def test_the_check_fails_what_kubernetes_would_refuse(token_file: Path) -> None:
    """A control: the same output with a misspelt field or a port as text is refused."""
    result = inlets("tcp", "server", "--plaintext", "--token-file", str(token_file), "--generate=k8s_yaml")
    docs = _valid(result.stdout)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 2
    with pytest.raises(AssertionError, match="replica"):
        _valid(yaml.safe_dump(deployment))
    service = next(d for d in docs if d["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(AssertionError, match="not valid Kubernetes"):
        _valid(yaml.safe_dump(service))
