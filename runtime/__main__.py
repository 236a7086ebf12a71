"""``python -m runtime``: the ``inlets`` command without its console script (e.g. in a generated unit)."""

from .cli.main import main

main()
