"""Privatized video out: a release sink that serves the releases' reconstructions as H.264 over RTSP.

:class:`PrivateMount` is a plain ``Callable[[dp.Release], None]``: give it to
:class:`streams.worker.CameraWorker` as one of its sinks. It accepts nothing but :class:`dp.Release`
objects, so raw camera input can never reach a client. Each RTSP client gets its own encoder (it starts
on a key frame at once, whatever the release rate); nothing is reconstructed or encoded while no client
watches. The latest frame is pushed again every ``keepalive_s`` so players do not time out when releases
are rare (low ``release_fps``, an exhausted budget or a camera that is down). A client that connects before
the camera's first release waits for it up to ``first_release_wait_s`` and is then answered 503 Service
Unavailable (GstRtspServer itself gives up after 20 s).

Calling the sink only records the release and wakes the mount's own thread, which reconstructs and
encodes: a viewer never slows the worker's release path. When encoding falls behind, the video shows the
newest release and skips older ones (``releases_seen - frames_pushed`` grows); the store still gets all.

Created by :meth:`streams.rtsp_server.LocalRtspServer.serve_private`, which mounts it at
``/<camera_id>/private``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from fractions import Fraction

from dp import Release
from dp.errors import ConfigError

from .gst import GLib, Gst, GstRtspServer
from .mapped import filled_buffer
from .writer import EncoderSettings, even_padded, packed_buffer

log = logging.getLogger(__name__)

__all__ = ["PrivateMount"]


_START_POLL_S = 0.02  # how often a client's starting stream is checked for PLAYING
_START_WAIT_S = 30.0  # a client not PLAYING this long after it joined is no longer polled (the keepalive covers it)
# A nominal frame rate in the caps: with framerate=0/1 x264 takes the input as variable-rate and holds one
# frame back (it needs the next timestamp), so every client saw each release one push late and a new client's
# stream could not start on a single release (DESCRIBE answered 503 when no second push came). Timestamps are
# still the appsrc's own (do-timestamp); only x264's rate control assumes this rate, so it is the rate the mount
# pushes at (a constant bitrate gives each frame bitrate/rate bits: at 30/1, a 1 fps camera got 1/30 of them).
_DEFAULT_FPS = 30.0  # the nominal rate when release_fps is not given
_PREPARE_TIMEOUT_S = 20.0  # GstRtspServer answers 503 to a DESCRIBE whose media did not start within this


def _shallow_copy(buf: Gst.Buffer) -> Gst.Buffer:
    """A new buffer with buf's flags and metas, sharing its memory (Gst.Buffer.copy() would only add a
    reference). The flags are looked up here, not at import: a process that touched GStreamer's enums at
    import time saw dlib abort later (the trap attacks/dlib_model.py describes)."""
    flags = Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.META | Gst.BufferCopyFlags.MEMORY
    return buf.copy_region(flags, 0, buf.get_size())


class PrivateMount:
    """An RTSP mount that serves the privatized frames of one camera; call it with each :class:`dp.Release`."""

    def __init__(
        self,
        camera_id: str,
        path: str,
        *,
        encoder: EncoderSettings | None = None,
        keepalive_s: float = 1.0,
        release_fps: float | None = None,
        first_release_wait_s: float = 10.0,
    ) -> None:
        """``release_fps``: the camera's release rate (``CameraWorker(release_fps=...)``); with a constant
        ``encoder.bitrate_kbps`` each frame gets ``bitrate_kbps / max(release_fps, 1 / keepalive_s)`` kbit
        (``None``: 30 fps is assumed). ``first_release_wait_s``: how long a client that connects before the first
        release waits for it before it is answered 503 (0 < s < 20)."""
        if release_fps is not None and not release_fps > 0:
            raise ConfigError(f"private mount {path!r}: release_fps={release_fps!r} must be > 0 (or None)")
        if not 0 < first_release_wait_s < _PREPARE_TIMEOUT_S:
            raise ConfigError(
                f"private mount {path!r}: first_release_wait_s={first_release_wait_s!r} must be within (0, 20) "
                "(GstRtspServer answers 503 itself after 20 s)"
            )
        self.camera_id = camera_id
        self.path = path
        self.encoder = encoder or EncoderSettings(key_int_max=60)
        self.keepalive_s = keepalive_s
        self.first_release_wait_s = first_release_wait_s
        push_fps = max(release_fps or _DEFAULT_FPS, 1 / keepalive_s if keepalive_s > 0 else 0)
        if math.isinf(push_fps):
            push_fps = _DEFAULT_FPS
        rate = Fraction(push_fps).limit_denominator(1001)
        self._framerate = f"{rate.numerator}/{rate.denominator}"  # caps: what x264's rate control assumes
        self._lock = threading.Lock()
        self._appsrcs: list[Gst.Element] = []
        # clients that have not had a frame yet -> when they joined: only these are polled while they start
        self._unfed: dict[Gst.Element, float] = {}
        self._medias: list[GstRtspServer.RTSPMedia] = []  # the clients' media (to end their sessions on removal)
        self._latest: Release | None = None
        self._latest_frame: tuple[Gst.Buffer, Gst.Caps] | None = None  # the reconstruction, made once
        self._last_push_mono = 0.0
        self.releases_seen = 0
        self.frames_pushed = 0
        self.push_failures = 0  # pushes an appsrc refused (flushing before its client's stream starts, or gone)
        self.last_push_result = ""  # that refusal's GStreamer flow name
        self.factory = GstRtspServer.RTSPMediaFactory.new()
        self.factory.set_launch(
            "( appsrc name=src is-live=true format=time do-timestamp=true leaky-type=upstream max-buffers=2 ! "
            f"videoconvert ! video/x-raw,format=I420 ! {self.encoder.x264_description()} ! "
            "rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        self.factory.set_shared(False)  # one encoder per client: every client starts on a key frame
        self.factory.connect("media-configure", self._on_media_configure)
        self._wake = threading.Condition(self._lock)
        self._pending = False  # a release not yet pushed
        self._joined = False  # a client joined: push the latest frame to it (to it alone)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"dpstream-private-{camera_id}", daemon=True)
        self._thread.start()

    @property
    def clients(self) -> int:
        """Number of RTSP clients currently watching."""
        with self._lock:
            return len(self._appsrcs)

    def __call__(self, release: Release) -> None:
        """Sink entry point: serve this release's reconstruction to every watching client."""
        if not isinstance(release, Release):
            # The only way onto a private mount is a dp.Release: raw frames are refused by type.
            raise ConfigError(
                f"private mount {self.path!r} only accepts dp.Release, got {type(release).__name__}"
            )
        with self._lock:
            self.releases_seen += 1
            self._latest = release
            self._latest_frame = None
            if self._appsrcs:  # nobody watches: do not reconstruct or encode
                self._pending = True
                self._wake.notify()

    def medias(self) -> list[GstRtspServer.RTSPMedia]:
        """The media of the clients currently served (one each)."""
        with self._lock:
            return list(self._medias)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the mount's thread and end every client's stream. Idempotent."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            srcs, self._appsrcs = self._appsrcs, []
            unfed = set(self._unfed)
            self._unfed.clear()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        for src in srcs:
            if src in unfed:  # still waiting for a frame: no thread is left to answer it, so answer it now
                self._refuse(src, "the mount was closed")
            else:
                src.emit("end-of-stream")

    def _run(self) -> None:
        """Push each new release (newest first, older ones skipped) and repeat the last one when idle."""
        starting = False  # a client that has had no frame yet was not playing at the last push
        while True:
            with self._lock:
                if starting:
                    self._wake.wait(_START_POLL_S)
                elif not self._pending and not self._closed:
                    self._wake.wait(self._idle_wait_s())
                if self._closed:
                    return
                overdue = self._overdue()
                fresh, self._pending = self._pending, False
                joined, self._joined = self._joined, False
                idle_s = time.monotonic() - self._last_push_mono
                watched = bool(self._appsrcs)
            for src in overdue:
                self._refuse(src, f"no release within first_release_wait_s={self.first_release_wait_s}")
            due = fresh or (self.keepalive_s > 0 and idle_s >= self.keepalive_s)
            if watched and (due or starting or joined):
                try:
                    # A poll for starting clients pushes to those alone: a client that stays out of PLAYING
                    # (paused) must not make every other client encode the same frame at the poll rate.
                    starting = self._push_latest(everyone=due) > 0
                except Exception:  # keep serving; never log frame content
                    starting = False
                    log.exception("private mount %s: could not push a frame", self.path)
            else:
                starting = False

    # --- internals (server thread and release thread) --------------------------------------------
    def _idle_wait_s(self) -> float | None:
        """(lock held) How long the thread may sleep: to the next keepalive, or until a client that waits for
        the first release is due its answer."""
        waits = [self.keepalive_s] if self.keepalive_s > 0 else []
        if self._latest is None and self._unfed:
            waits.append(min(self._unfed.values()) + self.first_release_wait_s - time.monotonic())
        return max(0.0, min(waits)) if waits else None

    def _overdue(self) -> list[Gst.Element]:
        """(lock held) The clients that waited ``first_release_wait_s`` with no release yet (no longer polled)."""
        if self._latest is not None:
            return []
        now = time.monotonic()
        late = [src for src, joined in self._unfed.items() if now - joined >= self.first_release_wait_s]
        for src in late:
            del self._unfed[src]
        return late

    def _refuse(self, src: Gst.Element, reason: str) -> None:
        """Fail a client's starting media now (its DESCRIBE is answered 503) rather than after GstRtspServer's
        20 s."""
        error = GLib.Error.new_literal(Gst.ResourceError.quark(), reason, int(Gst.ResourceError.NOT_FOUND))
        src.post_message(Gst.Message.new_error(src, error, f"private mount {self.path}: {reason}"))
        log.info("private mount %s: %s; the client is answered 503", self.path, reason)

    def _frame_for_latest(self) -> tuple[Gst.Buffer, Gst.Caps] | None:
        with self._lock:
            if self._latest_frame is not None:
                return self._latest_frame
            release = self._latest
        if release is None:
            return None
        if release.channels == 3:  # colour: straight to I420, which the encoder takes unconverted
            he, we = release.height + release.height % 2, release.width + release.width % 2
            caps = Gst.Caps.from_string(
                f"video/x-raw,format=I420,width={we},height={he},framerate={self._framerate},colorimetry=bt601"
            )
            packed = (filled_buffer(release.i420_size, lambda out: release.reconstruct_i420(out=out)), caps)
        else:
            frame = even_padded(release.reconstruct())
            h, w, _ = frame.shape
            caps = Gst.Caps.from_string(f"video/x-raw,format=GRAY8,width={w},height={h},framerate={self._framerate}")
            packed = (packed_buffer(frame), caps)
        with self._lock:
            if self._latest is release:
                self._latest_frame = packed
        return packed

    def _push_latest(self, everyone: bool = True) -> int:
        """Push the latest frame to every client whose stream plays (``everyone=False``: only to those that have
        had no frame yet); the number of clients with no frame yet that are still starting (not pushed)."""
        packed = self._frame_for_latest()
        if packed is None:
            return 0
        frame, caps = packed
        now = time.monotonic()
        with self._lock:
            unfed = dict(self._unfed)
            srcs = list(self._appsrcs) if everyone else [src for src in self._appsrcs if src in unfed]
            if everyone:
                self._last_push_mono = now
        starting = 0
        for src in srcs:
            # A buffer pushed before the client's pipeline plays gets no valid timestamp from do-timestamp
            # (no clock yet); seen as a stream that never delivered a frame. The media goes to PLAYING on its
            # own (a live source needs no preroll), and the frame follows a few milliseconds later.
            if src.get_state(0)[1] != Gst.State.PLAYING:
                if src in unfed and now - unfed[src] < _START_WAIT_S:
                    starting += 1
                continue
            current = src.get_property("caps")
            if current is None or not current.is_equal(caps):
                src.set_property("caps", caps)  # a resolution change re-initialises the encoder
            # a new buffer per push sharing the pixels: each client's appsrc stamps its own timestamps on it
            ret = src.emit("push-buffer", _shallow_copy(frame))
            if ret == Gst.FlowReturn.OK:
                self.frames_pushed += 1
                if src in unfed:
                    with self._lock:
                        self._unfed.pop(src, None)
            else:
                self.push_failures += 1
                self.last_push_result = Gst.flow_get_name(ret)
        return starting

    def _on_media_configure(self, _factory, media) -> None:
        src = media.get_element().get_by_name("src")
        media.connect("unprepared", self._on_media_unprepared, src)
        with self._lock:
            self._appsrcs.append(src)
            self._unfed[src] = time.monotonic()
            self._medias.append(media)
            self._joined = True  # a new client sees the current frame at once (the others get no extra copy)
            self._wake.notify()
        log.info("private mount %s: client connected", self.path)

    def _on_media_unprepared(self, media, src) -> None:
        with self._lock:
            if src in self._appsrcs:
                self._appsrcs.remove(src)
            self._unfed.pop(src, None)
            if media in self._medias:
                self._medias.remove(media)
        log.info("private mount %s: client left", self.path)
