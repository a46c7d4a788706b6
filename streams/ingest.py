"""Decode a source into :class:`Frame` objects: one GStreamer pipeline ending in an appsink.

:class:`FrameSource` owns one pipeline (``source ! decodebin ! videoconvert ! appsink``; for files ``filesrc !
parsebin``, whose video stream it links to ``decodebin``). It works in two
modes:

* pull mode (``on_frame=None``): :meth:`FrameSource.pull` returns the next frame; used by :func:`iter_frames`.
* push mode (``on_frame=callable``): a pull thread calls ``on_frame(frame)`` for every frame (never the
  GStreamer streaming thread, so decoding does not wait for the GIL); used by
  :class:`streams.worker.CameraWorker`, which owns the bounded queue.

Bus messages are not handled by a GLib main loop: the owner polls :meth:`FrameSource.poll_bus`, which
turns errors into :class:`BusEvent` objects with a redacted reason and a verdict (retry or give up).

:func:`iter_frames` is the simple entry point for scripts and the ``dpstream pixelize`` command::

    for frame in iter_frames("rtsp://cam.local/stream", max_frames=300):
        release = pixelizer.release(frame.array, camera_id="cam", frame_index=frame.index,
                                    timestamp_s=frame.timestamp_s)
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from dp.errors import ConfigError, IngestError

from .frame import Frame
from .gst import Gio, GLib, Gst, GstVideo, ensure_init, parse_pipeline, set_state_or_raise, shutdown_pipeline
from .mapped import read_view
from .redact import redact_text, url_secrets
from .sources import TRANSPORTS, SourceSpec, decode_description, parse_source

log = logging.getLogger(__name__)

__all__ = ["BusEvent", "FrameSource", "iter_frames"]


@dataclass(frozen=True)
class BusEvent:
    """Something the pipeline reported. ``kind``: ``"error"`` | ``"eos"`` | ``"warning"`` | ``"playing"``.

    ``fatal`` is True for errors that retrying will not fix (malformed or unknown location, refused
    credentials, unsupported codec, missing plugin). ``reason`` is redacted and safe to publish.
    """

    kind: str
    reason: str = ""
    fatal: bool = False


def _classify_error(err, debug: str | None, secrets: tuple[str, ...], tls: bool = False) -> BusEvent:
    message = err.message or "unknown GStreamer error"
    detail = ""
    if debug:
        # The last debug line carries the useful cause ("Failed to connect. (Connection refused)"). Redacted
        # before it is cut: a URL cut before its '@' would no longer look like one and keep part of its password.
        detail = redact_text(debug.strip().splitlines()[-1].strip(), *secrets)[:200]
    fatal = False
    hint = ""
    if err.matches(Gst.CoreError.quark(), Gst.CoreError.MISSING_PLUGIN) or any(
        err.matches(Gst.StreamError.quark(), code)
        for code in (
            Gst.StreamError.CODEC_NOT_FOUND,
            Gst.StreamError.TYPE_NOT_FOUND,
            Gst.StreamError.WRONG_TYPE,
        )
    ):
        fatal, hint = True, "unsupported codec or container"
        if "No supported stream" in message:
            # rtspsrc set up no stream: select-stream refused every one (no video), or the camera refused
            # every allowed transport; neither is a codec problem
            hint = ("no video stream over the allowed transport (the camera offers only audio or metadata, or "
                    "refuses RTP over TCP: try transport='udp')")
    elif err.matches(Gst.ResourceError.quark(), Gst.ResourceError.NOT_AUTHORIZED):
        fatal, hint = True, "credentials refused"
    elif err.matches(Gst.ResourceError.quark(), Gst.ResourceError.NOT_FOUND):
        fatal, hint = True, "stream not found"
    elif "Failed to connect" in detail:
        # GLib reports a refused TCP connection as "Generic error"; say what it means.
        detail, hint = "", "cannot connect (connection refused or host unreachable)"
        if tls:  # rtspsrc reports a refused certificate the same way
            hint = ("cannot connect or TLS handshake failed (connection refused, host unreachable, or a camera "
                    "certificate that is not trusted: give its CA with tls_ca_file)")
    reason = message if not detail or detail in message else f"{message} ({detail})"
    if hint:
        reason = f"{hint}: {reason}"
    return BusEvent(kind="error", reason=redact_text(reason, *secrets), fatal=fatal)


def _tls_database(ca_file: str | os.PathLike) -> Gio.TlsDatabase:
    """The certificate authorities of ``ca_file`` (PEM) as the only roots an rtsps:// camera may chain to."""
    path = os.fspath(ca_file)
    if not os.path.isfile(path):
        raise ConfigError(f"tls_ca_file {path!r} does not exist (give the PEM file of the camera's CA)")
    try:
        return Gio.TlsFileDatabase.new(path)
    except GLib.Error as exc:
        raise ConfigError(f"tls_ca_file {path!r}: {exc.message}") from None


