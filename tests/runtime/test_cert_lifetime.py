"""Certificate lifetimes: a server certificate lasts as long as its CA, and its end is said before it comes.

An inletsctl exit server's certificate lasted 825 days under a ten-year CA whose key is thrown away:
after 2.3 years every client refused the server and nothing could renew it. Now it ends with its CA,
and the server (at start) and the client (per connection) warn from 30 days before the end.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import re
import signal
import socket
import ssl
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from helpers.process import (client_args, echo_once, inlets, one_line_error, server_args, spawn, stop_all,
                             wait_for_text, wait_port)
from helpers.tunnel import TlsFiles, control_url, free_port, make_tls, run, start_client, stop

from inlets_py.provisioner.material import generate
from inlets_py.runtime.core.cert_expiry import WARN_WITHIN, not_after_der, not_after_pem
from inlets_py.runtime.cli import lifecycle
from inlets_py.runtime.cli.server_config import TLS_FILES_HINT, control_config, daily_certificate_check
from inlets_py.runtime.client.dialer import FatalClientError
from inlets_py.runtime.client.tcp_upstreams import Upstream
from inlets_py.runtime.core.certs import CA_VALIDITY, AutoTlsError, Pem, ensure_auto_tls, generate_ca, issue_server_cert
from inlets_py.runtime.core.logs import logfmt
from inlets_py.runtime.server.control import ControlConfig
from inlets_py.runtime.server.tcp import TcpTunnelServer

NOW = datetime.datetime.now(datetime.timezone.utc)
NAMES = ["127.0.0.1", "localhost"]


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def write_tls(directory: Path, ca: Pem, server: Pem) -> TlsFiles:
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca.write_bytes(ca.cert)
    files.cert.write_bytes(server.cert)
    files.key.write_bytes(server.key)
    files.key.chmod(0o600)
    return files


def signed(ca: Pem, not_before: datetime.datetime, not_after: datetime.datetime, *, self_signed: bool = False,
           dns: str | None = None) -> Pem:
    """A certificate with any validity (issue_server_cert makes none that has already ended): a CA when
    ``self_signed``, else a server certificate for NAMES (or the name ``dns``) signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ended CA" if self_signed else NAMES[0])])
    signer = key if self_signed else serialization.load_pem_private_key(ca.key, password=None)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(name if self_signed else cert(ca.cert).subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=self_signed, path_length=None), critical=True))
    if not self_signed:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(dns)] if dns else [x509.IPAddress(ipaddress.ip_address(NAMES[0])), x509.DNSName(NAMES[1])]),
            critical=False)
    pem = builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Pem(pem, key_pem)


def test_inletsctl_says_an_ended_certificate_as_such_and_another_cas_as_another_server(tmp_path: Path) -> None:
    """inletsctl's waits and status say a certificate its CA did not sign as "not the exit server inletsctl made" (the
    probe's words named the client's --tls-ca, which inletsctl has not); one of its own that has ended keeps the
    probe's words on that, not "another machine"."""
    import threading

    from inlets_py.provisioner.wait import healthz_error
    from inlets_py.runtime.core.tls import EXIT_SERVER_NAME, server_context

    ca, other = generate_ca(), generate_ca()
    day = datetime.timedelta(days=1)
    cases = [(signed(ca, NOW - 2 * day, NOW - day, dns=EXIT_SERVER_NAME), "has ended", "not the exit server"),
             (signed(other, NOW - day, NOW + day, dns=EXIT_SERVER_NAME), "is not the exit server inletsctl made", "--tls-ca")]
    for number, (leaf, says, not_says) in enumerate(cases):
        (tmp_path / str(number)).mkdir()
        files = write_tls(tmp_path / str(number), ca, leaf)
        context = server_context(files.cert, files.key)
        with socket.create_server(("127.0.0.1", 0)) as listener:

            def handshake() -> None:
                conn, _ = listener.accept()
                try:
                    context.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    conn.close()

            thread = threading.Thread(target=handshake, daemon=True)
            thread.start()
            error = healthz_error("127.0.0.1", listener.getsockname()[1], files.ca) or ""
            thread.join(5)
        assert says in error and not_says not in error, error


