"""Shared fixtures: TLS material and a token, generated once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tunnel_helpers import TlsFiles, make_tls  # noqa: E402


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def token() -> str:
    return "test-token-0123456789abcdef0123456789abcdef"
