"""A bug's traceback never prints a camera's password: the message of an unexpected exception can quote a
URL that no caller redacted (a library's error, a bug), in the main thread or in any other. The real
console entry point runs in a fresh process; the control is typer's own crash output for the same command,
which shows the password, so a harness that could not see it fails too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SECRET = "Hunter2-crash-7"

_SCRIPT = textwrap.dedent(
    """
    import sys
    import threading
    import typer

    url = "rtsp://admin:%s@10.0.0.5/live"
    which, command = sys.argv[1], sys.argv[2]
    if which == "dpstream":
        from service.cli import app, main
    else:  # the control: typer's own crash output
        app = typer.Typer(pretty_exceptions_show_locals=False)
        main = app

    @app.command("boom-for-test")
    def boom() -> None:
        raise RuntimeError("cannot open " + url)

    @app.command("thread-boom-for-test")
    def thread_boom() -> None:
        def run() -> None:
            raise RuntimeError("cannot open " + url)

        t = threading.Thread(target=run, name="puller")
        t.start()
        t.join()

    sys.argv = ["dpstream", command]
    main()
    """
) % SECRET


def _run(which: str, command: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-c", _SCRIPT, which, command], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("command", ["boom-for-test", "thread-boom-for-test"])
def test_the_harness_sees_the_password_in_an_unredacted_crash(command):
    proc = _run("control", command)
    assert SECRET in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("command", ["boom-for-test", "thread-boom-for-test"])
def test_a_crash_of_dpstream_prints_its_traceback_without_the_password(command):
    proc = _run("dpstream", command)
    assert "RuntimeError: cannot open rtsp://***@10.0.0.5/live" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and SECRET not in proc.stderr + proc.stdout
    if command == "boom-for-test":
        assert proc.returncode == 1 and "unexpected error" in proc.stderr
    else:
        assert "Exception in thread puller" in proc.stderr
