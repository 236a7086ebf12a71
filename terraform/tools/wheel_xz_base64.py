#!/usr/bin/env python3
"""Print another server wheel's inputs for the Terraform modules, as inletsctl makes them.

    python terraform/tools/wheel_xz_base64.py --mode tcp > wheel.json

then, in a module call::

    wheel_filename  = jsondecode(file("wheel.json")).wheel_filename
    wheel_xz_base64 = jsondecode(file("wheel.json")).wheel_xz_base64
    wheel_sha256    = jsondecode(file("wheel.json")).wheel_sha256

The modules default to this checkout's wheels already (``modules/inlets-userdata/runtime/``,
written by ``scripts/gen_terraform_template.py``); this is for a wheel built elsewhere, e.g.
from a changed ``runtime/``. It is the server-only wheel of ``provisioner/wheel.py``,
xz-compressed (cloud-init itself only decodes gzip; the user-data unpacks xz) and
base64-encoded, so the VM needs no published package.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

# This checkout as the ``inlets_py`` package (its folders are its subpackages, as pyproject.toml
# maps them), installed or not: the tool runs on the code beside it.
sys.modules["inlets_py"] = _checkout = types.ModuleType("inlets_py")
_checkout.__path__ = [str(Path(__file__).resolve().parents[2])]

from inlets_py.provisioner.render import wheel_xz_base64  # noqa: E402
from inlets_py.provisioner.wheel import build_runtime_wheel  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("tcp", "http"), default="tcp", help="the exit server's mode [tcp]")
    wheel = build_runtime_wheel(parser.parse_args().mode)
    json.dump({"wheel_filename": wheel.filename, "wheel_sha256": wheel.sha256,
               "wheel_xz_base64": wheel_xz_base64(wheel)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
