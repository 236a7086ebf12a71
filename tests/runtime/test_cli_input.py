"""Bad input to `inlets`, as users type it: one line saying what to do, a non-zero exit, no Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.process import inlets, one_line_error

@pytest.fixture
def files(tmp_path: Path, token_file: Path) -> dict[str, str]:
    notpem = tmp_path / "notpem.txt"
    notpem.write_text("not a certificate\n")
    empty = tmp_path / "empty.crt"
    empty.write_text("")
    return {"tok": str(token_file), "notpem": str(notpem), "empty": str(empty), "dir": str(tmp_path)}


CLIENT = ["tcp", "client", "--token-file", "{tok}", "--upstream", "127.0.0.1", "--ports", "20020"]
STATUS = ["status", "--token-file", "{tok}"]
HTTP_CLIENT = ["http", "client", "--token-file", "{tok}", "--url", "wss://127.0.0.1:20030"]
SERVER = ["tcp", "server", "--token-file", "{tok}", "--plaintext", "--control-port", "20777"]
LE_SERVER = ["http", "server", "--token-file", "{tok}", "--plaintext", "--letsencrypt-domain", "example.com"]


@pytest.mark.parametrize("args, message", [
    # a malformed URL or host: urlsplit's and the idna codec's ValueErrors were tracebacks
    (CLIENT + ["--url", "wss://[::1"], "malformed [IPv6] address"),
    (CLIENT + ["--url", "wss://[zz]:20030"], "malformed [IPv6] address"),
    (STATUS + ["--url", "wss://[::1"], "malformed [IPv6] address"),
    (HTTP_CLIENT + ["--upstream", "http://[::1"], "malformed [IPv6] address"),
    (HTTP_CLIENT + ["--upstream", "http://[zz]:1"], "malformed [IPv6] address"),
    (["http", "client", "--token-file", "{tok}", "--url", "wss://[::1", "--upstream", "http://127.0.0.1:1"],
     "malformed [IPv6] address"),
    (CLIENT + ["--url", "wss://a..b:20100"], "'a..b' is not a valid host name"),
    (CLIENT + ["--url", f"wss://{'a' * 64}.example:20100"], "is not a valid host name"),
    (CLIENT + ["--url", "wss://127.0.0.1:20100", "--tls-server-name", ".."], "--tls-server-name: '..' is not a valid"),
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--tls-server-name", ".."], "--tls-server-name: '..' is not a valid"),
    (SERVER + ["--control-addr", "a..b"], "--control-addr: 'a..b' is not a valid host name"),
    # hosts accepted at startup that then hung every connection, or retried forever
    (["tcp", "client", "--token-file", "{tok}", "--url", "wss://127.0.0.1:1", "--upstream", "22002=a..b:22"],
     "'a..b' is not a valid host name"),
    (HTTP_CLIENT + ["--upstream", "a.test=http://a..b:80"], "'a..b' is not a valid host name"),
    (HTTP_CLIENT + ["--upstream", "http://a b:1"], "'a b' is not a valid host name"),
    (CLIENT + ["--url", "wss://a b:20030"], "'a b' is not a valid host name"),
    (SERVER + ["--data-addr", "a..b"], "--data-addr: 'a..b' is not a valid host name"),
    (SERVER + ["--data-addr", "999.9.9.9"], "--data-addr: '999.9.9.9' is not an IP address"),
    (SERVER + ["--control-addr", "999.0.0.1"], "--control-addr: '999.0.0.1' is not an IP address"),
    (["http", "server", "--token-file", "{tok}", "--plaintext", "--data-addr", "a..b"], "--data-addr: 'a..b'"),
    # a TLS file that is no CA: OpenSSL's words (_ssl.c) or a traceback from status
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--tls-ca", "{notpem}"], "holds no PEM certificate"),
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--tls-ca", "{empty}"], "holds no PEM certificate"),
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--tls-ca", "{dir}"], "is a directory"),
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--tls-ca", "/nonexistent/ca.crt"], "CA file not found"),
    (CLIENT + ["--url", "wss://127.0.0.1:20100", "--tls-ca", "{dir}"], "is a directory"),
    (HTTP_CLIENT + ["--upstream", "https://127.0.0.1:1", "--upstream-ca", "{notpem}"], "holds no PEM certificate"),
    (SERVER[:4] + ["--tls-cert", "{notpem}", "--tls-key", "{notpem}"], "must be PEM files"),
    (SERVER[:4] + ["--tls-cert", "{dir}", "--tls-key", "{notpem}"], "is a directory"),
    (SERVER[:4] + ["--tls-cert", "/nonexistent.crt", "--tls-key", "{notpem}"], "not found: /nonexistent.crt"),
    # durations: nan and inf got past min=, and then raised
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--timeout", "nan"], "'nan' is not a number of seconds"),
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--timeout", "inf"], "'inf' is not a number of seconds"),
    (CLIENT + ["--url", "wss://127.0.0.1:20100", "--keepalive", "nan"], "'nan' is not a number of seconds"),
    (SERVER + ["--drain-timeout", "inf"], "'inf' is not a number of seconds"),
    (["http", "server", "--upstream-timeout", "nan"], "'nan' is not a number of seconds"),
    # conflicting TLS flags
    (CLIENT + ["--url", "wss://127.0.0.1:20100", "--tls-ca", "{notpem}", "--tls-insecure"], "not both"),
    # --upstream-ca was silently ignored: the user believed the upstreams pinned to it
    (HTTP_CLIENT + ["--upstream", "https://127.0.0.1:1", "--upstream-ca", "{notpem}", "--upstream-insecure"],
     "give --upstream-ca or --upstream-insecure, not both"),
    (HTTP_CLIENT + ["--upstream", "https://127.0.0.1:1", "--upstream-ca", "{notpem}", "--upstream-insecure",
                    "--generate", "systemd"], "not both"),
    # a malformed --letsencrypt-issuer: urlsplit's ValueError was a traceback, and :0 was accepted
    *[(LE_SERVER + ["--letsencrypt-issuer", issuer, *generate], message)
      for issuer, message in (("https://[::1/dir", "an https:// directory URL, got 'https://[::1/dir'"),
                              ("https://127.0.0.1:99999/dir", "'99999' is not a port between 1 and 65535"),
                              ("https://127.0.0.1:abc/dir", "'abc' is not a port between 1 and 65535"),
                              ("https://127.0.0.1:0/dir", "'0' is not a port between 1 and 65535"))
      for generate in ([], ["--generate", "k8s_yaml"])],
    # an empty --letsencrypt-path wrote the ACME account and certificate keys into the current directory
    (LE_SERVER + ["--letsencrypt-path", ""], "--letsencrypt-path is empty (the current directory)"),
    (LE_SERVER + ["--letsencrypt-path", "", "--generate", "systemd"], "--letsencrypt-path is empty"),
    # two of the server's own flags on one port: the OS's "Address already in use" blamed another program
    (["http", "server", "--token-file", "{tok}", "--plaintext", "--port", "20611", "--control-port", "20611"],
     "--control-port and --port both name port 20611: the server cannot listen on it twice"),
    (["http", "server", "--token-file", "{tok}", "--plaintext", "--control-port", "8000", "--generate", "systemd"],
     "--control-port and --port (default 8000) both name port 8000"),
    (["http", "server", "--token-file", "{tok}", "--plaintext", "--port", "20612", "--control-port", "20612",
      "--control-addr", "127.0.0.1", "--data-addr", "::"], "--control-port and --port both name port 20612"),
    (LE_SERVER + ["--port", "20613", "--https-port", "20613"], "--port and --https-port both name port 20613"),
    (SERVER + ["--allow-ports", "80,20777"], "--control-port and --allow-ports both name port 20777"),
    # an empty value ("$PORTS" unset) was taken as the flag left out: every port opened
    (SERVER + ["--allow-ports", ""], "--allow-ports is empty: give the ports clients may open"),
    (SERVER + ["--allow-ports", "", "--generate", "systemd"], "--allow-ports is empty"),
    # status as the clients: a blank --proxy took the environment's proxy, or none
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--proxy", ""], "--proxy is empty: give http://HOST:PORT"),
    # a rule that could never match was taken, and the target it meant was refused at each use
    (SERVER + ["--client-forwarding", "--client-forwarding-allow", "127.0.0.1/33:*"],
     "'127.0.0.1/33' in '127.0.0.1/33:*' is not a CIDR network"),
    # so were a host no target has (the server started, and refused every client's --local): found by a probe
    (SERVER + ["--client-forwarding", "--client-forwarding-allow", "*:*"], "'*:*': * is for the port only; for any "
     "address give 0.0.0.0/0:*"),
    (SERVER + ["--client-forwarding", "--client-forwarding-allow", "*:5432"], "for any address give 0.0.0.0/0:5432 "
     "(and ::/0:5432 for IPv6)"),  # the port kept: a hint of :* would have widened the rule to every port
    (SERVER + ["--client-forwarding", "--client-forwarding-allow", "db internal:5432"],
     "'db internal' is not a valid host name"),
    (SERVER + ["--client-forwarding", "--client-forwarding-allow", "127.0.0.1:5432:5432"],
     "'127.0.0.1:5432' is not a valid host name"),
    # credentials in --url would be logged on every line
    (CLIENT + ["--url", "wss://user:pass@127.0.0.1:20030"], "must not carry a user name or password"),
    (CLIENT + ["--url", "wss://user:pass@[::1"], "must not carry a user name or password"),  # was quoted as malformed
    (HTTP_CLIENT + ["--upstream", "http://user:pass@[::1"], "--upstream must not carry a user name or password"),
    # a path flag given '' ("$UNSET") was the current folder: "token file . is a directory", a path never typed
    (SERVER[:2] + ["--plaintext", "--token-file", ""], "Invalid value for '--token-file': the path is empty"),
    (SERVER[:4] + ["--tls-cert", "", "--tls-key", "{notpem}"], "Invalid value for '--tls-cert': the path is empty"),
    (CLIENT + ["--url", "wss://127.0.0.1:20100", "--tls-ca", ""], "Invalid value for '--tls-ca': the path is empty"),
    (STATUS[:1] + ["--url", "wss://127.0.0.1:20100", "--token-file", ""], "'--token-file': the path is empty"),
    (HTTP_CLIENT + ["--upstream", "http://127.0.0.1:1", "--bearer-token-file", ""], "the path is empty"),
    (LE_SERVER + ["--letsencrypt-ca", ""], "Invalid value for '--letsencrypt-ca': the path is empty"),
    # ignored over ws://, without a word: the user believed the server pinned
    (CLIENT + ["--url", "ws://127.0.0.1:20100", "--tls-ca", "{notpem}"], "--tls-ca checks a wss:// server's certificate"),
    (HTTP_CLIENT[:4] + ["--url", "ws://127.0.0.1:20100", "--upstream", "http://127.0.0.1:1", "--tls-server-name", "a"],
     "--tls-server-name checks a wss:// server's certificate, and every --url is ws://"),
    # a header's value may be a credential: the error names the header, never shows the value
    (HTTP_CLIENT + ["--upstream", "http://127.0.0.1:1", "--request-header-add", "Authorization: Bearer pass@\x01"],
     "the value of header 'Authorization' holds a control character"),
    (HTTP_CLIENT + ["--upstream", "http://127.0.0.1:1", "--response-header-add", "pass@"], "got a header without ':'"),
    # Go's inlets takes a list: the URL's ',' was said as a path
    (HTTP_CLIENT + ["--upstream", "a.test=http://127.0.0.1:1,b.test=http://127.0.0.1:2"],
     "--upstream takes one HOST=URL (or one URL): repeat --upstream for each"),
    # more header rules than a server takes: the client started, then each server refused it
    (HTTP_CLIENT + ["--upstream", "http://127.0.0.1:1", *["--request-header-add", "X-A: b"] * 65],
     "--request-header-add is given 65 times: a server takes at most 64"),
    # an empty --upstream beside another was skipped without a word
    (CLIENT + ["--url", "wss://127.0.0.1:20100", "--upstream", ""], "--upstream is empty"),
])
def test_bad_input_is_one_line(args: list[str], message: str, files: dict[str, str]) -> None:
    result = inlets(*(arg.format(**files) for arg in args))
    line = one_line_error(result, message)
    assert "pass@" not in line


@pytest.mark.parametrize("upstreams, message", [
    (["20961=[]:20101"], "expected [IPv6]:PORT"),
    (["127.0.0.1:20101", "--ports", "20962"], "give the host alone"),
    (["2222=a=b:22"], "'a=b' is not a valid host name"),
    (["2222=h:22:33"], "expected HOST:PORT"),
    (["2222=h:22", "--upstream", "2222=h:23"], "public port tcp:2222 is given twice"),
    (["127.0.0.1", "--ports", "80", "--upstream", "80=h:81"], "public port tcp:80 is given by --ports and"),
    # were skipped or collapsed without a word (inletsctl's --ports refused them)
    (["127.0.0.1", "--ports", "80,,81"], "--ports '80,,81' has an empty entry"),
    (["127.0.0.1", "--ports", "80,"], "--ports '80,' has an empty entry"),
    (["127.0.0.1", "--ports", "80,443", "--ports", "0443"], "port 443 is given twice in --ports"),
    (["127.0.0.1", "--udp-ports", "53,53"], "port 53 is given twice in --udp-ports"),
])
def test_malformed_or_conflicting_tcp_upstreams_are_refused(upstreams: list[str], message: str, files) -> None:
    result = inlets("tcp", "client", "--token-file", files["tok"], "--url", "wss://127.0.0.1:1", "--upstream", *upstreams)
    one_line_error(result, message)


def test_ctrl_c_while_the_command_loads_exits_130_quietly(files) -> None:
    """Ctrl-C in the first quarter second (typer and the command's modules loading) was a traceback."""
    import signal
    import subprocess
    import time

    from helpers.process import INLETS

    checked = 0
    for delay in (0.15, 0.2, 0.25, 0.3, 0.35):
        process = subprocess.Popen([*INLETS, "status", "--url", "wss://127.0.0.1:1", "--token-file", files["tok"]],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
        if _before_any_inlets_line(err):
            continue
        checked += 1
        assert "Traceback" not in err + out, (delay, err)
        assert process.returncode in (130, -signal.SIGINT, 1), (delay, process.returncode, err)
    if not checked:
        pytest.skip("every Ctrl-C landed while Python was still starting (a slow machine): nothing of inlets was tested")


def _before_any_inlets_line(err: str) -> bool:
    """The interrupt came before a line of inlets ran: Python was still starting (its site module), or its
    import machinery was still reading the first of the command's files (``main.py``'s own ``try`` catches
    it from there on). Only Python's frames are in such a traceback: no file of ours is."""
    if "init_import_site" in err:
        return True
    frames = re.findall(r'File "([^"]+)"', err)
    return bool(frames) and all(f == "<string>" or f.startswith("<frozen ") for f in frames)


@pytest.mark.parametrize("args, line", [
    (["status", "--url"], "inlets status: error: Option '--url' requires an argument. (see --help)"),
    (["tcp", "client", "--url", "wss://h:1", "--max-streams", "x"],
     "inlets tcp client: error: Invalid value for '--max-streams': 'x' is not a whole number from 1 to 1000000 in the "
     "digits 0-9 (see --help)"),
    (["tcp", "client", "--url", "wss://h:1", "--max-streams", "it's"],  # quoted with " then
     "inlets tcp client: error: Invalid value for '--max-streams': \"it's\" is not a whole number from 1 to 1000000 "
     "in the digits 0-9 (see --help)"),
    # int() took "８" as 8 (and --generate wrote it into the unit as given), where a port or a duration is refused
    (["tcp", "server", "--max-client-streams", "８"], "inlets tcp server: error: Invalid value for "
     "'--max-client-streams': '８' is not a whole number from 1 to 1000000 in the digits 0-9 (see --help)"),
    (["tcp", "server", "--replicas", "101"], "inlets tcp server: error: Invalid value for "
     "'--replicas': '101' is not a whole number from 1 to 100 in the digits 0-9 (see --help)"),
    # an unknown flag offers only what looks like a typo of it: click offered "--bogus" "Did you mean --host?"
    (["tcp", "server", "--tokn", "x"], "inlets tcp server: error: No such option: --tokn (did you mean --token?) (see --help)"),
    (["tcp", "server", "--bogus"], "inlets tcp server: error: No such option: --bogus (see --help)"),
])
def test_usage_errors_name_the_command_in_the_users_words(args: list[str], line: str) -> None:
    result = inlets(*args)
    assert result.returncode == 2 and result.stderr.strip() == line, result


def test_a_proxy_port_out_of_range_is_shown_as_given(files) -> None:
    result = inlets("tcp", "client", "--url", "wss://127.0.0.1:1", "--token-file", files["tok"], "--upstream",
                    "1=127.0.0.1:1", "--proxy", "http://127.0.0.1:99999")
    one_line_error(result, "invalid proxy http://127.0.0.1:99999")


def test_one_port_on_two_addresses_that_do_not_overlap_is_not_refused(tmp_path: Path, files) -> None:
    import signal

    from helpers.process import spawn, wait_for_text
    from helpers.tunnel import free_port

    port = free_port("127.0.0.2")
    server = spawn("http", "server", "--token-file", files["tok"], "--plaintext", "--control-addr", "127.0.0.1",
                   "--control-port", str(port), "--data-addr", "127.0.0.2", "--port", str(port), log=tmp_path / "server.log")
    try:
        log = wait_for_text(tmp_path / "server.log", "event=started")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    assert f"control=ws://127.0.0.1:{port} data=http://127.0.0.2:{port} " in log


def test_the_ready_line_writes_an_ipv6_control_address_in_brackets(tmp_path: Path, files) -> None:
    import signal

    from helpers.process import spawn, wait_for_text
    from helpers.tunnel import free_port

    port = free_port("::1")
    server = spawn("tcp", "server", "--token-file", files["tok"], "--plaintext", "--control-addr", "::1",
                   "--control-port", str(port), "--data-addr", "::1", log=tmp_path / "server.log")
    try:
        log = wait_for_text(tmp_path / "server.log", "event=started")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    assert f"control=ws://[::1]:{port} " in log


def test_ipv6_addresses_in_log_lines_and_errors_are_in_brackets(tmp_path: Path, files) -> None:
    """``::1:8080`` reads as a host ``::1:8080`` with no port: the client's lines and ``inlets status`` said it so."""
    import contextlib
    import socket

    from helpers.process import spawn, stop_all, wait_for_text
    from helpers.tunnel import free_port

    control, public, dead, local = (free_port("::1") for _ in range(4))
    server = spawn("tcp", "server", "--token-file", files["tok"], "--plaintext", "--control-addr", "::1",
                   "--control-port", str(control), "--data-addr", "::1", "--client-forwarding",
                   "--client-forwarding-allow", f"[::1]:{dead}", log=tmp_path / "server.log")
    client = None
    try:
        wait_for_text(tmp_path / "server.log", "event=started")
        client = spawn("tcp", "client", "--url", f"ws://[::1]:{control}", "--token-file", files["tok"],
                       "--upstream", f"{public}=[::1]:{dead}", "--local", f"{local}:[::1]:{dead}", "--local-addr", "::1",
                       log=tmp_path / "client.log")
        wait_for_text(tmp_path / "client.log", "event=connected")
        # the upstream refuses: the user is reset, before its connect returns when the reset comes first (seen in CI)
        with contextlib.suppress(ConnectionResetError), socket.create_connection(("::1", public), timeout=5) as user:
            user.recv(1)
        log = wait_for_text(tmp_path / "client.log", "event=upstream_failed")
    finally:
        stop_all(*(p for p in (client, server) if p is not None))
    assert f"event=forwarding local=[::1]:{local} " in log
    assert f"upstream=[::1]:{dead} " in log
    one_line_error(inlets("status", "--url", f"ws://[::1]:{dead}", "--token-file", files["tok"]),
                   f"cannot reach [::1]:{dead}: Connection refused", status=1)


def test_a_key_that_is_not_the_certificates_is_said_in_words(tmp_path: Path, tls, files) -> None:
    from helpers.tunnel import make_tls

    other = make_tls(tmp_path / "other")
    result = inlets("tcp", "server", "--token-file", files["tok"], "--tls-cert", str(tls.cert), "--tls-key", str(other.key))
    line = one_line_error(result, f"the key {other.key} does not belong to the certificate {tls.cert}")
    assert "KEY_VALUES_MISMATCH" not in line


def test_a_key_of_another_type_than_the_certificates_is_said_in_words(tmp_path: Path, tls, files) -> None:
    """An RSA key for an EC certificate: OpenSSL says NO_CERTIFICATE_ASSIGNED, not KEY_VALUES_MISMATCH, and the
    user was told both files must be PEM, which they were."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = tmp_path / "rsa.key"
    key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key.chmod(0o600)
    for command in ("tcp", "http"):
        result = inlets(command, "server", "--token-file", files["tok"], "--tls-cert", str(tls.cert), "--tls-key", str(key))
        line = one_line_error(result, f"the key {key} does not belong to the certificate {tls.cert}")
        assert "PEM" not in line


@pytest.mark.parametrize("ca_size, key_size, digest, said", [
    (2048, 1024, "sha256", "is too small for OpenSSL here (RSA under 2048 bits): make an RSA key of 2048 bits or more"),
    (2048, 2048, "sha1", ", or a CA certificate in it, is signed with a digest OpenSSL here refuses as too weak (SHA-1"),
    (1024, 2048, "sha256", "has a key too small for OpenSSL here (RSA under 2048 bits): get the chain from a CA"),
])
def test_a_key_or_signature_openssl_finds_too_weak_is_said_in_words(tmp_path: Path, files, ca_size: int, key_size: int,
                                                                   digest: str, said: str) -> None:
    """Found by a probe: well-formed PEM files whose RSA key has 1024 bits, or whose certificate a CA signed with
    SHA-1, were refused as "they must be PEM files (-----BEGIN CERTIFICATE-----...)", which they were. Made with
    openssl, as a user makes them (cryptography no longer signs with SHA-1)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian's openssl package)")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", f"rsa:{ca_size}", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj",
            "/CN=ca", "-days", "30")
    openssl("req", "-newkey", f"rsa:{key_size}", "-nodes", "-keyout", "weak.key", "-out", "weak.csr", "-subj",
            "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", "weak.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", f"-{digest}",
            "-days", "30", "-out", "weak.crt")
    cert_file, key_file = tmp_path / "weak.crt", tmp_path / "weak.key"
    key_file.chmod(0o600)
    if ca_size < 2048:  # the chain file a CA hands out: the server's certificate, then the CA's
        cert_file.write_bytes(cert_file.read_bytes() + (tmp_path / "ca.crt").read_bytes())
    result = inlets("tcp", "server", "--token-file", files["tok"], "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    line = one_line_error(result, said)
    assert f" {cert_file}" in line and "PEM" not in line, line


def test_a_chain_file_with_the_ca_first_is_said_in_words(tmp_path: Path, tls, files) -> None:
    """The right key with a chain in the wrong order: "give the key the certificate was made with" alone would
    send the user after another key; the order is what to change."""
    reversed_chain = tmp_path / "chain.pem"
    reversed_chain.write_bytes(Path(tls.ca).read_bytes() + Path(tls.cert).read_bytes())
    result = inlets("tcp", "server", "--token-file", files["tok"], "--tls-cert", str(reversed_chain),
                    "--tls-key", str(tls.key))
    one_line_error(result, "the server's own certificate comes first, then the CA(s) that signed it")


def test_ctrl_c_while_the_command_module_itself_loads_exits_130_quietly() -> None:
    """The timed test above can miss the first milliseconds: ``inlets``'s own module imports its helpers before
    ``main()`` runs, and a Ctrl-C there (seen on a loaded machine, a fresh clone compiling its bytecode) was a
    traceback. Here the Ctrl-C arrives exactly then: an import hook raises it while the last helper loads."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class CtrlC:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'inlets_py.runtime.cli.usage':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, CtrlC())\n"
            "from inlets_py.runtime.cli.main import main\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code, "status"], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 130, (result.returncode, result.stderr)


def test_an_encrypted_key_is_refused_in_words_not_asked_for_on_the_terminal(tmp_path: Path, tls, files) -> None:
    """With a terminal, OpenSSL asked 'Enter PEM pass phrase:' and the server waited there; without one (systemd)
    the error was 'cannot load TLS certificate ... / key ...: invalid argument'."""
    import os
    import subprocess

    from cryptography.hazmat.primitives import serialization

    from helpers.process import INLETS

    key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    encrypted.chmod(0o600)
    args = ["tcp", "server", "--token-file", files["tok"], "--tls-cert", str(tls.cert), "--tls-key", str(encrypted)]
    without_terminal = inlets(*args)
    line = one_line_error(without_terminal, f"the key {encrypted} is encrypted (it asks for a pass phrase)")
    assert "openssl pkey" in line
    controller, terminal = os.openpty()  # the server's own controlling terminal, where OpenSSL would prompt
    try:
        proc = subprocess.Popen([*INLETS, *args], stdin=terminal, stdout=terminal, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=lambda: os.close(os.open(os.ttyname(0), os.O_RDWR)))
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("the server waited for a pass phrase on its terminal") from None
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 2 and "is encrypted (it asks for a pass phrase)" in err.decode(), err


def test_both_commands_print_the_projects_version() -> None:
    """'--version' was 'No such option'; the version printed is the one the project is released as."""
    import subprocess
    import sys
    import tomllib

    root = Path(__file__).resolve().parents[2]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    result = inlets("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"inlets {version}\n", ""), result
    ctl = subprocess.run([sys.executable, "-c", "from inlets_py.provisioner.cli import main; main()", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert (ctl.returncode, ctl.stdout, ctl.stderr) == (0, f"inletsctl {version}\n", ""), ctl


def test_a_secret_files_help_says_its_variable_holds_the_secret_not_a_file() -> None:
    """'--proxy-password-file ... [env: INLETS_PROXY_PASSWORD]' read, in click's words, as a variable naming the
    file: it holds the password itself."""
    for command, flag, variable in ((("tcp", "client"), "--proxy-password-file", "INLETS_PROXY_PASSWORD"),
                                    (("http", "client"), "--basic-auth-password-file", "INLETS_BASIC_AUTH_PASSWORD"),
                                    (("http", "client"), "--bearer-token-file", "INLETS_BEARER_TOKEN")):
        text = " ".join(inlets(*command, "--help").stdout.split())
        assert f"[env: {variable}]" not in text and f"itself in ${variable}" in text[text.index(flag):], text


@pytest.mark.parametrize("command", [("tcp", "client"), ("http", "client")])
def test_a_clients_help_names_only_its_own_flags(command: tuple[str, ...]) -> None:
    """``inlets http client --help`` said --max-streams bounds "the client's own --local ones": it has no --local."""
    text = inlets(*command, "--help", env={"COLUMNS": "400"}).stdout
    own = set(re.findall(r"^ +(--[a-z-]+)", text, re.M)) | set(re.findall(r" / (--[a-z-]+)", text))
    assert own and set(re.findall(r"--[a-z][a-z-]*[a-z]", text)) <= own, set(re.findall(r"--[a-z][a-z-]*[a-z]", text)) - own


#: A Latin-1 "é" typed where UTF-8 was expected: Python holds the byte as the surrogate escape "\udce9".
LATIN1 = "caf\udce9"


@pytest.mark.parametrize("args, message", [
    (CLIENT + ["--url", "wss://127.0.0.1:20100", "--tls-server-name", LATIN1], "--tls-server-name: 'caf\\xe9' holds a byte"),
    (CLIENT + ["--url", f"wss://{LATIN1}:20100"], "--url: 'caf\\xe9' holds a byte that is not UTF-8"),
    (STATUS + ["--url", f"wss://{LATIN1}:20100"], "--url: 'caf\\xe9' holds a byte that is not UTF-8"),
    (HTTP_CLIENT + ["--upstream", f"http://{LATIN1}:1"], "'caf\\xe9' holds a byte that is not UTF-8"),
    (["tcp", "client", "--token-file", "{tok}", "--url", "wss://127.0.0.1:1", "--upstream", LATIN1, "--ports", "20020"],
     "--upstream 'caf\\xe9': 'caf\\xe9' holds a byte"),
    (SERVER + ["--drain-timeout", LATIN1], "'caf\\xe9' is not a number of seconds"),
    (STATUS + ["--url", "wss://127.0.0.1:20100", "--tls-ca", f"/nonexistent/{LATIN1}"], "not found: /nonexistent/caf\\xe9"),
    (["tcp", "server", f"--{LATIN1}"], "No such option: --caf\\xe9"),
])
def test_a_byte_that_is_not_utf8_is_shown_as_typed(args: list[str], message: str, files: dict[str, str]) -> None:
    """Errors showed Python's surrogate escape ('caf\\udce9'), and a host name blamed "an empty or over-long label"."""
    line = one_line_error(inlets(*(a.format(**files) for a in args)), message)
    assert "udc" not in line and "label" not in line, line
