"""`dpstream pixelize` (images, video files, test patterns, RTSP) and `dpstream stats show|render`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
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

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
console = Console(stderr=True, soft_wrap=True)  # whole lines: error messages stay greppable in logs


class Layout(StrEnum):
    fixed = "fixed"
    map = "map"
    previous = "previous"
    private = "private"


class Backend(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _is_url(path: str) -> bool:
    return "://" in path or path.lower().startswith("test:")


def _is_image(path: str) -> bool:
    """A local image file by its name (an rtsp:// URL ending in .jpg is a camera, not an image)."""
    return not _is_url(path) and Path(path).suffix.lower() in IMAGE_SUFFIXES


def _camera_id(source: str) -> str:
    """The camera id written into each release: the file's name, the test pattern, or the last part of an
    RTSP URL's path (else its host), never its credentials or query (tokens)."""
    if source.lower().startswith("test:"):
        name = source[len("test:"):].split("?", 1)[0] or "ball"
    elif "://" in source:
        from urllib.parse import urlsplit

        from streams.redact import redact_url

        try:
            parts = urlsplit(redact_url(source))
            name = next((seg for seg in reversed(parts.path.split("/")) if seg), "") or (parts.hostname or "")
        except ValueError:
            name = ""
        name = name or "camera"
    else:
        name = Path(source).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:64] or "camera"


def _check_paths(input: str, output: str, stats: str | None) -> None:
    """Refuse names GStreamer cannot take, an output that is a directory or in a missing one, and any two of
    input, output and --stats that are the same file (the input would be overwritten)."""
    named = [("input", input), ("output", output)] + ([("--stats", stats)] if stats else [])
    for what, path in named:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(f"{what} {path.encode('utf-8', 'backslashreplace').decode()!r}: the name is not valid "
                        "UTF-8; rename the file") from None
    for what, path in named[1:]:
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise _fail(f"{what} {path!r} is a directory; give a file name")
        if not os.path.isdir(parent):
            raise _fail(f"{what} {path!r}: directory {parent!r} does not exist")
    local = [(what, os.path.realpath(path)) for what, path in named if not (what == "input" and _is_url(path))]
    for i, (what_a, a) in enumerate(local):
        for what_b, b in local[i + 1:]:
            if a == b:
                raise _fail(f"{what_a} and {what_b} are the same file ({a}); write the output elsewhere")


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


MAX_IMAGE_PIXELS = 1 << 30  # dp takes sides up to 32768; above this, refuse rather than run out of memory


