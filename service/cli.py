"""The `dpstream` command line. Each command group lives in its own module and is mounted here."""

from __future__ import annotations

import typer

from service import cli_audit, cli_pixelize, cli_service

app = typer.Typer(
    name="dpstream",
    help="Differentially private pixelization of camera streams.",
    no_args_is_help=True,
    add_completion=False,
)

cli_pixelize.register(app)
cli_service.register(app)
cli_audit.register(app)


def main() -> None:  # pragma: no cover - thin entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
