"""An ACME server whose answers are not valid ACME is said so in one line, never as Python's exception, nor as a
server that could not be reached (a probe's findings): its real ACME child process against a small ACME server on
loopback (helpers/fake_acme.py), over real HTTPS."""

from __future__ import annotations

import logging
import re

import pytest

from helpers.fake_acme import AcmeHandler, serve
from helpers.http import Stack
from helpers.letsencrypt import wait_until
from helpers.tunnel import free_port
from inlets_py.runtime.acme.https_front import HttpsFront
from inlets_py.runtime.acme.letsencrypt import configure
from test_letsencrypt import DOMAINS, start_server


class DirectoryWithoutAccounts(AcmeHandler):
    def directory(self) -> None:  # the log said: KeyError: 'Directory field "newAccount" not found'
        self._answer(200, {"newNonce": f"{self.base}/nonce"})


class DirectoryAsAList(AcmeHandler):
    def directory(self) -> None:  # TypeError: pop expected at most 1 argument, got 2
        self._answer(200, "[1, 2, 3]", {"Content-Type": "application/json"})


class DirectoryWithANullNonce(AcmeHandler):
    def directory(self) -> None:  # acme HEADs each POST's URL for a nonce (ACME v1): it read "the connection failed"
        self._answer(200, {"newNonce": None, "newAccount": f"{self.base}/account", "newOrder": f"{self.base}/order"})


class OrderCutShort(AcmeHandler):
    def on_post(self) -> None:  # "cannot reach ..." of a server that had answered four requests
        self._answer(201, '{"status": "pend', {"Content-Type": "application/json", "Location": f"{self.base}/o/1"})


class OrderOfTheWrongShape(AcmeHandler):
    def on_post(self) -> None:  # TypeError: 'int' object is not iterable
        self._answer(201, {"identifiers": 7, "status": "pending", "authorizations": 3, "finalize": 5},
                     {"Location": f"{self.base}/o/1"})


@pytest.mark.parametrize("handler", [DirectoryWithoutAccounts, DirectoryAsAList, DirectoryWithANullNonce, OrderCutShort,
                                     OrderOfTheWrongShape], ids=lambda h: h.__name__)
def test_answers_that_are_not_acme_are_said_in_words(tmp_path, tls, token, caplog, handler) -> None:
    caplog.set_level(logging.INFO, logger="inlets.letsencrypt")
    with serve(handler, tls) as (url, _seen):
        stack = Stack()
        try:
            manager = configure([DOMAINS[0]], tmp_path / "le", issuer=url, ca_bundle=tls.ca, retry=1.0)
            start_server(stack, tls, token, HttpsFront(manager, free_port()), free_port())
            wait_until(lambda: _failed(caplog), 30, "the failure logged")
        finally:
            stack.close()
    line = _failed(caplog)[0]
    assert "not valid ACME" in line or "is not an ACME directory" in line, line
    assert "cannot reach" not in line and not re.search(r"\b[A-Z][A-Za-z]*(Error|Exception)\b", line), line
    assert "check --letsencrypt-issuer" in line, line


def _failed(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "certificate_failed" in r.getMessage()]
