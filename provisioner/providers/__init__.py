"""The providers ``--provider`` accepts: one module each, found through registry.py."""

from __future__ import annotations

from .base import Credentials
from .registry import PROVIDERS, make

__all__ = ["PROVIDERS", "Credentials", "make"]