def _video_streams_only(_rtspsrc, _num: int, caps: Gst.Caps) -> bool:
    """rtspsrc's select-stream: set up a camera's video streams only. Its audio (and metadata) streams are
    never requested, so no sound from the room reaches this process and no bandwidth is spent on it."""
    return caps.get_size() > 0 and caps.get_structure(0).get_string("media") == "video"


# The most an element's first buffer waits for parsebin to take the element in (normally well under 1 ms).
_PARSEBIN_HANDOVER_S = 1.0


def _after_parsebin_took_in(pad: Gst.Pad, _info, connecting_thread: int) -> Gst.PadProbeReturn:
    """Pad probe of :meth:`FrameSource._hold_first_buffer`: in the thread that carries the element's first
    buffer, wait until parsebin has unlocked the element's state, then pass the buffer on and remove the
    probe. A pad that starts flushing (the pipeline stops, or parsebin drops the element) ends the wait."""
    if threading.get_ident() != connecting_thread:  # parsebin's own thread must never wait for itself
        element = pad.get_parent_element()
        deadline = time.monotonic() + _PARSEBIN_HANDOVER_S
        while (element is not None and element.is_locked_state() and not pad.flags & Gst.PadFlags.FLUSHING
               and time.monotonic() < deadline):
            time.sleep(0.0005)
    return Gst.PadProbeReturn.REMOVE


def _weakly(method: Callable, *, when_gone: object = None) -> Callable:
    """``method`` (a bound method of a :class:`FrameSource`) as a handler that holds its object weakly.

    A signal handler or pad probe is owned by the C object it is attached to. Holding the source strongly,
    it closes a cycle the garbage collector cannot see through (source -> pipeline -> parsebin or pad in C ->
    handler -> source): every file source stayed alive with its whole pipeline, decoder and buffer pools
    (about 0.8 MB a run for a 320x240 clip). Once the source is gone the handler returns ``when_gone``.
    """
    ref = weakref.WeakMethod(method)

    def handler(*args):
        bound = ref()
        return when_gone if bound is None else bound(*args)

    return handler


def _file_decoder_threads() -> int:
    """libav frame threads for decoding a file: one more than the cores. Each frame thread waits on the
    previous frame's rows, so with exactly one per core (libav's choice) a core taken by the release
    stalls the chain; a spare thread keeps both cores decoding (+13% for the full path at 1080p on
    2 cores). Files only: every frame thread delays output by one frame, which a live camera would feel
    as latency."""
    return (os.cpu_count() or 1) + 1


def _matrix_name(matrix) -> str | None:
    """GStreamer's Y'CbCr matrix as dp.color names it (dp.color.yuv_to_rgb_coefficients). Looked up when a
    frame arrives, not at import: with GstVideo's enums touched at import time, dlib aborted later in the
    test process, which imports streams while collecting (the dlib trap of attacks/dlib_model.py)."""
    names = {"BT601": "bt601", "BT709": "bt709", "BT2020": "bt2020", "SMPTE240M": "smpte240m", "FCC": "fcc"}
    return next((name for attr, name in names.items() if matrix == getattr(GstVideo.VideoColorMatrix, attr)), None)


