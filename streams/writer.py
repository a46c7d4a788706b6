"""Write (privatized) frames to an H.264 MP4 file, and make synthetic test clips.

``appsrc ! videoconvert ! x264enc ! h264parse ! mp4mux ! filesink``; frames are pushed from Python::

    with H264Mp4Writer("out.mp4", width=1920, height=1080, fps=30) as writer:
        for frame in iter_frames("in.mp4"):
            writer.write(pixelizer.release(frame.array, ...).reconstruct())

The video is written beside the output (``.NAME.XXXXXXXX.part``) and renamed onto it once finished, so an
existing file is replaced only by a complete one; :class:`PartFile` does the same for any other file.

Only privatized frames (``Release.reconstruct()``) should be written outside tests.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from dp.errors import ConfigError, IngestError

from .gst import Gst, GstVideo, ensure_init, parse_pipeline, set_state_or_raise, shutdown_pipeline
from .mapped import filled_buffer
from .sources import TEST_PATTERNS

log = logging.getLogger(__name__)

__all__ = ["EncoderSettings", "H264Mp4Writer", "PartFile", "make_test_clip"]

_SPEED_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)  # fmt: skip
_TUNES = ("zerolatency", "fastdecode", "stillimage", "none")


@dataclass(frozen=True)
class EncoderSettings:
    """x264 settings. Defaults favour speed: ``ultrafast`` + ``zerolatency`` encode 1080p well above 30 fps.

    Rate control: give ``bitrate_kbps`` for constant bitrate, or ``quality`` (x264's CRF-like quantizer,
    0..51, lower is better) for constant quality; the default is quality 23. ``threads=0`` lets x264 pick
    (one per core); ``key_int_max`` is the GOP length in frames (0 = x264's default).
    """

    speed_preset: str = "ultrafast"
    tune: str = "zerolatency"
    bitrate_kbps: int | None = None
    quality: int | None = 23
    key_int_max: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.speed_preset not in _SPEED_PRESETS:
            raise ConfigError(f"speed_preset={self.speed_preset!r}; one of {_SPEED_PRESETS}")
        if self.tune not in _TUNES:
            raise ConfigError(f"tune={self.tune!r}; one of {_TUNES}")
        if self.bitrate_kbps is not None and not 16 <= self.bitrate_kbps <= 200_000:
            raise ConfigError(f"bitrate_kbps={self.bitrate_kbps!r} must be within 16..200000")
        if self.quality is not None and not 0 <= self.quality <= 51:
            raise ConfigError(f"quality={self.quality!r} must be within 0..51")
        if self.key_int_max < 0 or self.threads < 0:
            raise ConfigError("key_int_max and threads must be >= 0")

    def x264_description(self, name: str = "enc") -> str:
        """The ``x264enc ...`` element description for a gst-launch string."""
        parts = [f"x264enc name={name} speed-preset={self.speed_preset} threads={self.threads}"]
        if self.tune != "none":
            parts.append(f"tune={self.tune}")
        if self.bitrate_kbps is not None:
            parts.append(f"pass=cbr bitrate={self.bitrate_kbps}")
        elif self.quality is not None:
            parts.append(f"pass=quant quantizer={self.quality}")
        if self.key_int_max:
            parts.append(f"key-int-max={self.key_int_max}")
        return " ".join(parts)


def _fps_fraction(fps: float | Fraction) -> Fraction:
    value = Fraction(fps).limit_denominator(1001)
    if not 0 < value <= 240:
        raise ConfigError(f"fps={fps!r} must be within (0, 240]")
    return value


def even_padded(frame: np.ndarray) -> np.ndarray:
    """An HxWxC frame padded to even height and width by repeating its last row and column: H.264 4:2:0
    needs even sizes."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def packed_buffer(frame: np.ndarray) -> Gst.Buffer:
    """An HxWxC uint8 frame as one Gst.Buffer in GStreamer's default packed layout (RGB, GRAY8: rows padded
    to a multiple of 4 bytes with zeros), copied once."""
    h, w, c = frame.shape
    row = w * c
    stride = (row + 3) & ~3

    def fill(out: np.ndarray) -> None:
        rows = out.reshape(h, stride)
        rows[:, :row] = frame.reshape(h, row)
        rows[:, row:] = 0

    return filled_buffer(h * stride, fill)


class PartFile:
    """A file written beside ``target`` under a temporary name and renamed onto it only once it is complete.

    ``PartFile(target)`` creates ``.NAME.XXXXXXXX.part`` (hidden, ``XXXXXXXX`` random) in the directory of
    ``target`` with ``O_CREAT | O_EXCL``: no concurrent run can have the name, and the file mode follows
    the umask like any new file (or takes the permission bits, and where allowed the owner, of the file it
    will replace, as writing over it kept them). Write to :attr:`path`, then :meth:`commit`: the file is
    fsynced and ``os.replace``-d onto ``target``, so a reader or a crash sees the old file or the new one,
    never a mix. :meth:`discard` (or leaving the ``with`` block without committing) removes it. A killed
    process leaves the ``.part`` behind and ``target`` as it was. ::

        with PartFile("out.png") as part:
            image.save(part.path, format="PNG")
            part.commit()

    A symlink is followed (the file it points to is replaced, the link stays). An existing ``target`` that
    is not a regular file (``/dev/null``, a FIFO) cannot be replaced: it is written in place.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = os.path.realpath(os.fspath(target))
        try:
            st = os.stat(self.target)
        except FileNotFoundError:
            st = None
        self._in_place = st is not None and not stat.S_ISREG(st.st_mode)
        self._done = self._in_place
        if self._in_place:
            self.path = self.target
            return
        folder, name = os.path.split(self.target)
        stem = name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")  # room for the suffix
        for _ in range(100):
            self.path = os.path.join(folder, f".{stem}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name", self.path)
        try:
            if st is not None:  # what writing over the file kept: its permissions and, where allowed, owner
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(OSError):
                        os.fchown(fd, st.st_uid, st.st_gid)
        except BaseException:
            os.close(fd)
            self.discard()
            raise
        os.close(fd)

    def commit(self) -> None:
        """Flush the written file to disk and put it in place of ``target``; on an OSError it is removed."""
        if self._done:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)  # the data first: a power cut after the rename must not leave an empty file
            finally:
                os.close(fd)
            os.replace(self.path, self.target)
        except BaseException:
            self.discard()
            raise
        self._done = True
        with contextlib.suppress(OSError):  # the rename itself; the output is in place either way
            dir_fd = os.open(os.path.dirname(self.target), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def discard(self) -> None:
        """Remove the temporary file (``target`` stays as it was); nothing once committed. Idempotent."""
        if self._done:
            return
        self._done = True
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # do not mask the error that got us here
            log.warning("could not remove the temporary file %s: %s", self.path, exc.strerror or exc)

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def __repr__(self) -> str:
        return f"PartFile({self.target!r})"


class H264Mp4Writer:
    """Encode HxWx3 RGB (or HxWx1 grey) uint8 frames into an H.264 MP4 file.

    A context manager; :meth:`close` (idempotent) finishes the file (writes the MP4 index) and brings the
    pipeline back to NULL. The video is written to a :class:`PartFile` beside ``path`` and renamed onto
    ``path`` only once :meth:`close` has finished it: until then (and if it cannot be finished, or the
    process is killed) ``path`` keeps what it held before, and a failed close removes the unfinished file.

    Frames get timestamps ``i / fps``. H.264 4:2:0 needs even sizes: an odd ``width`` or ``height`` is
    padded by repeating the last column or row (the file is one pixel larger, ``encoded_width`` x
    ``encoded_height``). :meth:`write` raises :class:`dp.ConfigError` for a frame of the wrong shape and
    :class:`dp.IngestError` when the encoder or the file fails.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float | Fraction,
        *,
        channels: int = 3,
        encoder: EncoderSettings | None = None,
        convert_threads: int = 0,
        input_format: str = "rgb",
    ) -> None:
        ensure_init()
        if width <= 0 or height <= 0:
            raise ConfigError(f"width={width}, height={height}: sizes must be positive")
        if channels not in (1, 3):
            raise ConfigError(f"channels={channels!r}: use 3 (RGB) or 1 (grey)")
        if input_format not in ("rgb", "i420") or (input_format == "i420" and channels != 3):
            raise ConfigError(f"input_format={input_format!r}: use 'rgb', or 'i420' with channels=3")
        self.input_format = input_format
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise ConfigError(f"output {self.path!r}: directory {parent!r} does not exist")
        self.width, self.height, self.channels = width, height, channels
        self.encoded_width, self.encoded_height = width + width % 2, height + height % 2
        self.fps = _fps_fraction(fps)
        self.encoder = encoder or EncoderSettings()
        threads = convert_threads or (os.cpu_count() or 1)
        fmt = "I420" if input_format == "i420" else "RGB" if channels == 3 else "GRAY8"
        caps = (
            f"video/x-raw,format={fmt},width={self.encoded_width},height={self.encoded_height},"
            f"framerate={self.fps.numerator}/{self.fps.denominator}"
        )
        # I420 input (dp.Release.reconstruct_i420: BT.601 limited range) goes to the encoder unconverted
        if input_format == "i420":
            caps += ",colorimetry=bt601"
        convert = "" if input_format == "i420" else f"videoconvert n-threads={threads} ! video/x-raw,format=I420 ! "
        self.pipeline = None
        try:
            self._part = PartFile(self.path)
        except OSError as exc:  # an unwritable directory: the file is created beside its final name
            raise IngestError(f"writer {self.path!r}: cannot create a file in {parent!r}: "
                              f"{exc.strerror or exc}") from None
        try:
            # not block=true: a blocked push-buffer waits forever for room once the pipeline has stopped on an
            # error (a disk that fills mid-stream); _push waits for room itself, watching the bus
            self._max_bytes = 3 * self.encoded_width * self.encoded_height * channels
            self._failure: str | None = None  # the first error the pipeline stopped on
            self.pipeline = parse_pipeline(
                f"appsrc name=src format=time block=false max-bytes={self._max_bytes} caps={caps} ! "
                f"{convert}{self.encoder.x264_description()} ! h264parse ! mp4mux ! filesink name=sink"
            )
            self.pipeline.get_by_name("sink").set_property("location", self._part.path)
            self._src = self.pipeline.get_by_name("src")
            self._i420_size = GstVideo.VideoInfo.new_from_caps(Gst.Caps.from_string(caps)).size
            self._frame_ns = Gst.util_uint64_scale(Gst.SECOND, self.fps.denominator, self.fps.numerator)
            self.frames_written = 0
            self._closed = False
            set_state_or_raise(self.pipeline, Gst.State.PLAYING, f"writer {self.path!r}")
        except BaseException:
            shutdown_pipeline(self.pipeline)
            self._part.discard()
            raise

    def write_i420(self, buffer: np.ndarray) -> None:
        """Append one I420 frame as `dp.Release.reconstruct_i420` writes it (writer made with
        ``input_format="i420"``); it reaches the encoder without a colour conversion."""
        if self._closed:
            raise ConfigError(f"writer {self.path!r} is closed")
        if self.input_format != "i420":
            raise ConfigError(f"writer {self.path!r} takes {self.input_format} frames; open it with input_format='i420'")
        expected = self._i420_size
        arr = np.asarray(buffer)
        if arr.dtype != np.uint8 or arr.ndim != 1 or arr.size != expected:
            raise ConfigError(
                f"writer {self.path!r}: I420 buffer is {arr.dtype} {arr.shape}, expected uint8 ({expected},) "
                f"for {self.width}x{self.height}"
            )
        self._check_bus()
        self._push(filled_buffer(expected, lambda out: np.copyto(out, arr.reshape(-1))))

    def write_release(self, release) -> None:
        """Append the reconstruction of one colour `dp.Release` (writer made with ``input_format="i420"``):
        written by `Release.reconstruct_i420` straight into the encoder's input buffer."""
        if self._closed:
            raise ConfigError(f"writer {self.path!r} is closed")
        if self.input_format != "i420":
            raise ConfigError(f"writer {self.path!r} takes {self.input_format} frames; open it with input_format='i420'")
        if (release.height, release.width, release.channels) != (self.height, self.width, 3):
            raise ConfigError(
                f"writer {self.path!r}: a {release.width}x{release.height} release with {release.channels} "
                f"channel(s), expected a {self.width}x{self.height} colour one"
            )
        self._check_bus()
        self._push(filled_buffer(self._i420_size, lambda out: release.reconstruct_i420(out=out)))

    def write(self, frame: np.ndarray) -> None:
        """Append one frame (HxWxC uint8, C == channels; HxW accepted for grey)."""
        if self._closed:
            raise ConfigError(f"writer {self.path!r} is closed")
        if self.input_format != "rgb":
            raise ConfigError(f"writer {self.path!r} takes I420 buffers (write_i420)")
        arr = np.asarray(frame)
        if arr.ndim == 2 and self.channels == 1:
            arr = arr[:, :, None]
        if arr.dtype != np.uint8 or arr.shape != (self.height, self.width, self.channels):
            raise ConfigError(
                f"writer {self.path!r}: frame is {arr.dtype} {arr.shape}, expected uint8 "
                f"{(self.height, self.width, self.channels)}"
            )
        self._check_bus()
        self._push(packed_buffer(even_padded(arr)))

    def _push(self, buf) -> None:
        buf.pts = Gst.util_uint64_scale(
            self.frames_written * Gst.SECOND, self.fps.denominator, self.fps.numerator
        )
        buf.duration = self._frame_ns
        bus = self.pipeline.get_bus()
        while self._src.get_property("current-level-bytes") >= self._max_bytes:  # the encoder is behind
            msg = bus.timed_pop_filtered(2 * Gst.MSECOND, Gst.MessageType.ERROR)  # returns at once on one
            if msg is not None:
                raise self._failed(msg)
        ret = self._src.emit("push-buffer", buf)
        if ret != Gst.FlowReturn.OK:
            self._check_bus()
            raise IngestError(f"writer {self.path!r}: encoder refused the frame ({ret.value_nick})")
        self.frames_written += 1

    def _check_bus(self) -> None:
        if self._failure is not None:
            raise IngestError(self._failure)
        msg = self.pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            raise self._failed(msg)

    def _failed(self, msg: Gst.Message) -> IngestError:
        """Remember the error the pipeline stopped on (close reports it: no end-of-stream will come)."""
        err, _debug = msg.parse_error()
        self._failure = f"writer {self.path!r}: {err.message}"
        return IngestError(self._failure)

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish the file: send end-of-stream, wait for the muxer to write its index, go to NULL, and put
        the file in place of ``path``. If it cannot be finished, the unfinished file is removed, ``path``
        keeps what it held before, and :class:`dp.IngestError` says why."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self._check_bus()  # a pipeline stopped on an error never reaches end-of-stream: do not wait
                self._src.emit("end-of-stream")
                msg = self.pipeline.get_bus().timed_pop_filtered(
                    int(timeout_s * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR
                )
                if msg is None:
                    raise IngestError(f"writer {self.path!r}: encoder did not finish within {timeout_s:.0f} s")
                if msg.type == Gst.MessageType.ERROR:
                    raise self._failed(msg)
            finally:
                shutdown_pipeline(self.pipeline)  # filesink closes the file
            try:
                self._part.commit()
            except OSError as exc:
                raise IngestError(f"writer {self.path!r}: {exc.strerror or exc}") from None
        except BaseException:  # an error, or a signal while finishing: no unfinished file is left behind
            self._part.discard()
            raise

    def __enter__(self) -> H264Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # do not mask the original error; still leave no pipeline behind
            try:
                self.close()
            except Exception:
                log.warning("writer %s: could not finish the file after an error", self.path)


def make_test_clip(
    path: str | os.PathLike,
    width: int = 320,
    height: int = 240,
    frames: int = 60,
    fps: float | Fraction = 30,
    *,
    pattern: str = "ball",
    encoder: EncoderSettings | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Write a synthetic H.264 MP4 (videotestsrc with moving content) and return its path.

    ``pattern="ball"`` is a ball on black (compresses to almost nothing); any other videotestsrc pattern
    scrolls horizontally, which makes every macro-block change (closer to real footage for benchmarks).
    """
    ensure_init()
    if pattern not in TEST_PATTERNS:
        raise ConfigError(f"pattern={pattern!r}; one of {sorted(TEST_PATTERNS)}")
    if frames <= 0 or width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ConfigError("frames must be > 0 and width, height positive and even")
    rate = _fps_fraction(fps)
    encoder = encoder or EncoderSettings(
        speed_preset="veryfast", tune="none", quality=None, bitrate_kbps=None
    )
    speed = 0 if pattern == "ball" else 4
    pipeline = parse_pipeline(
        f"videotestsrc num-buffers={frames} pattern={pattern} horizontal-speed={speed} ! "
        f"video/x-raw,format=I420,width={width},height={height},framerate={rate.numerator}/{rate.denominator} ! "
        f"{encoder.x264_description()} ! h264parse ! mp4mux ! filesink name=sink"
    )
    out = os.fspath(path)
    pipeline.get_by_name("sink").set_property("location", out)
    try:
        set_state_or_raise(pipeline, Gst.State.PLAYING, f"test clip {out!r}")
        msg = pipeline.get_bus().timed_pop_filtered(
            int(timeout_s * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR
        )
        if msg is None:
            raise IngestError(f"test clip {out!r}: not finished within {timeout_s:.0f} s")
        if msg.type == Gst.MessageType.ERROR:
            err, _debug = msg.parse_error()
            raise IngestError(f"test clip {out!r}: {err.message}")
    finally:
        shutdown_pipeline(pipeline)
    return out
