"""Every option of every command says what it does in `--help`: an operator reads `dpstream COMMAND --help`
before the README. Walks the real commands that typer builds for both apps (on the click it ships, so the
options are told by their kind, not by click's classes)."""

from __future__ import annotations

import pytest
import typer

from attacks.cli import app as attacks_app
from service.cli import app as service_app


def commands(group, path: str):
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        if not sub.hidden:
            yield from commands(sub, f"{path} {name}")


@pytest.mark.parametrize(("app", "name"), [(service_app, "dpstream"), (attacks_app, "python -m attacks")])
def test_every_visible_option_and_command_has_help(app: typer.Typer, name: str) -> None:
    found = list(commands(typer.main.get_command(app), name))
    assert len(found) > 3
    missing = [f"{path} {param.opts[0]}" for path, cmd in found for param in cmd.params
               if param.param_type_name == "option" and not param.hidden and param.name != "help"
               and not (param.help or "").strip()]
    assert not missing, missing
    undescribed = [path for path, cmd in found if not (cmd.help or cmd.short_help or "").strip()]
    assert not undescribed, undescribed
