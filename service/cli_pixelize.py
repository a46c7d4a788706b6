"""Placeholder: commands are added by their owners."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the root app."""
