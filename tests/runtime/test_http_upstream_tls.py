"""https:// upstreams whose certificate cannot be verified, through a real ``inlets http client`` process: the user
gets a 502 naming none of it, and the client's log says once per request why and what to change. It said only
OpenSSL's words ("certificate has expired", "self-signed certificate"), naming neither --upstream-ca nor
--upstream-insecure, nor who must renew what."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers.http import LOOPBACK, Stack, raw_request
from helpers.process import spawn, terminate, wait_for_text

from inlets_py.runtime.core.certs import Pem, generate_ca, issue_server_cert

NOW = datetime.datetime.now(datetime.timezone.utc)


def leaf(ca: Pem | None, names: list[str], start: datetime.datetime, end: datetime.datetime) -> Pem:
    """A certificate for ``names`` with any validity: signed by ``ca``, or by itself when ``ca`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer = subject if ca is None else x509.load_pem_x509_certificate(ca.cert).subject
    signer = key if ca is None else serialization.load_pem_private_key(ca.key, password=None)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    return Pem(cert.public_bytes(serialization.Encoding.PEM),
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))


def serving(stack: Stack, folder: Path, name: str, pem: Pem) -> int:
    """A TLS upstream on loopback serving ``pem``: its port."""
    (folder / f"{name}.crt").write_bytes(pem.cert)
    (folder / f"{name}.key").write_bytes(pem.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / f"{name}.crt", folder / f"{name}.key")
    return stack.upstream(name, ssl=context)[1]


@pytest.fixture
def stack():
    stack = Stack()
    yield stack
    stack.close()


def start_client(stack: Stack, tmp_path: Path, tls, token: str, token_file: Path, *args: str):
    """A tunnel server in ``stack`` and a real client process with ``args``: (server, client, its log)."""
    server = stack.server(tls, token)
    host, port = server.control.addresses[0][:2]
    log = tmp_path / "client.log"
    client = spawn("http", "client", "--url", f"wss://{host}:{port}", "--token-file", str(token_file),
                   "--tls-ca", str(tls.ca), *args, log=log)
    wait_for_text(log, "event=connected")
    return server, client, log


def test_an_upstream_certificate_refused_is_said_with_what_to_do(stack, tmp_path, tls, token, token_file) -> None:
    ca, stranger = generate_ca("upstream CA"), generate_ca("someone else's CA")
    day = datetime.timedelta(days=1)
    cases = {  # host: (the upstream's certificate, words the client's log line must have)
        "expired.test": (leaf(ca, ["localhost"], NOW - 30 * day, NOW - day), "renew the upstream's certificate"),
        "self-signed.test": (leaf(None, ["localhost"], NOW - day, NOW + day), "--upstream-ca"),
        "other-ca.test": (issue_server_cert(stranger, ["localhost"]), "--upstream-ca"),
        "other-name.test": (issue_server_cert(ca, ["other.example"]), "a name its certificate carries"),
    }
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    upstreams = [f"{host}=https://localhost:{serving(stack, tmp_path, host, pem)}" for host, (pem, _) in cases.items()]
    server, client, log = start_client(stack, tmp_path, tls, token, token_file, "--upstream-ca", str(tmp_path / "ca.crt"),
                                       *(arg for upstream in upstreams for arg in ("--upstream", upstream)))
    try:
        for host in cases:
            answer = raw_request(server.data_port, f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 502 "), answer
            for internal in (b"localhost", b"certif", b"verif", b"upstream-"):  # the client's log says it, not users
                assert internal not in body.lower(), body
    finally:
        terminate(client)
    lines = [line for line in log.read_text().splitlines() if "event=upstream_failed" in line]
    assert len(lines) == len(cases), lines  # one line per refused dial
    for line, (host, (_, words)) in zip(lines, cases.items()):
        assert words in line and "--upstream-insecure" in line, (host, line)


def test_upstream_insecure_is_said_at_start_naming_the_upstreams_it_leaves_unverified(stack, tmp_path, tls, token,
                                                                                      token_file) -> None:
    """It said nothing: a client left running with it (from a test, say) gave no sign in its log."""
    day = datetime.timedelta(days=1)
    port = serving(stack, tmp_path, "self-signed", leaf(None, ["localhost"], NOW - day, NOW + day))
    plain = stack.upstream("plain")[1]
    server, client, log = start_client(stack, tmp_path, tls, token, token_file, "--upstream-insecure",
                                       "--upstream", f"tls.test=https://localhost:{port}",
                                       "--upstream", f"http://{LOOPBACK}:{plain}")
    try:
        answer = raw_request(server.data_port, b"GET / HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        terminate(client)
    warned = [line for line in log.read_text().splitlines() if "event=upstream_tls_unverified" in line]
    assert len(warned) == 1 and "level=WARNING" in warned[0], warned
    assert f"https://localhost:{port}" in warned[0] and str(plain) not in warned[0], warned[0]
