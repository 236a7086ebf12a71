#!/usr/bin/env python3
"""Send the server wheel to an exit server that waits for it, as ``inletsctl create`` does.

Where a cloud's user-data cannot hold the wheel (EC2: 16 KiB), the ``inlets-userdata`` module
with ``wheel_delivery = "push"`` makes the VM wait for it on the control port; the
``aws-exit-server`` module runs this from a ``local-exec`` provisioner. The standard library
is enough (``runtime/probe.py`` of this checkout makes the request). Settings come from the
environment, so the token never shows on a command line:

    INLETS_HOST, INLETS_PORT      the VM's address and control port
    INLETS_TOKEN                  the tunnel token (authorises the upload)
    INLETS_CA_CERT                the CA certificate the VM's certificate is checked against (PEM)
    INLETS_WHEEL_XZ_BASE64        the wheel as the module carries it (xz, base64)
    INLETS_TIMEOUT                seconds to keep trying [900]
"""

from __future__ import annotations

import base64
import lzma
import os
import sys
import tempfile
import time
import types
from pathlib import Path

# This checkout as the ``inlets_py`` package (its folders are its subpackages, as pyproject.toml
# maps them), installed or not: the tool runs on the code beside it.
sys.modules["inlets_py"] = _checkout = types.ModuleType("inlets_py")
_checkout.__path__ = [str(Path(__file__).resolve().parents[2])]

from inlets_py.runtime.core.probe import Endpoint, ProbeError, get  # noqa: E402  (standard library only)

PATH = "/inlets/runtime-wheel"  # provisioner/wheel_receiver.py
SERVER_NAME = "inlets-exit-server"  # runtime/core/certs.py: the name in every exit server's certificate


def main() -> int:
    try:
        host, port = os.environ["INLETS_HOST"], int(os.environ["INLETS_PORT"])
        token, ca_pem = os.environ["INLETS_TOKEN"].strip(), os.environ["INLETS_CA_CERT"]
        wheel = lzma.decompress(base64.b64decode(os.environ["INLETS_WHEEL_XZ_BASE64"]))
        timeout = float(os.environ.get("INLETS_TIMEOUT", "900"))
    except (KeyError, ValueError, lzma.LZMAError) as exc:
        print(f"push_wheel: error: missing or bad setting ({exc}); see the docstring of {__file__}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + timeout
    with tempfile.NamedTemporaryFile("w", suffix=".crt") as ca:
        ca.write(ca_pem)
        ca.flush()
        last = "not tried"
        while time.monotonic() < deadline:
            try:
                answer = get(Endpoint(host, port, True, ""), PATH, ca_file=Path(ca.name), server_name=SERVER_NAME,
                             token=token, timeout=30.0, method="PUT", body=wheel)
            except ProbeError as exc:
                last = str(exc)
            else:
                if answer.status == 200:
                    print(f"push_wheel: {host} took the server wheel ({len(wheel)} bytes)", file=sys.stderr)
                    return 0
                if answer.status in (401, 422):
                    print(f"push_wheel: error: {host} refused the wheel: {answer.status} {answer.body.strip()}",
                          file=sys.stderr)
                    return 1
                last = f"{PATH} answered {answer.status}"
            time.sleep(3)
    print(f"push_wheel: error: {host}:{port} did not take the wheel within {timeout:.0f}s (last: {last}); "
          "see why with cloud-init status --long on the VM", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
