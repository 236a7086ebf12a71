"""The environment inlets gives a process it starts: what a Python process of this installation reads, no secret.

A child inherited every variable around its parent: the server's --auto-tls child (core/certs.py) and its Let's
Encrypt run (acme/client.py) got $INLETS_TOKEN and any cloud token the server's shell held, and inletsctl's local exit server, which outlives the
create that started it, got that shell's cloud tokens and keys (DIGITALOCEAN_ACCESS_TOKEN, AWS_SECRET_ACCESS_KEY,
INLETS_*, a proxy's password), for any process that can read its /proc/PID/environ (as a VM is given no API token).
Their keys are files they are named.
"""

from __future__ import annotations

import os

#: The search path; the home folder and $XDG_DATA_HOME (the default --auto-tls and --letsencrypt folders, the user's
#: site-packages); the time zone and locale; the temporary folder; where Python finds this installation's modules and
#: the loader its shared libraries (a libpython outside the loader's own path); glibc's tunables.
CHILD_ENV = ("PATH", "HOME", "TZ", "LANG", "LANGUAGE", "TMPDIR", "XDG_DATA_HOME", "PYTHONPATH", "PYTHONHOME",
             "PYTHONUSERBASE", "LD_LIBRARY_PATH", "GLIBC_TUNABLES")
CHILD_ENV_PREFIXES = ("LC_", "MALLOC_")  # the locale; glibc's allocator tuning, which the server's heap trimming heeds
#: What a child that dials out (the ACME run) also reads: the proxy to go through, and the CAs to trust.
NETWORK_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
               "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def child_environment(network: bool = False) -> dict[str, str]:
    """This process's environment cut down to ``CHILD_ENV`` (and ``CHILD_ENV_PREFIXES``), with ``NETWORK_ENV`` for a
    child that dials out (``network``)."""
    keep = CHILD_ENV + NETWORK_ENV if network else CHILD_ENV
    return {k: v for k, v in os.environ.items() if k in keep or k.startswith(CHILD_ENV_PREFIXES)}