def test_an_exit_servers_certificate_lasts_as_long_as_its_ca() -> None:
    material = generate("lifetime")
    ca, leaf = cert(material.ca_cert), cert(material.server.cert)
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc, (leaf.not_valid_after_utc, ca.not_valid_after_utc)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == CA_VALIDITY >= datetime.timedelta(days=3650)
    assert leaf.not_valid_before_utc >= ca.not_valid_before_utc


def test_a_server_certificate_never_outlives_its_ca_and_an_ended_ca_signs_nothing() -> None:
    ca = generate_ca()
    later = cert(ca.cert).not_valid_after_utc + datetime.timedelta(days=400)
    assert cert(issue_server_cert(ca, NAMES, not_after=later).cert).not_valid_after_utc == cert(ca.cert).not_valid_after_utc
    ended = signed(ca, NOW - datetime.timedelta(days=20), NOW - datetime.timedelta(days=1), self_signed=True)
    with pytest.raises(ValueError, match="the CA ended on"):
        issue_server_cert(ended, NAMES)


def test_auto_tls_reissues_a_server_certificate_that_ends_before_its_ca(tmp_path: Path) -> None:
    """An --auto-tls folder from before (825-day certificates) gets one lasting the CA's life at the next start;
    the CA, which clients pin, stays."""
    files = ensure_auto_tls(tmp_path, NAMES)
    ca = Pem(files.ca_cert.read_bytes(), (tmp_path / "ca.key").read_bytes())
    short = issue_server_cert(ca, NAMES, not_after=NOW + datetime.timedelta(days=825))
    files.cert.write_bytes(short.cert)
    ensure_auto_tls(tmp_path, NAMES)
    assert files.ca_cert.read_bytes() == ca.cert
    assert cert(files.cert.read_bytes()).not_valid_after_utc == cert(ca.cert).not_valid_after_utc
    kept = files.cert.read_bytes()
    ensure_auto_tls(tmp_path, NAMES)  # and one lasting as long is kept as it is
    assert files.cert.read_bytes() == kept


def test_auto_tls_with_an_ended_ca_says_what_to_do(tmp_path: Path) -> None:
    """Nothing an ended CA signs verifies: the server refuses to start (one line, core/certs.py's main) rather
    than serve a certificate every client refuses."""
    ended = signed(Pem(b"", b""), NOW - datetime.timedelta(days=20), NOW - datetime.timedelta(days=1), self_signed=True)
    (tmp_path / "ca.crt").write_bytes(ended.cert)
    (tmp_path / "ca.key").write_bytes(ended.key)
    (tmp_path / "ca.key").chmod(0o600)
    with pytest.raises(AutoTlsError, match=re.escape(f"the CA {tmp_path / 'ca.crt'} ended on ")) as raised:
        ensure_auto_tls(tmp_path, NAMES)
    assert "move ca.crt and ca.key away to make a new CA (clients then need the new ca.crt)" in str(raised.value)
    assert not list(tmp_path.glob("server*.crt"))


