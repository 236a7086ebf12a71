"""The jinja2 templates in the top-level ``templates/`` folder, for the runtime and inletsctl alike.

Installed as the package ``inlets_py.templates`` so a wheel install finds them too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2


def template_dir() -> Path:
    try:
        return Path(str(resources.files("inlets_py.templates")))
    except ModuleNotFoundError:  # running from a source tree without installing
        return Path(__file__).resolve().parents[2] / "templates"


def new_environment() -> jinja2.Environment:
    """The templates' settings, in an environment of the caller's own (inletsctl adds its filters)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


environment = new_environment()


def render(template: str, **values: object) -> str:
    return environment.get_template(template).render(**values)
