"""The `dpstream` command line. Each command group lives in its own module and is mounted here."""

from __future__ import annotations

import gc
import sys
import threading
import traceback

import typer

from service import cli_audit, cli_pixelize, cli_service

app = typer.Typer(
    name="dpstream",
    help="Differentially private pixelization of camera streams.",
    no_args_is_help=True,
    add_completion=False,
    # a bug's traceback names the frames it passed through, never their variables: a local can be a raw frame,
    # a noise key or a camera URL with its password (typer releases before fastapi/typer#1072, which
    # pyproject admits, printed them by default)
    pretty_exceptions_show_locals=False,
    # and main() prints a bug's traceback itself, redacted: its message may quote a camera URL with its password
    pretty_exceptions_enable=False,
)

cli_pixelize.register(app)
cli_service.register(app)
cli_audit.register(app)


@app.command("precompile")
def precompile() -> None:
    """Compile dp's CPU kernels into Numba's on-disk cache, so that no process compiles at its start.

    Every kernel a worker or the API can use, into NUMBA_CACHE_DIR when it is set and writable. Run it at
    image build: see docs/deploy.md."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dp.precompile import cache_location
    from dp.precompile import precompile as run

    console = Console(stderr=True)
    where = cache_location()
    if where is None:  # nothing would be kept: fail the image build rather than ship no cache
        typer.echo("error: Numba can write its cache nowhere (NUMBA_CACHE_DIR, dp's __pycache__, the user's "
                   "cache directory): make NUMBA_CACHE_DIR writable for this user", err=True)
        raise typer.Exit(1)
    console.print(f"compiling dp's CPU kernels into {where} (minutes on a cold cache)")
    started = time.perf_counter()
    if console.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            task = bar.add_task("", total=None)
            report = run(lambda done, total, label: bar.update(task, completed=done, total=total, description=label))
    else:  # a build log: one line per step
        report = run(lambda done, total, label: console.print(
            f"[{time.perf_counter() - started:6.1f} s] {done}/{total} {label}", highlight=False))
    console.print(f"{report.compiled} kernel signatures compiled, {report.loaded} loaded from the cache, "
                  f"in {report.seconds:.1f} s")


def _known_error(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for an error the user can fix, None for a bug (which keeps its
    traceback). dpstream's own errors are written to be shown (credentials redacted); a settings error is
    told by name and reason only, never its value, which may be a token or a URL with a password."""
    from dp.errors import ConfigError, DpstreamError

    if isinstance(exc, ConfigError):
        return 2, str(exc)
    if isinstance(exc, DpstreamError):
        return 1, str(exc)
    # pydantic's ValidationError by name: importing pydantic here would slow every command's start
    if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
        from service.settings import env_name

        fields = "; ".join(f"{env_name(str(e['loc'][0])) if e['loc'] else 'settings'}: {e['msg']}"
                           for e in exc.errors())
        return 2, f"invalid settings (environment or options): {fields}"
    return None


def _print_redacted(exc: BaseException, title: str) -> None:
    from service.redaction import redact_text

    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(f"{title}\n{redact_text(text)}")
    sys.stderr.flush()


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """threading's hook for a thread that died of an exception, with the traceback redacted."""
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    _print_redacted(args.exc_value, f"Exception in thread {name}:")


def main() -> None:  # pragma: no cover - thin entry point
    """The `dpstream` console script. A bug's traceback (of this thread or any other) is printed with every
    credential redacted, never its local variables."""
    threading.excepthook = _thread_died
    try:
        app()
    except Exception as exc:
        known = _known_error(exc)
        if known is None:
            _print_redacted(exc, "dpstream stopped on an unexpected error (a bug: please report it):")
            raise SystemExit(1) from None
        typer.echo(f"error: {known[1]}", err=True)
        raise SystemExit(known[0]) from None
    finally:
        # The process is ending: skip the interpreter's last garbage collection, a walk over every object
        # Numba and LLVM made (0.1 to 0.15 s at the end of every command). Every file, pipeline and server a
        # command opened is closed by then, and the OS takes back the memory.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
