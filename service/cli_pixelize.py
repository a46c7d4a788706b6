"""`dpstream pixelize` (images, video files, test patterns, RTSP) and `dpstream stats show|render`."""

from __future__ import annotations

import json
import math
import os
from enum import StrEnum
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dp import DpstreamError, Ledger, Pixelizer, PixelizeSpec, Release

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
console = Console(stderr=True)


class Layout(StrEnum):
    fixed = "fixed"
    map = "map"
    previous = "previous"
    private = "private"


class Backend(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _is_image(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _load_image(path: str, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise _fail(f"cannot read image {path!r}: {exc}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def save_image(path: str, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frame[:, :, 0] if frame.shape[2] == 1 else frame).save(path)


def _progress(total: int | None) -> Progress:
    columns = [SpinnerColumn(), TextColumn("[progress.description]{task.description}")]
    if total:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    return Progress(*columns, console=console, transient=False)


def _spec_from_options(eps_pix, m_pixels, gray, layout, cell_size, cell_sizes, block_size, eps_layout, layout_map,
                       yuv=False):
    if yuv and gray:
        raise _fail("--yuv releases Y, U and V; it cannot be combined with --gray")
    kwargs: dict = {
        "eps_pix": eps_pix,
        "m_pixels": m_pixels,
        "channels": 1 if gray else 3,
        "color": "yuv420" if yuv else "rgb",
        "layout": layout.value,
        "cell_size": cell_size,
        "eps_layout": eps_layout,
    }
    if layout is not Layout.fixed:
        kwargs["cell_sizes"] = tuple(int(s) for s in cell_sizes.split(","))
        kwargs["block_size"] = block_size
    if layout is Layout.map:
        if not layout_map:
            raise _fail("--layout map needs --layout-map FILE (a JSON grid of cell sizes, one per macro-block)")
        try:
            kwargs["layout_map"] = json.loads(Path(layout_map).read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read --layout-map {layout_map!r}: {exc}") from None
    return PixelizeSpec(**kwargs)


def register(app: typer.Typer) -> None:
    @app.command("pixelize")
    def pixelize(
        input: str = typer.Argument(..., help="Image, video file, test:<pattern> or rtsp:// URL."),
        output: str = typer.Argument(..., help="Output image (.png/.jpg) or H.264 video (.mp4)."),
        eps_pix: float = typer.Option(1.0, help="Epsilon spent on the pixel values of each frame."),
        m_pixels: int = typer.Option(
            16, help="Threat model: the number of pixel positions protected (the largest thing hidden). "
            "Not a quality knob."),
        layout: Layout = typer.Option(Layout.previous, help="fixed | map | previous | private."),
        cell_size: int = typer.Option(16, help="Cell side in pixels (fixed), or the starting size (adaptive)."),
        cell_sizes: str = typer.Option("4,8,16,32", help="Candidate cell sizes for adaptive layouts."),
        block_size: int = typer.Option(32, help="Macro-block side in pixels for adaptive layouts."),
        eps_layout: float = typer.Option(0.0, help="Epsilon spent on choosing the layout (private only)."),
        layout_map: str | None = typer.Option(None, help="JSON grid of cell sizes per macro-block (map)."),
        gray: bool = typer.Option(False, "--gray", help="Release one grey channel instead of RGB."),
        yuv: bool = typer.Option(
            False, "--yuv", help="Video and RTSP: release the decoder's YUV 4:2:0 as it is (no RGB conversion, "
            "same guarantee, noisier colour: chroma means average a quarter of the samples; even cell sizes)."),
        backend: Backend = typer.Option(Backend.auto, help="auto | cpu | cuda."),
        stats: str | None = typer.Option(None, help="Also write every release (compact noisy statistics) here."),
        frames: int | None = typer.Option(None, min=1, help="Stop after N frames."),
        duration: float | None = typer.Option(None, min=0.001, help="Stop after S seconds of video."),
        eps_window: float | None = typer.Option(
            None, help="Budget per window: frames that would overspend repeat the last release."),
        window_s: float = typer.Option(10.0, help="Window length in seconds for --eps-window."),
        quality: int = typer.Option(23, min=0, max=51, help="x264 quantizer of the output video."),
        dp_threads: int = typer.Option(
            0, min=0, help="CPU threads per release (0: all cores for an image, 1 for video, where GStreamer's "
            "decoder and encoder need the other cores)."),
    ) -> None:
        """Privatize an image or a video: region-adaptive, differentially private pixelization."""
        try:
            spec = _spec_from_options(eps_pix, m_pixels, gray, layout, cell_size, cell_sizes, block_size,
                                      eps_layout, layout_map, yuv)
            px = Pixelizer(spec, backend=backend.value)
            ledger = Ledger(eps_window, window_s) if eps_window is not None else None
            if ledger is not None and spec.eps_frame > ledger.eps_window:
                raise _fail(f"one release costs {spec.eps_frame:g} but --eps-window is {ledger.eps_window:g}; "
                            "lower --eps-pix or raise --eps-window")
        except DpstreamError as exc:
            raise _fail(str(exc)) from None
        if _is_image(input):
            if yuv:
                raise _fail("--yuv is for video and RTSP inputs (decoded YUV); images are released in RGB")
            _set_dp_threads(dp_threads)
            if not _is_image(output):
                raise _fail(f"an image input needs an image output (.png, .jpg), not {output!r}")
            frame = _load_image(input, spec.channels)
            rel = px.release(frame, camera_id=Path(input).stem, frame_index=0)
            save_image(output, rel.reconstruct())
            if stats:
                from service.statsfile import StatsWriter

                with StatsWriter(stats) as sw:
                    sw.write(rel)
            console.print(_guarantee(spec, 1, ledger))
            return
        if Path(output).suffix.lower() != ".mp4":
            raise _fail(f"a video input needs an .mp4 output, not {output!r}")
        _set_dp_threads(dp_threads or 1)
        try:
            n, released = _pixelize_video(input, output, px, spec, stats, frames, duration, ledger, quality)
        except DpstreamError as exc:
            raise _fail(str(exc)) from None
        console.print(_guarantee(spec, released, ledger, frames_total=n))

    stats_app = typer.Typer(help="Inspect files of releases written by `pixelize --stats`.", no_args_is_help=True)
    app.add_typer(stats_app, name="stats")

    @stats_app.command("show")
    def stats_show(
        file: str = typer.Argument(..., help="A stats file (or one release)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Summarise the releases in a stats file."""
        summary = _summarise(file)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        table = Table(title=f"{file}: {summary['n_releases']} releases")
        table.add_column("field")
        table.add_column("value")
        for key in ("camera_id", "frame_size", "channels", "layout_mode", "block_size", "cell_sizes", "m_pixels",
                    "eps_pix", "eps_layout", "eps_per_release", "eps_total", "bytes_total", "raw_bytes_total",
                    "compression", "blocks_by_cell_size"):
            table.add_row(key, str(summary[key]))
        Console().print(table)

    @stats_app.command("render")
    def stats_render(
        file: str = typer.Argument(..., help="A stats file (or one release)."),
        output: str = typer.Argument(..., help="An image (renders --index) or an .mp4 (renders all)."),
        index: int = typer.Option(-1, help="Which release to render into an image (default: the last)."),
        fps: float = typer.Option(30.0, help="Frame rate of a rendered video."),
    ) -> None:
        """Reconstruct the privatized frames from their releases (each cell filled with its mean)."""
        from service.statsfile import read_releases

        if not (math.isfinite(fps) and 0 < fps <= 1000):
            raise _fail(f"--fps {fps}: give a frame rate between 0 and 1000 frames per second")
        try:
            if _is_image(output):
                releases = list(read_releases(file))
                if not releases:
                    raise _fail(f"{file!r} holds no release")
                try:
                    rel = releases[index]
                except IndexError:
                    raise _fail(f"--index {index}: {file!r} holds {len(releases)} releases") from None
                save_image(output, rel.reconstruct())
                return
            writer = None
            count = 0
            try:
                with _progress(None) as progress:
                    task = progress.add_task("rendering", total=None, rate="")
                    for rel in read_releases(file):
                        if writer is None:
                            writer = _video_writer(output, rel, fps, None)
                        _write_release(writer, rel)
                        count += 1
                        progress.update(task, advance=1)
            finally:
                if writer is not None:  # a corrupt release midway still leaves a playable file of the rest
                    writer.close()
            if writer is None:
                raise _fail(f"{file!r} holds no release")
            console.print(f"rendered {count} releases to {output}")
        except DpstreamError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            writing = exc.filename is not None and os.path.abspath(os.fspath(exc.filename)) == os.path.abspath(output)
            raise _fail(f"cannot {'write' if writing else 'read'} {output if writing else file!r}: "
                        f"{exc.strerror or exc}") from None


def _pixelize_video(input, output, px, spec, stats, max_frames, duration_s, ledger, quality):
    from service.statsfile import StatsWriter
    from streams.files import iter_frames
    from streams.frame import i420_for, pixel_format_for

    writer = None
    stats_writer = StatsWriter(stats) if stats else None
    n = released = 0
    last: Release | None = None
    pending: list = []
    try:
        with _progress(max_frames) as progress:
            task = progress.add_task(f"pixelizing {_display(input)}", total=max_frames, rate="")
            frames = iter_frames(input, max_frames=max_frames, duration_s=duration_s, channels=spec.channels,
                                 pixel_format=pixel_format_for(spec.color, spec.channels))
            for frame in frames:
                # the ledger is checked before every release, the first included; a refused frame repeats
                # the last release (free post-processing)
                if ledger is None or ledger.try_spend(frame.pts_s, spec.eps_frame):
                    last = px.release(frame.array, camera_id=Path(str(input)).stem, frame_index=frame.index,
                                      timestamp_s=frame.timestamp_s, i420=i420_for(frame, spec.color))
                    released += 1
                    if stats_writer is not None:
                        stats_writer.write(last)
                n += 1
                elapsed = progress.tasks[0].elapsed or 0.0
                progress.update(task, advance=1, rate=f"{n / elapsed:.1f} fps" if elapsed else "")
                if writer is None:  # the frame rate comes from the first two timestamps
                    pending.append((frame.pts_s, last))
                    if len(pending) < 2:
                        continue
                    writer = _video_writer(output, last, _fps(pending), quality)
                    for _, rel in pending:
                        _write_release(writer, rel)
                    pending.clear()
                else:
                    _write_release(writer, last)
        if writer is None and pending:
            writer = _video_writer(output, pending[0][1], 30, quality)
            for _, rel in pending:
                _write_release(writer, rel)
    finally:
        if writer is not None:
            writer.close()
        if stats_writer is not None:
            stats_writer.close()
    if n == 0:
        raise _fail(f"{_display(input)} delivered no frame")
    return n, released


def _video_writer(output, rel: Release, fps: float, quality: int | None):
    """An H.264 writer for releases like `rel`: RGB releases go in as I420 (no colour conversion)."""
    from streams.files import EncoderSettings, H264Mp4Writer

    # a file, not a live stream: no zerolatency tune (x264's frame threads and lookahead are allowed)
    encoder = EncoderSettings(quality=23 if quality is None else quality, tune="none")
    return H264Mp4Writer(output, rel.width, rel.height, fps, channels=rel.channels, encoder=encoder,
                         input_format="i420" if rel.channels == 3 else "rgb")


def _write_release(writer, rel: Release) -> None:
    if writer.input_format == "i420":
        writer.write_release(rel)  # reconstructed straight into the encoder's buffer
    else:
        writer.write(rel.reconstruct())


def _set_dp_threads(n: int) -> None:
    """Numba threads for dp's CPU kernels (0 keeps Numba's default: one per core)."""
    if n:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _fps(pending: list) -> float:
    dt = pending[1][0] - pending[0][0]
    return 1.0 / dt if dt > 0 and math.isfinite(dt) and 1.0 / dt <= 240 else 30.0


def _display(uri: str) -> str:
    from streams.redact import redact_url

    return redact_url(str(uri))


def _guarantee(spec: PixelizeSpec, released: int, ledger: Ledger | None, frames_total: int | None = None) -> str:
    per = f"each release is {spec.eps_frame:g}-DP for changes of up to {spec.m_pixels} pixel positions"
    if ledger is not None:
        over = (f"; at most {ledger.eps_window:g} per {ledger.window_s:g} s window "
                f"(w-event, {frames_total - released} frames repeated)" if frames_total else "")
        return f"[green]done:[/green] {released} releases; {per}{over}"
    total = f"; a person visible in k frames is covered by k x {spec.eps_frame:g}" if released > 1 else ""
    return f"[green]done:[/green] {released} releases; {per}{total}"


def _summarise(file: str) -> dict:
    from service.statsfile import read_releases

    try:
        releases = list(read_releases(file))
    except DpstreamError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot read {file!r}: {exc}") from None
    if not releases:
        raise _fail(f"{file!r} holds no release")
    first = releases[0]
    blocks: dict[str, int] = {}
    for rel in releases:
        for size, count in rel.summary()["blocks_by_cell_size"].items():
            blocks[size] = blocks.get(size, 0) + count
    bytes_total = sum(len(r.to_bytes()) for r in releases)
    raw = sum(r.height * r.width * r.channels for r in releases)
    return {
        "n_releases": len(releases),
        "camera_id": first.camera_id,
        "frame_size": f"{first.width}x{first.height}",
        "channels": first.channels,
        "layout_mode": first.layout_mode,
        "block_size": first.block_size,
        "cell_sizes": list(first.cell_sizes),
        "m_pixels": first.m_pixels,
        "eps_pix": first.eps_pix,
        "eps_layout": first.eps_layout,
        "eps_per_release": first.eps_spent,
        "eps_total": sum(r.eps_spent for r in releases),
        "bytes_total": bytes_total,
        "raw_bytes_total": raw,
        "compression": f"{raw / bytes_total:.1f}x",
        "blocks_by_cell_size": blocks,
        "releases": [r.summary() for r in releases],
    }


__all__ = ["register", "save_image"]
