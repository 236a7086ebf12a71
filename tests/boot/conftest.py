"""The boot tests use the provisioner tests' fake DigitalOcean API and helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "provisioner"))
