"""`dpstream audit ...`: runs the audits of attacks/ in their own process.

The service never imports `attacks` (architecture.md: arrows only go down), and the face attack must not
share a process with GStreamer (dlib aborts after `Gst.init()`), so this command execs `python -m attacks`.
"""

from __future__ import annotations

import os
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
        # exec, not a child: this process becomes the audit, so a signal sent to `dpstream` (SIGTERM from a
        # supervisor, Ctrl-C) reaches the audit itself and its exit status is the command's
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "attacks", *ctx.args])
