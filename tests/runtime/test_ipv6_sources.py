"""Per-source limits on the control port count an IPv6 source by its /64: real processes in a network namespace of
their own, whose loopback holds all of 2001:db8::/48, so that one "host" can connect from as many addresses as a
VPS given a /64 can."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers.netns import namespace
from helpers.process import INLETS, ROOT, terminate, wait_for_text
from helpers.tunnel import make_tls

PORT = 22241  # the namespace's own port space: no other test can hold it

#: Run in the namespace: wrong tokens, then silent connections, each from its own address; prints what each got.
ATTACK = r"""
import json, socket, ssl, sys, time
port, sources = int(sys.argv[1]), json.loads(sys.argv[2])
context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE

def status(source, n):
    with socket.create_connection(("2001:db8::1", port), timeout=5, source_address=(source, 0)) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /connect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer guess-%d\r\n\r\n" % n)
            return int(tls.recv(64).split()[1])

def closed_soon(sock):
    sock.settimeout(1.0)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True

codes = [status(source, n) for n, source in enumerate(sources["guess"])]
silent = [socket.create_connection(("2001:db8::1", port), timeout=5, source_address=(s, 0)) for s in sources["silent"]]
time.sleep(0.5)
print(json.dumps({"codes": codes, "closed": [closed_soon(s) for s in silent]}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace whose ``lo`` takes every address of 2001:db8::/48; skipped, with why, where none can be made."""
    with namespace("v6src", ("addr", "add", "2001:db8::1/64", "dev", "lo", "nodad"),
                   ("-6", "route", "replace", "local", "2001:db8::/48", "dev", "lo")) as name:
        nonlocal_bind = subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1"],
                                       capture_output=True, text=True, timeout=10)
        assert nonlocal_bind.returncode == 0, nonlocal_bind.stderr
        yield name


def test_one_ipv6_host_is_one_source_for_failed_logins_and_pending_handshakes(netns: str, tmp_path: Path,
                                                                               token_file: Path) -> None:
    """Found by review: the limits counted each IPv6 address apart, so a host with a /64 (any VPS) guessed tokens
    from a new address each time (40 wrong tokens: 40 answered 401, none 429) and held every pending place (300
    silent connections: 128 held, none refused past the per-source cap). A /64 is one source now; another /64 is
    another source."""
    tls = make_tls(tmp_path / "tls", ["2001:db8::1"])
    log = tmp_path / "server.log"
    with open(log, "w") as handle:
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, *INLETS, "tcp", "server", "--control-addr", "2001:db8::1", "--control-port",
             str(PORT), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--token-file", str(token_file),
             "--max-handshakes-per-source", "4"],
            stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for_text(log, "event=started")
        sources = {"guess": [f"2001:db8::{n + 0x100:x}" for n in range(12)] + ["2001:db8:0:1::5"],
                   "silent": [f"2001:db8::{n + 0x200:x}" for n in range(6)] + ["2001:db8:0:1::6"]}
        attack = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", ATTACK, str(PORT),
                                 json.dumps(sources)], capture_output=True, text=True, timeout=60)
        assert attack.returncode == 0, attack.stderr
        seen = json.loads(attack.stdout)
    finally:
        terminate(server)
    assert seen["codes"] == [401] * 10 + [429] * 2 + [401], log.read_text()[-2000:]  # the other /64: not limited
    assert seen["closed"] == [False] * 4 + [True] * 2 + [False], log.read_text()[-2000:]
    assert "event=auth_rate_limited remote=2001:db8::109 " in log.read_text()  # the address itself is logged