def _to_8bit(im, channels: int) -> np.ndarray:
    """The picture as HxWxC uint8 (C = channels). 16-bit and 32-bit grey are scaled down (Pillow's convert
    clips them at 255, which turned a 16-bit ramp white); everything else is converted by Pillow."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        wide = np.asarray(im)  # mode I holds 16-bit PNGs: 16 significant bits
        grey = np.clip(np.rint(wide) if im.mode == "F" else wide.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], channels, axis=2)
    arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _load_image(path: str, channels: int) -> np.ndarray:
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large is fine, up to the limit
            # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS // 2
            try:
                with Image.open(path) as im:
                    if getattr(im, "n_frames", 1) > 1:
                        raise _fail(f"{path!r} is animated ({im.n_frames} frames); convert it to an .mp4 video")
                    # as a viewer shows it (EXIF orientation)
                    return np.ascontiguousarray(_to_8bit(ImageOps.exif_transpose(im), channels))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except Image.DecompressionBombError:
        raise _fail(f"image {path!r} has more than {MAX_IMAGE_PIXELS:,} pixels") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise _fail(f"cannot read image {path!r}: {exc}") from None


def save_image(path: str, frame: np.ndarray) -> None:
    """Write `frame` as the image `path` (format from its suffix). It is written beside `path` and renamed
    onto it once complete and on disk, so a failed write leaves no truncated image over a good one."""
    from PIL import Image

    from streams.writer import PartFile

    suffix = Path(path).suffix.lower()
    if suffix == ".pgm" and frame.shape[2] != 1:
        raise _fail(f"{path!r}: a .pgm holds grey images; add --gray or write .ppm or .png")
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None:
        raise _fail(f"cannot write {path!r}: this Pillow cannot write {suffix} images; write .png or .jpg")
    try:
        with PartFile(path) as part:  # removed again unless committed
            with open(part.path, "wb") as fh:
                Image.fromarray(frame[:, :, 0] if frame.shape[2] == 1 else frame).save(fh, format=image_format)
            part.commit()
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot write {path!r}: {getattr(exc, 'strerror', None) or exc}") from None


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
        try:
            kwargs["cell_sizes"] = tuple(int(s) for s in cell_sizes.split(","))
        except ValueError:
            raise _fail(f"--cell-sizes {cell_sizes!r}: give comma-separated integers such as 4,8,16,32") from None
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
        layout_map: str | None = typer.Option(None, help="FILE: a JSON grid of cell sizes, one per macro-block, "
                                              "row-major (--layout map)."),
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
        tls_ca_file: str | None = typer.Option(
            None, help="rtsps:// cameras: the PEM file of the CA their certificate must chain to (default: env "
            "DPSTREAM_TLS_CA_FILE, else the system's roots)."),
        dp_threads: int = typer.Option(
            0, min=0, help="CPU threads per release (0: all cores for an image, 1 for video, where GStreamer's "
            "decoder and encoder need the other cores)."),
    ) -> None:
        """Privatize an image or a video: region-adaptive, differentially private pixelization."""
        _check_paths(input, output, stats)
        if input.lower().startswith("test:") and frames is None and duration is None:
            raise _fail(f"{input!r}: a test pattern never ends; give --frames or --duration")
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
            rel = px.release(frame, camera_id=_camera_id(input), frame_index=0)
            if stats:
                try:
                    with _stats_writer(stats) as sw:
                        sw.write(rel)
                except OSError as exc:
                    raise _fail(f"cannot write --stats {stats!r}: {exc.strerror or exc}") from None
            save_image(output, rel.reconstruct())
            console.print(_guarantee(spec, 1, ledger))
            return
        if Path(output).suffix.lower() != ".mp4":
            raise _fail(f"a video input needs an .mp4 output, not {output!r}")
        _set_dp_threads(dp_threads or 1)
        # SIGTERM (a service manager, `timeout`) finishes the files as Ctrl-C does: an .mp4 cut off without
        # its index would not play; both go through _interrupt, so that neither can be lost in a __del__
        _SIGNALLED.clear()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)
        if tls_ca_file is None and input.lower().startswith("rtsps://"):
            from service.settings import get_settings  # only settings.py reads the environment

            tls_ca_file = get_settings().tls_ca_file
        try:
            n, released, ended = _pixelize_video(input, output, px, spec, stats, frames, duration, ledger, quality,
                                                 tls_ca_file=tls_ca_file)
        except DpstreamError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:  # the stats file: disk full, I/O error (the video's errors are IngestError)
            raise _fail(f"cannot write {_display(str(exc.filename or stats))!r}: {exc.strerror or exc}") from None
        except KeyboardInterrupt as exc:  # the files were finished on the way out
            signum = getattr(exc, "signum", signal.SIGINT)
            console.print(f"[yellow]interrupted[/yellow] ({signal.Signals(signum).name}): {output} holds the frames "
                          "released before it" + (f", {stats} their releases" if stats else ""))
            raise typer.Exit(128 + signum) from None
        console.print(_guarantee(spec, released, ledger, frames_total=n))
        if ended:
            console.print(f"[yellow]warning:[/yellow] {ended}")
            raise typer.Exit(1)

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
        if not _is_image(output) and Path(output).suffix.lower() != ".mp4":
            raise _fail(f"render into an image (.png, .jpg) or an .mp4 video, not {output!r}")
        _check_paths(file, output, None)
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
                    _finish_video(writer, output)
            if writer is None:
                raise _fail(f"{file!r} holds no release")
            console.print(f"rendered {count} releases to {output}")
        except DpstreamError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            writing = exc.filename is not None and os.path.abspath(os.fspath(exc.filename)) == os.path.abspath(output)
            raise _fail(f"cannot {'write' if writing else 'read'} {output if writing else file!r}: "
                        f"{exc.strerror or exc}") from None


class _Interrupted(KeyboardInterrupt):
    """A signal that stops `pixelize` as Ctrl-C does; the exit status is 128 + `signum` (143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_SIGNALLED: list[int] = []  # the signals `_interrupt` took, for the frame loop to act on


def _interrupt(signum, _frame) -> None:
    # Raised at whatever Python line runs when the signal lands; if that is a __del__ (a mapped GStreamer
    # buffer's, say), Python prints the exception and drops it, so the frame loop also checks _SIGNALLED
    _SIGNALLED.append(signum)
    raise _Interrupted(signum)


def _stats_writer(path: str):
    from service.statsfile import StatsWriter

    try:
        return StatsWriter(path)
    except OSError as exc:
        raise _fail(f"cannot write --stats {path!r}: {exc.strerror or exc}") from None


def _pixelize_video(input, output, px, spec, stats, max_frames, duration_s, ledger, quality, tls_ca_file=None):
    """(frames read, releases made, why a camera stopped short or ""): the video path of `pixelize`."""
    from streams.files import iter_frames
    from streams.frame import i420_for, pixel_format_for

    writer = None
    stats_writer = _stats_writer(stats) if stats else None
    camera_id = _camera_id(input)
    n = released = 0
    first_pts = last_pts = None
    last: Release | None = None
    pending: list = []
    try:
        with _progress(max_frames) as progress:
            task = progress.add_task(f"pixelizing {_display(input)}", total=max_frames, rate="")
            frames = iter_frames(input, max_frames=max_frames, duration_s=duration_s, channels=spec.channels,
                                 pixel_format=pixel_format_for(spec.color, spec.channels), tls_ca_file=tls_ca_file)
            for frame in frames:
                if _SIGNALLED:  # a signal whose exception a __del__ swallowed
                    raise _Interrupted(_SIGNALLED[0])
                # the ledger is checked before every release, the first included; a refused frame repeats
                # the last release (free post-processing)
                if ledger is None or ledger.try_spend(frame.pts_s, spec.eps_frame_exact):
                    last = px.release(frame.array, camera_id=camera_id, frame_index=frame.index,
                                      timestamp_s=frame.timestamp_s, i420=i420_for(frame, spec.color))
                    released += 1
                    if stats_writer is not None:
                        stats_writer.write(last)
                if writer is not None and (last.width, last.height) != (writer.width, writer.height):
                    raise _fail(f"{_display(input)} changed size from {writer.width}x{writer.height} to "
                                f"{last.width}x{last.height} at frame {frame.index}; an .mp4 holds one size: "
                                f"{output} keeps the {n} frames before it"
                                + (f", {stats} every release" if stats else ""))
                n += 1
                first_pts = frame.pts_s if first_pts is None else first_pts
                last_pts = frame.pts_s
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
        try:
            if writer is not None:
                _finish_video(writer, output)
        finally:
            if stats_writer is not None:
                stats_writer.close()
    if n == 0:
        raise _fail(f"{_display(input)} delivered no frame")
    ended = ""
    if input.lower().startswith(("rtsp://", "rtsps://")):  # a camera ends only when it stops or is cut off
        seen_s = (last_pts - first_pts) if first_pts is not None else 0.0
        if (max_frames is not None and n < max_frames) or (max_frames is None and duration_s is not None
                                                            and seen_s < duration_s - 1.0):
            ended = (f"the camera ended the stream after {n} frames ({seen_s:.1f} s), before "
                     + (f"--frames {max_frames}" if max_frames is not None else f"--duration {duration_s:g}")
                     + f"; {output} holds what arrived")
    return n, released, ended


def _finish_video(writer, output: str) -> None:
    """Close `writer`: the finished video replaces `output`. If it cannot be finished (the muxer never wrote
    its index: disk full, say), the writer removes the unfinished file and `output` keeps what it held; say
    so (DpstreamError)."""
    try:
        with _signals_held():
            writer.close()
    except DpstreamError as exc:
        kept = f"{output} is as it was" if os.path.lexists(output) else f"no {output} was written"
        raise DpstreamError(f"{str(exc).rstrip('.')}; the unfinished video was removed and {kept}") from None


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block is done, then act as they would have: a second Ctrl-C (or a
    SIGTERM after the first) must not cut off the video that the first one is finishing."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: held.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
    if held:
        signal.raise_signal(held[0])


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
    # 240 fps frames are 1/240 s apart to within a nanosecond timestamp: 1/dt may come out a hair above 240
    return 1.0 / dt if dt > 0 and math.isfinite(dt) and 1.0 / dt <= 240.01 else 30.0


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
        "frame_size": ", ".join(sorted({f"{r.width}x{r.height}" for r in releases})),  # all of them, if it changed
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