@dataclass(frozen=True)
class _I420Geometry:
    """What one set of I420 caps says about its buffers (parsed once per caps, not per frame)."""

    width: int
    height: int
    strides: tuple[int, int, int]
    offsets: tuple[int, int, int]
    colorimetry: str  # "bt709", "bt601-full", ...: the rule that turns these samples into RGB

    @classmethod
    def from_caps(cls, caps: Gst.Caps) -> _I420Geometry:
        info = GstVideo.VideoInfo.new_from_caps(caps)
        if info is None:
            raise IngestError("the decoder delivered frames with caps GStreamer cannot describe")
        # caps without colorimetry get GStreamer's default for their size (BT.709 from HD up, else BT.601)
        matrix = _matrix_name(info.colorimetry.matrix) or ("bt709" if info.height >= 720 else "bt601")
        full = info.colorimetry.range == getattr(GstVideo.VideoColorRange, "0_255")
        return cls(int(info.width), int(info.height), tuple(int(v) for v in info.stride[:3]),
                   tuple(int(v) for v in info.offset[:3]), matrix + ("-full" if full else ""))


def _i420_planes(buf: Gst.Buffer, geo: _I420Geometry) -> tuple[np.ndarray, tuple, tuple]:
    """The buffer's bytes (a read-only view of GStreamer's memory, streams.mapped) and its planes' strides
    and offsets."""
    meta = GstVideo.buffer_get_video_meta(buf)
    if meta is not None:
        strides = tuple(int(meta.stride[i]) for i in range(3))
        offsets = tuple(int(meta.offset[i]) for i in range(3))
    else:  # GStreamer's default packing for these caps
        strides, offsets = geo.strides, geo.offsets
    return read_view(buf), strides, offsets


def _plane(flat: np.ndarray, offset: int, stride: int, rows: int, cols: int) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=(rows, cols), strides=(stride, 1))


