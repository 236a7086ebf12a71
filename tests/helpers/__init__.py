"""Shared test code (pytest puts ``tests/`` on the path: ``from helpers.tunnel import free_port``)."""