def test_expiry_is_read_without_the_crypto_library_in_both_time_encodings() -> None:
    """UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280): the reader agrees with cryptography on both."""
    ca = generate_ca()
    for end in (NOW + datetime.timedelta(days=10), datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc),
                datetime.datetime(2061, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)):
        pem = signed(ca, NOW, end).cert
        assert not_after_pem(pem) == cert(pem).not_valid_after_utc == end.replace(microsecond=0)
    der = cert(ca.cert).public_bytes(serialization.Encoding.DER)
    for damaged in (b"", der[:40], b"\x30\x03\x02\x01\x00", b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"):
        with pytest.raises(ValueError):
            not_after_pem(damaged) if damaged.startswith(b"-") else not_after_der(damaged)


def server_config(files: TlsFiles, token: str) -> ControlConfig:
    """The server's control plane as ``inlets tcp server --tls-cert/--tls-key`` builds it at start."""
    return control_config(control_addr="127.0.0.1", control_port=0, token=token, token_file=None, tls_cert=files.cert,
                          tls_key=files.key, auto_tls=False, auto_tls_path=None, auto_tls_san=None, keepalive=20.0)


def warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


def test_server_and_client_warn_of_a_certificate_ending_within_30_days(
        tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    ca = generate_ca()
    ending = NOW + datetime.timedelta(days=10)
    files = write_tls(tmp_path, ca, issue_server_cert(ca, NAMES, not_after=ending))
    config = server_config(files, token)
    stamp = ending.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert warnings(caplog, "inlets") == [f"event=certificate_expires_soon cert={files.cert} not_after={stamp} "
                                          f"days_left=9 hint={logfmt(TLS_FILES_HINT)}"]

    async def scenario() -> str:
        server = TcpTunnelServer(config, data_addr="127.0.0.1")
        await server.start()
        client, task = await start_client(control_url(server), token, files, {free_port(): Upstream("127.0.0.1", 9)})
        try:
            for _ in range(2):  # a reconnection to the same certificate says it no second time
                await client.rotate()
        finally:
            await stop(task)
            await server.stop()
        return client.config.url

    url = run(scenario(), timeout=30)
    assert sum("event=connected" in r.getMessage() for r in caplog.records) == 3
    said = warnings(caplog, "inlets.client")
    assert len(said) == 1 and said[0].startswith(f"event=certificate_expires_soon url={url} not_after={stamp} "
                                                 "days_left=9 hint="), said
    assert "the server needs a new certificate" in said[0]


def test_a_certificate_far_from_its_end_is_not_warned_of(tmp_path: Path, token: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    ca = generate_ca()
    server_config(write_tls(tmp_path, ca, issue_server_cert(ca, NAMES, not_after=NOW + WARN_WITHIN + datetime.timedelta(
        hours=1))), token)
    assert warnings(caplog, "inlets") == []


def _refusal(config, token: str, files) -> str:
    """What a client pinning the CA is told by a server with ``config``'s certificate."""

    async def scenario() -> str:
        server = TcpTunnelServer(config, data_addr="127.0.0.1")
        await server.start()
        try:
            with pytest.raises(FatalClientError) as refused:
                await start_client(control_url(server), token, files, {free_port(): Upstream("127.0.0.1", 9)})
        finally:
            await server.stop()
        return str(refused.value)

    return run(scenario(), timeout=30)


def test_an_ended_certificate_is_said_by_the_server_and_named_by_the_refusing_client(
        tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    ca = generate_ca()
    files = write_tls(tmp_path, ca, signed(ca, NOW - datetime.timedelta(days=30), NOW - datetime.timedelta(days=2)))
    config = server_config(files, token)
    assert [w.split(" not_after=")[0] for w in warnings(caplog, "inlets")] == [
        f"event=certificate_expired cert={files.cert}"]

    message = _refusal(config, token, files)
    assert "certificate has expired" in message and "the server needs a new certificate" in message, message
    assert "check --tls-ca" not in message


def test_a_certificate_not_yet_valid_is_said_by_the_server_and_named_by_the_refusing_client(
        tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture) -> None:
    """A notBefore still to come: the CA is right, so "check --tls-ca" would send the user the wrong way."""
    caplog.set_level(logging.INFO)
    ca = generate_ca()
    files = write_tls(tmp_path, ca, signed(ca, NOW + datetime.timedelta(days=2), NOW + datetime.timedelta(days=90)))
    config = server_config(files, token)
    assert [w.split(" not_before=")[0] for w in warnings(caplog, "inlets")] == [
        f"event=certificate_not_yet_valid cert={files.cert}"]

    message = _refusal(config, token, files)
    assert "certificate is not yet valid" in message and "clock" in message, message
    assert "check --tls-ca" not in message


def test_a_certificate_no_trusted_ca_signed_names_tls_ca_as_the_flag_to_give(tmp_path: Path, tls: TlsFiles,
                                                                           token_file: Path) -> None:
    """Found by a probe: a client given no --tls-ca (the system's CAs verify) was told "check --tls-ca: it must be
    the CA that signed the server's certificate", a flag it had not given; so was ``inlets status``. Both are now
    told to give one; a client that gave the wrong one is still told to check it."""
    control = free_port()
    server = spawn(*server_args(control, tls, token_file), log=tmp_path / "server.log")
    url = ["--url", f"wss://127.0.0.1:{control}", "--token-file", str(token_file)]
    client = ["tcp", "client", *url, "--upstream", f"{free_port()}=127.0.0.1:9"]
    try:
        wait_for_text(tmp_path / "server.log", "event=started")
        untrusted = [inlets(*client), inlets("status", *url)]
        wrong = inlets(*client, "--tls-ca", str(make_tls(tmp_path / "other").ca))
    finally:
        stop_all(server)
    give = ("(the server's certificate is not signed by a CA this machine trusts: give the CA that signed it with "
            "--tls-ca FILE (an exit server inletsctl made: its ca.crt))")
    for result in untrusted:
        line = one_line_error(result, give, status=1)
        assert "check --tls-ca" not in line, line
    one_line_error(wrong, "(check --tls-ca: it must be the CA that signed the server's certificate)", status=1)


def _verifies(port: int, ca: Path) -> bool:
    """Whether a new TLS connection to the control port presents a certificate ``ca`` signed."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1"):
            return True
    except ssl.SSLCertVerificationError:
        return False


def _install(pair: TlsFiles, live: TlsFiles) -> None:
    live.cert.write_bytes(pair.cert.read_bytes())
    live.key.write_bytes(pair.key.read_bytes())
    live.key.chmod(0o600)


def test_sighup_serves_a_renewed_certificate_to_new_clients_and_keeps_connected_ones(
        tmp_path: Path, token_file: Path, echo_port: int) -> None:
    """A renewed --tls-cert/--tls-key (certbot's, cert-manager's) took a restart, which cut every client."""
    first, renewed = make_tls(tmp_path / "first"), make_tls(tmp_path / "renewed")  # two CAs: who signed tells
    live = TlsFiles(first.ca, tmp_path / "server.crt", tmp_path / "server.key")
    _install(first, live)
    control, old_port, new_port = free_port(), free_port(), free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "old", "new")}
    server = spawn(*server_args(control, live, token_file), log=logs["server"])
    old = spawn(*client_args(control, first, token_file, "--upstream", f"{old_port}=127.0.0.1:{echo_port}"),
                log=logs["old"])
    new = None
    try:
        wait_port(old_port)
        live.key.write_text("-----BEGIN PRIVATE KEY-----\n")  # caught half-written: the first pair keeps serving
        server.send_signal(signal.SIGHUP)
        wait_for_text(logs["server"], "event=reload_failed")
        assert "keeping=current_certificate" in logs["server"].read_text()
        assert _verifies(control, first.ca)

        _install(renewed, live)
        server.send_signal(signal.SIGHUP)
        wait_for_text(logs["server"], "event=certificate_reloaded")
        assert _verifies(control, renewed.ca) and not _verifies(control, first.ca)
        new = spawn(*client_args(control, renewed, token_file, "--upstream", f"{new_port}=127.0.0.1:{echo_port}"),
                    log=logs["new"])
        wait_port(new_port)
        assert echo_once(new_port, b"renewed") == b"renewed"
        assert echo_once(old_port, b"kept") == b"kept"  # the client connected before is still served, never cut
        assert logs["old"].read_text().count("event=connected") == 1
        assert "Traceback" not in logs["server"].read_text()
    finally:
        stop_all(*[p for p in (server, old, new) if p is not None])


def _expiry_metric(port: int, ca: Path, token: str) -> float | None:
    """The server's ``tcp_controlplane_certificate_expiry_timestamp_seconds``, scraped as Prometheus would."""
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(ca)), timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        return next((sample.value for family in families for sample in family.samples
                     if sample.name == "tcp_controlplane_certificate_expiry_timestamp_seconds"), None)


def test_the_expiry_metric_follows_the_certificate_serving_through_a_reload(
        tmp_path: Path, token: str, token_file: Path) -> None:
    """Warned of only at start, a certificate that ended months into a server's run went unsaid: the end is a
    metric to alert on (and a daily warning, below), and a SIGHUP renewal moves it."""
    ca = generate_ca()
    first, renewed = (issue_server_cert(ca, NAMES, not_after=NOW + datetime.timedelta(days=days)) for days in (200, 400))
    live = write_tls(tmp_path, ca, first)
    control = free_port()
    log = tmp_path / "server.log"
    server = spawn(*server_args(control, live, token_file), log=log)
    try:
        wait_port(control)
        assert _expiry_metric(control, live.ca, token) == cert(first.cert).not_valid_after_utc.timestamp()
        live.cert.write_bytes(renewed.cert)
        live.key.write_bytes(renewed.key)
        server.send_signal(signal.SIGHUP)
        wait_for_text(log, "event=certificate_reloaded")
        assert _expiry_metric(control, live.ca, token) == cert(renewed.cert).not_valid_after_utc.timestamp()
    finally:
        stop_all(server)


def test_a_reload_says_a_tls_key_others_can_read(tmp_path: Path, token: str, token_file: Path) -> None:
    """Said at start only: a renewed key put in place as 0644 (a cp) and taken by SIGHUP was served without a word,
    where the README says a --tls-key others can read gets a warning (a probe's finding)."""
    ca = generate_ca()
    first, renewed = (issue_server_cert(ca, NAMES, not_after=NOW + datetime.timedelta(days=days)) for days in (200, 400))
    live = write_tls(tmp_path, ca, first)
    live.key.chmod(0o600)
    control = free_port()
    log = tmp_path / "server.log"
    server = spawn(*server_args(control, live, token_file), log=log)
    try:
        wait_port(control)
        live.cert.write_bytes(renewed.cert)
        live.key.write_bytes(renewed.key)
        live.key.chmod(0o644)
        server.send_signal(signal.SIGHUP)
        text = wait_for_text(log, "event=tls_key_readable")
        assert "mode=0644" in text and f"chmod 600 {live.key}" in text, text
    finally:
        stop_all(server)


def test_a_reload_says_a_token_file_others_can_read(tmp_path: Path, token: str, token_file: Path) -> None:
    """As for the TLS key above: a token file rotated as the README shows it (a second token added) and left 0644
    was taken by SIGHUP with no word, where the same file at start gets a warning (a probe's finding)."""
    ca = generate_ca()
    live = write_tls(tmp_path, ca, issue_server_cert(ca, NAMES, not_after=NOW + datetime.timedelta(days=200)))
    token_file.chmod(0o600)
    control = free_port()
    log = tmp_path / "server.log"
    server = spawn(*server_args(control, live, token_file), log=log)
    try:
        wait_port(control)
        token_file.write_text(token + "\n" + "rotated-" + "c" * 40 + "\n")
        token_file.chmod(0o644)
        server.send_signal(signal.SIGHUP)
        text = wait_for_text(log, "event=token_file_loose")
        assert "mode=0644" in text and f"chmod 600 {token_file}" in text and token not in text, text
    finally:
        stop_all(server)


def test_a_running_server_warns_of_its_certificates_end_every_day(
        tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily check (``run_server``'s ``daily``), with the day shortened: each day that falls within 30 days of
    the end says it again, not only the start."""
    caplog.set_level(logging.INFO)
    ca = generate_ca()
    config = server_config(write_tls(tmp_path, ca, issue_server_cert(ca, NAMES, not_after=NOW + datetime.timedelta(
        days=10))), token)
    assert len(warnings(caplog, "inlets")) == 1  # at start
    monkeypatch.setattr(lifecycle, "DAY", 0.05)

    async def three_days() -> None:  # waited for, not slept: a loaded CI run fired 2 of 3 timers in 0.18 s
        lifecycle.every_day(asyncio.get_running_loop(), daily_certificate_check(config))
        for _ in range(200):  # 10 s at most
            if len(warnings(caplog, "inlets")) >= 4:
                return
            await asyncio.sleep(0.05)

    run(three_days(), timeout=15)
    said = warnings(caplog, "inlets")
    assert len(said) >= 4 and all(line.startswith("event=certificate_expires_soon cert=") for line in said), said
