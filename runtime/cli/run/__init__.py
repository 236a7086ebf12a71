"""The bodies of the commands that run a tunnel, without typer (cli/handoff.py says why)."""
