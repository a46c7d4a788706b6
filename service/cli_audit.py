"""`dpstream audit ...`: runs the audits of attacks/ in their own process.

The service never imports `attacks` (architecture.md: arrows only go down), and the face attack must not
share a process with GStreamer (dlib aborts after `Gst.init()`), so this command execs `python -m attacks`.
"""

from __future__ import annotations

import subprocess
import sys

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "audit",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def audit(ctx: typer.Context) -> None:
        """Privacy audits: `dpstream audit reid ...` and `dpstream audit mechanism ...` (see --help)."""
        rc = subprocess.call([sys.executable, "-m", "attacks", *ctx.args])
        raise typer.Exit(rc)
