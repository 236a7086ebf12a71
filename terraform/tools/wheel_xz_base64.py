#!/usr/bin/env python3
"""Print the embedded-wheel inputs of the Terraform modules, as ``inletsctl --embed-wheel`` makes them.

    python terraform/tools/wheel_xz_base64.py > wheel.json

then, in a module call::

    wheel_filename  = jsondecode(file("wheel.json")).wheel_filename
    wheel_xz_base64 = jsondecode(file("wheel.json")).wheel_xz_base64

The wheel is this checkout's ``runtime`` package (provisioner/wheel.py), xz-compressed
(cloud-init itself only decodes gzip; the user-data unpacks xz) and base64-encoded, so the
VM needs no published package. It fits DigitalOcean's 64 KiB user-data limit, not EC2's
16 KiB: on AWS keep the default pinned package spec.
"""

from __future__ import annotations

import base64
import json
import lzma
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from provisioner.wheel import build_runtime_wheel  # noqa: E402


def main() -> int:
    wheel = build_runtime_wheel()
    packed = lzma.compress(wheel.data, preset=9 | lzma.PRESET_EXTREME)  # as provisioner/render.py
    json.dump({"wheel_filename": wheel.filename, "wheel_xz_base64": base64.b64encode(packed).decode()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
