"""Where the tests find cloud providers' own API specifications (data they do not ship).

``$INLETS_API_SPECS`` names a folder holding ``digitalocean/DigitalOcean-public.v2.yaml``;
unset, it is ``../shared/api-specs`` beside the checkout, where CI puts it.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPECS_ENV = "INLETS_API_SPECS"
SPECS_DEFAULT = "../shared/api-specs"  # relative to the checkout
SPEC_FILE = Path("digitalocean") / "DigitalOcean-public.v2.yaml"


def find_spec() -> tuple[Path | None, str]:
    """The DigitalOcean spec, or None and the reason its tests skip: which setting to set, where to get it."""
    folder = Path(os.environ.get(SPECS_ENV) or SPECS_DEFAULT)
    spec = (folder if folder.is_absolute() else ROOT / folder) / SPEC_FILE
    if spec.exists():
        return spec, ""
    return None, (f"DigitalOcean's OpenAPI spec is not at {spec}: set ${SPECS_ENV} (default {SPECS_DEFAULT}, "
                  "beside the checkout) to a folder whose digitalocean/ is the specification/ folder of "
                  "https://github.com/digitalocean/openapi")
