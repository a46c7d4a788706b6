"""A bug's traceback never prints local variables: in `dpstream` a local can be a raw frame, a noise key or a
camera URL with its password. Typer's rich tracebacks show locals unless the app turns them off, and the
typer releases pyproject admits differ in their default, so each of our apps must say so itself.

Each case runs a real console entry point in a fresh process, with a command that fails with an unexpected
error while a marker sits in a local variable; the control runs the same command on an app that asks typer
for locals, so a harness that could not see them fails too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

MARKER = "c0ffee-local-0xD15EA5E"

_SCRIPT = textwrap.dedent(
    """
    import sys
    import typer

    which = sys.argv[1]
    if which == "dpstream":
        from service.cli import app, main
    elif which == "attacks":
        from attacks.cli import app
        main = lambda: app(prog_name="dpstream audit")
    else:  # the control: an app that shows locals
        app = typer.Typer(pretty_exceptions_show_locals=True)
        main = app

    @app.command("boom-for-test")
    def boom() -> None:
        raw_frame_bytes = "%s"
        raise RuntimeError("a bug with " + str(len(raw_frame_bytes)) + " bytes in a local")

    @app.command("other-for-test")
    def other() -> None:  # two commands, so the control's app takes a command name like ours
        pass

    sys.argv = ["dpstream", "boom-for-test"]
    main()
    """
) % MARKER


def _run(which: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-c", _SCRIPT, which], capture_output=True, text=True, timeout=120,
                          env=env)


def test_the_harness_sees_locals_when_an_app_shows_them():
    proc = _run("control")
    assert proc.returncode != 0
    assert "RuntimeError" in proc.stderr
    assert MARKER in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("which", ["dpstream", "attacks"])
def test_a_bug_traceback_names_no_local_values(which):
    proc = _run(which)
    assert proc.returncode != 0
    assert "a bug with" in proc.stderr  # the traceback is there: the bug is not hidden
    assert MARKER not in proc.stderr + proc.stdout, (proc.stderr + proc.stdout)[-2000:]