def _i420_to_array(buf: Gst.Buffer, geo: _I420Geometry) -> np.ndarray:
    """The (3H/2) x W array of an I420 buffer: packed Y, U, V planes (a view of the decoder's memory; a
    copy only when its planes are padded)."""
    width, height = geo.width, geo.height
    if width % 2 or height % 2:
        raise IngestError(f"a {width}x{height} stream cannot be read as I420 (odd size); release it as RGB "
                          "(color='rgb'; pixelize without --yuv)")
    flat, strides, offsets = _i420_planes(buf, geo)
    hc, wc = height // 2, width // 2
    if strides == (width, wc, wc) and offsets == (0, width * height, width * height + wc * hc):
        return flat[: width * height * 3 // 2].reshape(height * 3 // 2, width)
    out = np.empty(width * height * 3 // 2, dtype=np.uint8)
    pos = 0
    for (rows, cols), stride, offset in zip(((height, width), (hc, wc), (hc, wc)), strides, offsets, strict=True):
        out[pos: pos + rows * cols].reshape(rows, cols)[:] = _plane(flat, offset, stride, rows, cols)
        pos += rows * cols
    out = out.reshape(height * 3 // 2, width)
    out.flags.writeable = False
    return out


def _odd_i420_to_rgb(buf: Gst.Buffer, geo: _I420Geometry) -> np.ndarray:
    """The RGB picture of an odd-sized I420 buffer (chroma planes of ceil(H/2) x ceil(W/2)), by
    dp.color.i420_to_rgb: the luma's last row and column are repeated to an even size, the chroma planes
    already fit it, and the result is cropped back. For the rare streams dp cannot take as I420."""
    from dp.color import i420_to_rgb

    width, height = geo.width, geo.height
    he, we = height + height % 2, width + width % 2
    flat, strides, offsets = _i420_planes(buf, geo)
    packed = np.empty((he * 3 // 2, we), dtype=np.uint8)
    packed[:height, :width] = _plane(flat, offsets[0], strides[0], height, width)
    packed[height:he, :width] = packed[height - 1: height, :width]
    packed[:he, width:we] = packed[:he, width - 1: width]
    chroma = packed[he:].reshape(he, we // 2)
    chroma[: he // 2] = _plane(flat, offsets[1], strides[1], he // 2, we // 2)
    chroma[he // 2:] = _plane(flat, offsets[2], strides[2], he // 2, we // 2)
    out = np.ascontiguousarray(i420_to_rgb(packed, geo.colorimetry)[:height, :width])
    out.flags.writeable = False
    return out


def _buffer_to_array(buf: Gst.Buffer, caps: Gst.Caps, channels: int) -> np.ndarray:
    structure = caps.get_structure(0)
    width = structure.get_value("width")
    height = structure.get_value("height")
    meta = GstVideo.buffer_get_video_meta(buf)
    if meta is not None:
        stride, offset = int(meta.stride[0]), int(meta.offset[0])
    else:
        # GStreamer's default packing: rows aligned to 4 bytes.
        stride, offset = (width * channels + 3) & ~3, 0
    flat = read_view(buf)
    row_bytes = width * channels
    if stride == row_bytes and offset == 0:
        return flat[: height * row_bytes].reshape(height, width, channels)
    rows = np.lib.stride_tricks.as_strided(flat[offset:], shape=(height, row_bytes), strides=(stride, 1))
    out = np.ascontiguousarray(rows).reshape(height, width, channels)
    out.flags.writeable = False
    return out


class FrameSource:
    """One decoding pipeline for one source URI.

    Args:
        uri: ``rtsp://``/``rtsps://`` URL, video file path or ``test:<pattern>[?width=&height=&fps=&live=]``.
        channels: 3 for RGB, 1 for grey (GStreamer delivers luma directly, no RGB round trip).
        pixel_format: ``"rgb"`` (HxWxC frames, the default), ``"i420"``: the decoder's planar YUV 4:2:0
            as it is, a (3H/2) x W frame for ``dp.PixelizeSpec(color="yuv420")`` (no colour conversion at
            all; channels must be 3; even frame sizes), or ``"auto"``: those I420 frames with their
            ``colorimetry``, for an RGB ``dp.Pixelizer`` to release with ``i420=frame.colorimetry`` (it converts
            them to RGB itself, cheaper than videoconvert), and RGB frames when the size is odd.
        transport: ``"tcp"`` or ``"udp"`` for RTSP (``"udp"`` falls back to TCP where the camera refuses UDP).
            An ``rtspt://`` URL always takes TCP, an ``rtspu://`` URL UDP, whatever this says.
        latency_ms: RTSP jitter-buffer latency.
        realtime: pace files and test patterns at their frame rate (a camera stand-in); timestamps then
            become wall-clock capture times. RTSP is always live.
        on_frame: push mode callback, called for every frame from the source's own pull thread (named
            ``thread_name``; joined by :meth:`stop`); it should not block for long.
        convert_threads: threads for videoconvert (0 = one per CPU).
        tcp_timeout_s: RTSP connection timeout.
        tls_validate: for ``rtsps://``, validate the server certificate (``False`` accepts self-signed
            camera certificates: the stream is still encrypted, but the server is not authenticated).
        tls_ca_file: for ``rtsps://``, a PEM file of the certificate authorities the camera's certificate
            must chain to (cameras with a private CA); the system's roots otherwise.
        decoder_threads: for video files, the libav decoder's ``max-threads`` (``None``: one more than
            the CPU cores, so decoding keeps every core busy next to the release; ``0``: libav's own
            choice). RTSP and test patterns keep GStreamer's defaults.
    """

    def __init__(
        self,
        uri: str | os.PathLike,
        *,
        channels: int = 3,
        pixel_format: str = "rgb",
        transport: str = "tcp",
        latency_ms: int = 100,
        realtime: bool = False,
        on_frame: Callable[[Frame], None] | None = None,
        convert_threads: int = 0,
        tcp_timeout_s: float = 10.0,
        max_buffers: int = 4,
        tls_validate: bool = True,
        tls_ca_file: str | os.PathLike | None = None,
        thread_name: str = "dpstream-ingest",
        decoder_threads: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"channels={channels!r}: use 3 (RGB) or 1 (grey)")
        if pixel_format not in ("rgb", "i420", "auto") or (pixel_format != "rgb" and channels != 3):
            raise ConfigError(f"pixel_format={pixel_format!r}: use 'rgb', or 'i420' or 'auto' with channels=3")
        if transport not in TRANSPORTS:
            raise ConfigError(f"transport={transport!r}: use 'tcp' or 'udp'")
        if latency_ms < 0:
            raise ConfigError(f"latency_ms={latency_ms!r} must be >= 0")
        if decoder_threads is not None and decoder_threads < 0:
            raise ConfigError(f"decoder_threads={decoder_threads!r} must be >= 0 (0: libav's own choice)")
        ensure_init()
        self.spec: SourceSpec = parse_source(uri)
        self.channels = channels
        self.pixel_format = pixel_format
        self._secrets = url_secrets(uri) if self.spec.kind == "rtsp" else ()
        self._on_frame = on_frame
        self._wall_clock = self.spec.is_live or realtime
        threads = convert_threads or (os.cpu_count() or 1)
        self.pipeline = parse_pipeline(
            decode_description(self.spec, channels=channels, convert_threads=threads, i420=pixel_format != "rgb")
        )
        src = self.pipeline.get_by_name("src")
        if self.spec.kind == "rtsp":
            src.set_property("location", self.spec.location)
            # UDP falls back to TCP: a camera (or a firewall on the way) that refuses UDP transport would
            # otherwise fail as "no supported stream", which reads like a codec problem and is never retried.
            # rtspt:// and rtspu:// name their transport: rtspsrc tries only what both the URL and `protocols`
            # allow, so transport='tcp' (the default) with rtspu:// left none ("no protocols left", forever)
            if self.spec.transport is not None:
                if self.spec.transport != transport:
                    log.debug("source %s: its scheme sets transport=%r (not %r)", self.display, self.spec.transport,
                              transport)
                protocols = TRANSPORTS[self.spec.transport]
            else:
                protocols = TRANSPORTS[transport] | (TRANSPORTS["tcp"] if transport == "udp" else 0)
            src.set_property("protocols", protocols)
            src.set_property("latency", int(latency_ms))
            src.set_property("tcp-timeout", int(tcp_timeout_s * 1_000_000))
            # UDP: if no packet arrives in this time rtspsrc retries over TCP; keep it short.
            src.set_property("timeout", int(min(tcp_timeout_s, 5.0) * 1_000_000))
            if not tls_validate:
                src.set_property("tls-validation-flags", 0)
            if tls_ca_file is not None:
                src.set_property("tls-database", _tls_database(tls_ca_file))
            src.connect("select-stream", _video_streams_only)
        elif self.spec.kind == "file":
            src.set_property("location", self.spec.location)
            self._decoder_threads = decoder_threads if decoder_threads is not None else _file_decoder_threads()
            # weakly: handlers the pipeline owns must not keep this source (and so the pipeline) alive
            if self._decoder_threads:
                self.pipeline.connect("deep-element-added", _weakly(self._configure_decoder))
            parse = self.pipeline.get_by_name("parse")
            parse.connect("element-added", _weakly(self._hold_first_buffer))
            parse.connect("pad-added", _weakly(self._link_stream))
        self.sink = self.pipeline.get_by_name("sink")
        self.sink.set_property("sync", bool(realtime and self.spec.kind != "rtsp"))
        self.sink.set_property("max-buffers", max_buffers)
        self.sink.set_property("drop", False)
        self.sink.set_property("enable-last-sample", False)
        self._thread_name = thread_name
        self._puller: threading.Thread | None = None
        self._index = 0
        self._geometry: tuple[Gst.Caps, _I420Geometry] | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._refused: BusEvent | None = None  # push mode: a frame this source can never deliver (poll_bus)
        self.last_caps: tuple[int, int] | None = None  # (width, height) of the last frame

    @property
    def display(self) -> str:
        """The source URI with credentials redacted: safe to log."""
        return self.spec.display

    def start(self) -> None:
        """Set the pipeline to PLAYING (asynchronous: errors arrive on the bus)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        log.debug("starting source %s", self.display)
        set_state_or_raise(self.pipeline, Gst.State.PLAYING, f"source {self.display!r}", secrets=self._secrets)
        if self._on_frame is not None:
            self._puller = threading.Thread(target=self._pull_loop, name=self._thread_name, daemon=True)
            self._puller.start()

    def stop(self) -> None:
        """Set the pipeline to NULL and wait for it. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        shutdown_pipeline(self.pipeline)  # flushing the appsink wakes a waiting puller
        if self._puller is not None and self._puller is not threading.current_thread():
            self._puller.join(5.0)
        log.debug("stopped source %s", self.display)

    def _configure_decoder(self, _bin, _sub_bin, element) -> None:
        factory = element.get_factory()
        if factory is not None and factory.get_name().startswith("avdec_") and element.find_property("max-threads"):
            element.set_property("max-threads", self._decoder_threads)

    def _hold_first_buffer(self, _parsebin, element: Gst.Element) -> None:
        """parsebin added ``element`` to try it: its first buffer waits until parsebin has taken it in.

        parsebin drops every error of an element it is still bringing up (gstparsebin.c, connect_pad: an error
        filter from before the element's READY until after its PAUSED, then the element's state is unlocked).
        A demuxer (or parser) that reads the file in pull mode runs its own task from PAUSED on, and on a
        truncated file fails on its first bytes, often before parsebin lifted the filter: the error was lost
        and the attempt waited out the connect timeout. Held until the state is unlocked, the element cannot
        fail before parsebin reports its errors. In push mode the first buffer comes from the thread that
        connected the element, once it is done: the probe just removes itself.
        """
        if not element.is_locked_state():  # not an element parsebin is trying out
            return
        connecting_thread = threading.get_ident()  # this callback runs in the thread that connects it
        for pad in element.sinkpads:
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.PUSH | Gst.PadProbeType.PULL,
                          _after_parsebin_took_in, connecting_thread)

    def _link_stream(self, _parsebin, pad: Gst.Pad) -> None:
        """A file's parsed stream appeared: the first video stream goes to the decoder, any other to a fakesink.

        Left unlinked, another stream would stop the demuxer (not-linked) and at times leave parsebin waiting
        forever; read and dropped, it reaches end-of-stream, where a file without video is reported.
        """
        sink = self.pipeline.get_by_name("dec").get_static_pad("sink")
        caps = pad.get_current_caps() or pad.query_caps(None)
        # image/jpeg: Motion-JPEG, as many cameras record it
        video = caps is not None and not caps.is_empty() and caps.get_structure(0).get_name().startswith(
            ("video/", "image/"))
        if video and not sink.is_linked() and pad.link(sink) == Gst.PadLinkReturn.OK:
            return
        drop = Gst.ElementFactory.make("fakesink", None)
        drop.set_property("sync", False)
        drop.set_property("async", False)
        self.pipeline.add(drop)
        drop.sync_state_with_parent()
        pad.link(drop.get_static_pad("sink"))
        pad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM,
                      _weakly(self._other_stream_event, when_gone=Gst.PadProbeReturn.OK))

    def _other_stream_event(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        event = info.get_event()
        at_end = event is not None and event.type == Gst.EventType.EOS
        if at_end and not self.pipeline.get_by_name("dec").get_static_pad("sink").is_linked():
            err = GLib.Error.new_literal(Gst.StreamError.quark(), "the file has no video stream",
                                         int(Gst.StreamError.WRONG_TYPE))
            parse = self.pipeline.get_by_name("parse")
            parse.post_message(Gst.Message.new_error(parse, err, ""))
        return Gst.PadProbeReturn.OK

    def _sample_to_frame(self, sample: Gst.Sample) -> Frame:
        buf = sample.get_buffer()
        caps = sample.get_caps()
        colorimetry = None
        if self.pixel_format != "rgb":
            if self._geometry is None or not self._geometry[0].is_equal(caps):
                self._geometry = (caps, _I420Geometry.from_caps(caps))
            geo = self._geometry[1]
            if self.pixel_format == "auto" and (geo.width % 2 or geo.height % 2):
                array, fmt = _odd_i420_to_rgb(buf, geo), "rgb"
            else:
                array, fmt, colorimetry = _i420_to_array(buf, geo), "i420", geo.colorimetry
        else:
            array, fmt = _buffer_to_array(buf, caps, self.channels), "rgb" if self.channels == 3 else "gray"
        pts_s = buf.pts / Gst.SECOND if buf.pts != Gst.CLOCK_TIME_NONE else 0.0
        timestamp_s = self._capture_time_s(sample, buf) if self._wall_clock else pts_s
        index = self._index
        self._index += 1
        frame = Frame(index=index, timestamp_s=timestamp_s, array=array, pts_s=pts_s, pixel_format=fmt,
                      colorimetry=colorimetry)
        self.last_caps = (frame.width, frame.height)
        return frame

    def _capture_time_s(self, sample: Gst.Sample, buf: Gst.Buffer) -> float:
        """Wall-clock time at which the buffer was captured, from its running time on the pipeline clock."""
        now_wall = time.time()
        clock = self.pipeline.get_clock()
        if clock is None or buf.pts == Gst.CLOCK_TIME_NONE:
            return now_wall
        segment = sample.get_segment()
        running = segment.to_running_time(Gst.Format.TIME, buf.pts)
        if running == Gst.CLOCK_TIME_NONE or running < 0:
            return now_wall
        age_ns = clock.get_time() - (self.pipeline.get_base_time() + running)
        # A buffer cannot come from the future; a negative age is clock jitter at the source.
        return now_wall - max(age_ns, 0) / Gst.SECOND

    def _pull_loop(self) -> None:
        """Push mode: hand every frame to ``on_frame`` from this thread, never from a streaming thread.

        A Python callback on the streaming thread would make decoding wait for the GIL, which a release
        in another thread may hold for milliseconds; pulled from here, decoding runs ahead (up to
        ``max_buffers`` frames in the appsink) while Python is busy.
        """
        while not self._stopped:
            sample = self.sink.try_pull_sample(100 * Gst.MSECOND)
            if sample is None:
                if self.sink.is_eos():
                    time.sleep(0.05)  # the owner sees EOS on the bus and stops us
                continue
            try:
                frame = self._sample_to_frame(sample)
            except IngestError as exc:
                # a stream this source cannot turn into frames (an odd size as I420): no retry will help; the
                # owner gets it from poll_bus as a fatal error instead of waiting for frames that never come
                self._refused = BusEvent(kind="error", reason=redact_text(str(exc), *self._secrets), fatal=True)
                return
            try:
                self._on_frame(frame)
            except Exception:  # keep pulling; the owner decides what a bad frame means
                log.exception("frame callback failed for source %s", self.display)

    def pull(self, timeout_s: float) -> Frame | None:
        """Pull mode: the next frame, or None when none arrived within ``timeout_s`` or at end of stream."""
        sample = self.sink.try_pull_sample(int(timeout_s * Gst.SECOND))
        if sample is None:
            return None
        return self._sample_to_frame(sample)

    def at_eos(self) -> bool:
        """True once the appsink has seen end-of-stream and every frame was pulled."""
        return bool(self.sink.is_eos())

    def poll_bus(self, timeout_s: float = 0.0) -> BusEvent | None:
        """The next error, end-of-stream, warning or pipeline-PLAYING message, or None after ``timeout_s``."""
        bus = self.pipeline.get_bus()
        mask = (
            Gst.MessageType.ERROR
            | Gst.MessageType.EOS
            | Gst.MessageType.WARNING
            | Gst.MessageType.STATE_CHANGED
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._refused is not None:
                return self._refused
            remaining = max(0.0, deadline - time.monotonic())
            msg = bus.timed_pop_filtered(int(remaining * Gst.SECOND), mask)
            if msg is None:
                return None
            if msg.type == Gst.MessageType.ERROR:
                err, debug = msg.parse_error()
                return _classify_error(err, debug, self._secrets, tls=self.spec.location.startswith("rtsps://"))
            if msg.type == Gst.MessageType.EOS:
                return BusEvent(kind="eos", reason="end of stream")
            if msg.type == Gst.MessageType.WARNING:
                warn, _debug = msg.parse_warning()
                return BusEvent(kind="warning", reason=redact_text(warn.message or "", *self._secrets))
            if msg.type == Gst.MessageType.STATE_CHANGED and msg.src == self.pipeline:
                _old, new, _pending = msg.parse_state_changed()
                if new == Gst.State.PLAYING:
                    return BusEvent(kind="playing")

    def __enter__(self) -> FrameSource:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def iter_frames(
    uri: str | os.PathLike,
    *,
    max_frames: int | None = None,
    duration_s: float | None = None,
    channels: int = 3,
    pixel_format: str = "rgb",
    transport: str = "tcp",
    latency_ms: int = 100,
    realtime: bool = False,
    first_frame_timeout_s: float = 20.0,
    stall_timeout_s: float = 10.0,
    tls_validate: bool = True,
    tls_ca_file: str | os.PathLike | None = None,
    decoder_threads: int | None = None,
) -> Iterator[Frame]:
    """Yield decoded frames of ``uri`` until it ends, ``max_frames`` were yielded or ``duration_s`` passed.

    ``uri``: a video file path (or ``file://``), ``test:<pattern>[?width=W&height=H&fps=F&live=1]`` or an
    ``rtsp://``/``rtsps://`` URL. Files and non-live test patterns decode as fast as possible and carry media
    timestamps (seconds from the start); RTSP and live patterns carry wall-clock capture times.
    ``duration_s`` counts media time for files and test patterns and wall time for live sources. A test
    pattern never ends on its own: give ``max_frames`` or ``duration_s``.

    Every frame is an HxWx3 RGB (or HxWx1 grey with ``channels=1``, or the (3H/2) x W planar YUV 4:2:0 of
    the decoder with ``pixel_format="i420"``, or either with ``"auto"``: see :class:`FrameSource`) read-only
    uint8 array: a view of the decoder's own buffer (:mod:`streams.mapped`), which stays valid, and out of
    the decoder's pool, for as long as the array lives, also after the pipeline is gone (a consumer that keeps
    many frames should keep ``np.array(frame.array)`` copies). Raises
    :class:`dp.ConfigError` for a malformed URI and :class:`dp.IngestError` when the source cannot be opened,
    fails while decoding, or delivers nothing for ``stall_timeout_s`` (``first_frame_timeout_s`` for the
    first frame). The pipeline is back in NULL when the generator is exhausted or closed.
    ``decoder_threads``: as in :class:`FrameSource`.
    """
    if max_frames is not None and max_frames < 0:
        raise ConfigError(f"max_frames={max_frames!r} must be >= 0")
    if duration_s is not None and duration_s <= 0:
        raise ConfigError(f"duration_s={duration_s!r} must be > 0")
    source = FrameSource(
        uri, channels=channels, pixel_format=pixel_format, transport=transport, latency_ms=latency_ms,
        realtime=realtime, tls_validate=tls_validate, tls_ca_file=tls_ca_file, decoder_threads=decoder_threads,
    )
    if source.spec.kind == "test" and max_frames is None and duration_s is None:
        raise ConfigError(
            f"source {source.display!r}: a test pattern never ends; give max_frames or duration_s"
        )
    if max_frames == 0:
        return
    yielded = 0
    started_wall = time.monotonic()
    first_ts: float | None = None
    try:
        source.start()
        last_frame_at = time.monotonic()
        while True:
            frame = source.pull(0.05)
            if frame is None:
                event = source.poll_bus(0.0)
                while event is not None and event.kind in ("warning", "playing"):
                    if event.kind == "warning":
                        log.warning("source %s: %s", source.display, event.reason)
                    event = source.poll_bus(0.0)
                if event is not None and event.kind == "error":
                    raise IngestError(f"source {source.display!r}: {event.reason}")
                if (event is not None and event.kind == "eos") or source.at_eos():
                    return
                limit = first_frame_timeout_s if yielded == 0 else stall_timeout_s
                if time.monotonic() - last_frame_at > limit:
                    raise IngestError(f"source {source.display!r}: no frame for {limit:.0f} s")
                continue
            last_frame_at = time.monotonic()
            if duration_s is not None:
                if source.spec.is_live or realtime:
                    elapsed = time.monotonic() - started_wall
                else:
                    first_ts = frame.pts_s if first_ts is None else first_ts
                    elapsed = frame.pts_s - first_ts
                if elapsed >= duration_s:
                    return
            yield frame
            yielded += 1
            if max_frames is not None and yielded >= max_frames:
                return
    finally:
        source.stop()
