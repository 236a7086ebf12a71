"""The environment inlets gives a process it starts: what a Python process of this installation reads, no secret.

A child inherited every variable around its parent: the server's --auto-tls child (core/certs.py) got
$INLETS_TOKEN and any cloud token the server's shell held, and inletsctl's local exit server, which outlives the
create that started it, got that shell's cloud tokens and keys (DIGITALOCEAN_ACCESS_TOKEN, AWS_SECRET_ACCESS_KEY,
INLETS_*, a proxy's password), for any process that can read its /proc/PID/environ (as a VM is given no API token).
Their keys are files they are named.
"""

from __future__ import annotations

import os

#: The search path; the home folder and $XDG_DATA_HOME (the default --auto-tls and --letsencrypt folders, the user's
#: site-packages); the time zone and locale; the temporary folder; where Python finds this installation's modules;
#: glibc's tunables.
CHILD_ENV = ("PATH", "HOME", "TZ", "LANG", "LANGUAGE", "TMPDIR", "XDG_DATA_HOME", "PYTHONPATH", "PYTHONHOME",
             "PYTHONUSERBASE", "GLIBC_TUNABLES")
CHILD_ENV_PREFIXES = ("LC_", "MALLOC_")  # the locale; glibc's allocator tuning, which the server's heap trimming heeds


def child_environment() -> dict[str, str]:
    """This process's environment cut down to ``CHILD_ENV`` (and ``CHILD_ENV_PREFIXES``)."""
    return {k: v for k, v in os.environ.items() if k in CHILD_ENV or k.startswith(CHILD_ENV_PREFIXES)}
