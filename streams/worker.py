"""The per-camera worker: ingest, bounded queue, release-rate gate, ledger gate, ``Pixelizer.release``, sinks.

Stable interface (``service/`` builds on these names)::

    worker = CameraWorker(
        "lobby", "rtsp://user:pw@cam/stream", spec,        # spec: dp.PixelizeSpec
        ledger=Ledger(eps_window=4.0, window_s=10.0),       # None: no budget (tests and benchmarks only)
        release_fps=5.0,                                    # at most this many releases per second
        sinks=[store_release, restream_sink, keep_latest],  # each: Callable[[dp.Release], None]
        on_health_change=publish,                           # Callable[[CameraHealth, CameraHealth], None]
    )
    worker.start()
    worker.update_config(spec=new_spec, release_fps=2.0)   # at the next frame
    ledger.reconfigure(eps_window=8.0, window_s=10.0)       # a new budget: the spends made stay counted
    worker.health   -> CameraHealth(state=HealthState.STREAMING, reason="...", since_s=...)
    worker.stats    -> WorkerStats(frames_ingested=..., frames_released=..., ...)
    worker.stop()   # idempotent; joins every thread; the pipeline is back in NULL; health DISABLED

Flow of one frame: GStreamer decodes it; the source's pull thread appends it to a bounded queue (the
oldest frame is dropped and counted when the queue is full). The release thread takes frames in order and:

1. rate gate: releases at most ``release_fps`` frames per second of capture time (others are skipped);
2. ledger gate: ``ledger.try_spend(t, spec.eps_frame_exact)``; a frame that would overspend is not released and
   the sinks get the *previous* release again (the same object: free post-processing; sinks that store
   releases can recognise a repeat by its unchanged ``frame_index``);
3. ``Pixelizer.release``; then every sink is called with the one release (the frame is released once).

Sinks run on the release thread, in order; a slow sink slows releases and so causes queue drops, which is
counted. A sink's exception is logged (never with payload) and counted in ``stats.sink_errors``.

Health (``streams.health.HealthState``) is derived on a supervisor thread from the GStreamer bus and frame
arrivals: STARTING while dp's kernels compile (the pipeline starts after that) and until the first frame,
STREAMING, STALLED after ``stall_timeout_s`` without a frame (the pipeline is rebuilt after another
``stall_timeout_s``; with ``queue_policy="block"`` the time the source waits for room in the queue does not
count: a slow release is not a silent source), RECONNECTING while retrying with exponential backoff and
jitter, FAILED for errors retrying will not fix soon (malformed URL: no retry; refused credentials, missing
stream, unsupported codec, a video file whose attempts ended three times in a row before its first frame:
retried every ``failed_retry_s``), DISABLED after ``stop()``. A camera's decode errors pass (the network, the
camera), so they are retried with backoff however often they recur; a corrupt file fails the same way every
time. A file that plays to its end (or to an error, after frames) is played again. The backoff starts again
from ``reconnect_backoff_s`` only after a stream that delivered frames for ``backoff_reset_s``: a camera that
drops sooner, every time, is retried ever more slowly up to ``reconnect_backoff_max_s``. A camera whose frames
all reach the pipeline but are all rejected by dp (a layout map of another shape than the frames, say) for
``stall_timeout_s`` is FAILED with dp's reason, which names the setting to change; the pipeline keeps running,
and the first frame released after a config change makes it STREAMING again. An unexpected error in the
supervisor itself is logged (redacted) and the camera reconnects after ``reconnect_backoff_max_s``. Every
reason is redacted. ``on_health_change(old, new)`` is called on the supervisor thread (and on the caller's
thread by ``stop()``).

Compiling: dp's kernels are compiled (or loaded from Numba's on-disk cache) before the pipeline starts,
on a compile thread of their own. A compile cannot be interrupted, and on a cold cache it takes tens of
seconds, so ``stop()`` does not wait for it: it returns at once, and the compile thread finishes the one
warm-up release it is in (on black scratch frames, delivering nothing and touching no state of the worker)
and then ends. At interpreter exit, a dp call in flight on any worker thread (that compile, or a release
compiling a new kind of frame) is waited for and no new one starts, because an interpreter finalized under
a compile can crash; what was compiled is in Numba's cache for the next start.

Timestamps: ``Release.timestamp_s`` is the capture time in Unix seconds (files and test patterns are
played in real time, like a camera; with ``realtime=False`` they carry media time instead, continued across
loops and restarts: each time the file starts again, its time goes on one frame interval after the last
frame's, so the rate gate and the ledger see one long video). For RTSP the capture time is when the frame's
packets reached this host (the camera's own clock is not trusted). The ledger is charged at the capture
time, kept monotonic.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from dp import Ledger, Pixelizer, PixelizeSpec, Release
from dp.errors import ConfigError, DpstreamError

from .frame import Frame, i420_for, pixel_format_for
from .health import CameraHealth, HealthState, HealthTracker
from .ingest import FrameSource
from .redact import redact_text, redact_url, url_secrets
from .sources import parse_source

__all__ = ["CameraHealth", "CameraWorker", "HealthState", "WorkerStats"]

Sink = Callable[[Release], None]
_LATENCY_WINDOW = 1024  # recent capture-to-release latencies kept for percentiles
_FILE_ATTEMPTS = 3  # a video file whose attempts end this often in a row before any frame is FAILED
_EXIT_WAIT_S = 300.0  # at exit, the longest wait for dp calls in flight (a cold compile: tens of seconds)
_RETRY_LOG_EVERY_S = 60.0  # a retry for the same reason as the last one logged is at INFO once this often
_ATTEMPTS_CAP = 10_000  # failed attempts in a row count up to this (the backoff tops out long before)
log = logging.getLogger(__name__)


def reconnect_delay_s(
    attempt: int, base_s: float, max_s: float, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """The wait before retry number ``attempt`` (1: the first): exponential backoff with jitter.

    The ceiling starts at ``base_s`` and doubles with each attempt until it reaches ``max_s``; the delay is
    ``uniform(ceiling / 2, ceiling)``, so cameras that failed together do not all retry together. Any attempt
    count works: the doubling stops at ``max_s`` (``base_s * 2 ** (attempt - 1)`` as an int-to-float conversion
    overflowed after 1,024 attempts and killed the supervisor).
    """
    ceiling = base_s
    for _ in range(max(attempt - 1, 0)):  # a lazy range: ends after log2(max_s / base_s) rounds at most
        if ceiling >= max_s:
            break
        ceiling *= 2.0
    ceiling = min(max_s, ceiling)
    return uniform(0.5 * ceiling, ceiling)


class _MediaTimeline:
    """Media time (files and test patterns with ``realtime=False``) continued across loops and restarts.

    Every pipeline's media time starts again at 0: a file played again would hand the rate gate and the
    ledger times they have seen already (the gate skipped every frame of the next loop, the ledger's clock
    stood still). So each frame's time is its media time plus an offset, set at the first frame of each
    pipeline (and at a frame whose time would go back: a discontinuity in the file) so that this frame comes
    one frame interval after the latest time handed out, as if the loops were one longer video. Time handed
    out never goes back, and never runs ahead of the video's own: within a pipeline it moves as the media
    time does, and from one pipeline to the next by the smallest interval seen between two frames of one
    pipeline (0 before one is seen), so no window of the ledger ends sooner than the video says. Used on the
    pull thread only.
    """

    def __init__(self) -> None:
        self._offset_s = 0.0
        self._last_s: float | None = None  # the latest time handed out
        self._prev_raw_s: float | None = None  # the previous frame's media time, in the same pipeline
        self._pipeline: object = None
        self._step_s = math.inf  # the smallest positive interval seen between frames of one pipeline

    def place(self, pipeline: object, raw_s: float) -> float:
        """The time of a frame of ``pipeline`` (any token, new for each pipeline) with media time ``raw_s``."""
        restarted = pipeline is not self._pipeline
        if restarted:
            self._pipeline, self._prev_raw_s = pipeline, None
        if self._prev_raw_s is not None and raw_s > self._prev_raw_s:
            self._step_s = min(self._step_s, raw_s - self._prev_raw_s)
        self._prev_raw_s = raw_s
        t_s = raw_s + self._offset_s
        if self._last_s is not None and (restarted or t_s < self._last_s):
            t_s = self._last_s + (0.0 if math.isinf(self._step_s) else self._step_s)
            self._offset_s = t_s - raw_s
        self._last_s = t_s
        return t_s


class _InterpreterExiting(Exception):
    """A dp call was refused because the interpreter is exiting (see :class:`_DpCalls`)."""


class _DpCalls:
    """The dp calls in flight on the workers' threads, so that the interpreter never finalizes under one.

    A dp call cannot be interrupted, and the first one of its kind compiles Numba kernels: tens of seconds on
    a cold cache. A daemon thread still inside LLVM (or inside a kernel) while the interpreter tears down
    can crash the process at exit. So at exit new calls are refused and the ones in flight are waited for.
    The exit hook is registered at the first call, after numba's and llvmlite's own (dp imports numba
    first), so it runs before theirs.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._hooked = False

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, fn: Callable, /, *args, **kwargs):
        """``fn(*args, **kwargs)``; raises :class:`_InterpreterExiting` instead once the interpreter exits."""
        with self._cv:
            if self._closed:
                raise _InterpreterExiting
            if not self._hooked:
                atexit.register(self._drain)
                self._hooked = True
            self._in_flight += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._cv:
                self._in_flight -= 1
                if self._closed:  # only the exit hook ever waits
                    self._cv.notify_all()

    def _drain(self) -> None:
        with self._cv:
            self._closed = True
            if self._in_flight:
                log.info("waiting for %d dp call(s) in flight (compiling dp's kernels) before exiting",
                         self._in_flight)
            if not self._cv.wait_for(lambda: self._in_flight == 0, _EXIT_WAIT_S):
                log.warning("exiting with %d dp call(s) still in flight after %.0f s", self._in_flight,
                            _EXIT_WAIT_S)


_DP_CALLS = _DpCalls()


@dataclass(frozen=True)
class WorkerStats:
    """Counters since ``start()`` and recent rates. Latencies are capture-to-release, in seconds."""

    frames_ingested: int = 0  # decoded frames that reached the queue
    frames_released: int = 0  # fresh releases (each spent eps_frame)
    frames_repeated: int = 0  # frames refused by the ledger (the previous release was re-sent, if any)
    frames_dropped: int = 0  # oldest frames dropped by the full queue (back-pressure)
    frames_skipped: int = 0  # frames not released because of release_fps
    release_errors: int = 0  # frames the pixelizer rejected or that failed (logged; their budget is given back)
    last_release_error: str | None = None  # why the latest one was rejected (public settings and sizes only)
    sink_errors: int = 0  # sink calls that raised (logged)
    reconnects: int = 0  # pipeline rebuilds after an error, end of stream or stall (and file loops)
    fps: float = 0.0  # ingest rate over the last seconds
    release_fps: float = 0.0  # fresh-release rate over the last seconds
    last_release_latency_s: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    width: int | None = None  # size of the last frame
    height: int | None = None
    queue_depth: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _RateMeter:
    """Events per second over a sliding window of monotonic times."""

    def __init__(self, window_s: float = 3.0) -> None:
        self._times: deque[float] = deque()
        self._window_s = window_s

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class CameraWorker:
    """One camera: a decoding pipeline, a release thread and a supervisor thread. See the module docstring.

    Args:
        camera_id: the camera's name (appears in releases and logs).
        source_uri: ``rtsp://`` / ``rtsps://`` URL, video file path or ``test:<pattern>``; never logged
            unredacted.
        spec: the :class:`dp.PixelizeSpec` to release with.
        ledger: the camera's :class:`dp.Ledger`; ``None`` disables budgeting (tests and benchmarks only).
        release_fps: upper bound on fresh releases per second (``math.inf``: every frame).
        sinks: callables receiving each :class:`dp.Release` (store, re-stream, latest frame).
        stall_timeout_s: no frame for this long while streaming: STALLED (rebuild after as long again).
        queue_size: frames buffered between decoding and releasing; the oldest is dropped when full.
        queue_policy: ``"drop-oldest"`` (live cameras: never fall behind) or ``"block"`` (offline files and
            benchmarks: decoding waits for the release thread, nothing is dropped).
        realtime: play files and test patterns at their frame rate, like a camera (default). ``False``
            decodes them as fast as the release thread takes frames (use with ``queue_policy="block"``).
        connect_timeout_s: no first frame this long after (re)starting the pipeline: reconnect.
        reconnect_backoff_s, reconnect_backoff_max_s: exponential backoff bounds (with jitter in [50%, 100%]).
        backoff_reset_s: how long a stream must have delivered frames for the retry after it ends to start
            from ``reconnect_backoff_s`` again; a camera that drops sooner (one that flaps) keeps backing off,
            up to ``reconnect_backoff_max_s``, instead of being reconnected every fraction of a second.
        rng: source of the backoff's jitter (``uniform``); default the ``random`` module.
        failed_retry_s: retry interval in FAILED for refused credentials, missing stream or codec errors.
        transport, latency_ms: RTSP transport (``"tcp"``/``"udp"``) and jitter-buffer latency.
        tls_validate: for ``rtsps://``, validate the camera's certificate (``False``: accept self-signed).
        tls_ca_file: for ``rtsps://``, PEM file of the CA the camera's certificate must chain to.
        channels: 3 (RGB) or 1 (grey); must equal ``spec.channels``.
        backend: dp backend (``"auto"``, ``"cpu"``, ``"cuda"``).
        convert_threads: videoconvert threads per camera (1 suits many cameras per node).
        dp_threads: Numba threads for this camera's releases (numba.set_num_threads is per calling
            thread). 1 suits nodes with several cameras: parallelism comes from the cameras, and OpenMP's
            spinning teams per camera thread would oversubscribe the cores. 0 keeps Numba's default.
        release_nice: how much lower the release thread's scheduling priority is than the rest of the
            process (Linux ``nice``, this thread only; 0, the default, keeps it equal). With 10, libav's
            decoding threads go first when the cores are short: one file decoded as fast as possible
            (``queue_policy="block"``) ran 3 to 5% faster on a 2-core node, but seven live 1080p cameras on
            that node dropped frames and their p99 latency went from about 60 to 120-160 ms
            (docs/benchmarks.md). For offline work, not for live cameras.
        on_health_change: ``callback(old, new)`` with :class:`CameraHealth` snapshots.
    """

    def __init__(
        self,
        camera_id: str,
        source_uri: str,
        spec: PixelizeSpec,
        *,
        ledger: Ledger | None,
        release_fps: float = math.inf,
        sinks: Sequence[Sink] = (),
        stall_timeout_s: float = 5.0,
        queue_size: int = 4,
        queue_policy: str = "drop-oldest",
        realtime: bool = True,
        connect_timeout_s: float = 10.0,
        reconnect_backoff_s: float = 0.25,
        reconnect_backoff_max_s: float = 2.0,
        backoff_reset_s: float = 10.0,
        rng: random.Random | None = None,
        failed_retry_s: float = 30.0,
        transport: str = "tcp",
        latency_ms: int = 50,
        tls_validate: bool = True,
        tls_ca_file: str | None = None,
        channels: int | None = None,
        backend: str = "auto",
        convert_threads: int = 1,
        dp_threads: int = 1,
        release_nice: int = 0,
        on_health_change: Callable[[CameraHealth, CameraHealth], None] | None = None,
    ) -> None:
        if not isinstance(spec, PixelizeSpec):
            raise ConfigError(
                f"camera {camera_id!r}: spec must be a dp.PixelizeSpec, got {type(spec).__name__}"
            )
        channels = spec.channels if channels is None else channels
        if channels != spec.channels:
            raise ConfigError(
                f"camera {camera_id!r}: channels={channels} differs from spec.channels={spec.channels}"
            )
        if queue_size < 1:
            raise ConfigError(f"camera {camera_id!r}: queue_size={queue_size} must be >= 1")
        if queue_policy not in ("drop-oldest", "block"):
            raise ConfigError(
                f"camera {camera_id!r}: queue_policy={queue_policy!r}; use 'drop-oldest' or 'block'"
            )
        for name, value in (
            ("stall_timeout_s", stall_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("reconnect_backoff_s", reconnect_backoff_s),
            ("reconnect_backoff_max_s", reconnect_backoff_max_s),
            ("backoff_reset_s", backoff_reset_s),
            ("failed_retry_s", failed_retry_s),
        ):
            if not value > 0:
                raise ConfigError(f"camera {camera_id!r}: {name}={value!r} must be > 0")
        self.camera_id = str(camera_id)
        self._uri = source_uri
        self._secrets = url_secrets(source_uri) if isinstance(source_uri, str) else ()
        self.source_display = redact_url(str(source_uri))
        self.log = logging.getLogger(f"{__name__}.{self.camera_id}")
        self._release_fps = self._checked_fps(release_fps)
        self._ledger = ledger
        self._sinks = tuple(sinks)
        self._stall_timeout_s = float(stall_timeout_s)
        self._connect_timeout_s = float(connect_timeout_s)
        self._backoff_s = float(reconnect_backoff_s)
        self._backoff_max_s = float(reconnect_backoff_max_s)
        self._backoff_reset_s = float(backoff_reset_s)
        self._rng = rng
        self._failed_retry_s = float(failed_retry_s)
        self._transport = transport
        self._latency_ms = latency_ms
        self._tls_validate = tls_validate
        self._tls_ca_file = tls_ca_file
        self._channels = channels
        self._color = spec.color  # yuv420: the pipeline delivers the decoder's I420 frames as they are
        self._convert_threads = convert_threads
        if dp_threads < 0:
            raise ConfigError(
                f"camera {camera_id!r}: dp_threads={dp_threads} must be >= 0 (0: Numba's default)"
            )
        self._dp_threads = dp_threads
        if not (isinstance(release_nice, int) and 0 <= release_nice <= 19):
            raise ConfigError(f"camera {camera_id!r}: release_nice={release_nice!r} must be an integer from 0 to 19")
        self._release_nice = release_nice
        self._pixelizer = Pixelizer(spec, backend=backend)
        self._spec = spec
        self._pending: dict = {}  # config changes, applied by the release thread at the next frame
        self._config_lock = threading.Lock()

        self._health = HealthTracker(self._health_changed)
        self._user_health_cb = on_health_change
        self._queue: deque[Frame] = deque(maxlen=queue_size)
        self._block_when_full = queue_policy == "block"
        self._realtime = bool(realtime)
        self._is_rtsp = str(source_uri).lower().startswith(("rtsp://", "rtsps://", "rtspt://", "rtspu://"))
        self._queue_cv = threading.Condition()
        self._stop = threading.Event()
        self._dp_ready = threading.Event()  # set once dp's kernels are compiled (see _warm_up)
        self._threads: list[threading.Thread] = []
        self._lifecycle_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._source: FrameSource | None = None

        # counters (written by one thread each; read as a snapshot)
        self._c = dict.fromkeys(
            (
                "ingested",
                "released",
                "repeated",
                "dropped",
                "skipped",
                "release_errors",
                "sink_errors",
                "reconnects",
            ),
            0,
        )
        self._next_index = 0
        self._last_frame_mono = 0.0
        self._producer_waiting = False  # the pull thread holds a frame, waiting for room (queue_policy="block")
        self._media_time = False  # set by the supervisor: frames carry media time, not wall-clock capture time
        self._timeline = _MediaTimeline()
        self._streamed_s = 0.0  # how long the latest pipeline delivered frames (first to last)
        self._last_retry_log: tuple[str, float] | None = None  # (reason, monotonic time) of the last INFO retry
        self._retries_unlogged = 0  # retries at DEBUG since then
        # frames rejected in a row (by dp, or by an error while processing them), with no release between
        self._rejected_run = 0
        self._rejected_first_mono = 0.0
        self._rejected_last_mono = 0.0
        self._rejected_reason = ""
        self._last_size: tuple[int, int] | None = None
        self._ingest_meter = _RateMeter()
        self._release_meter = _RateMeter()
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._stats_lock = threading.Lock()
        self._last_release: Release | None = None
        self._next_due_s: float | None = None
        self._last_ledger_t = -math.inf
        self._last_release_error: str | None = None

    # --- public interface ----------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"CameraWorker({self.camera_id!r}, {self.source_display!r}, state={self.health.state.value!r})"

    @property
    def health(self) -> CameraHealth:
        """The current state with its redacted reason."""
        return self._health.current

    @property
    def stats(self) -> WorkerStats:
        """A consistent snapshot of the counters and rates."""
        now = time.monotonic()
        with self._stats_lock:
            lat = sorted(self._latencies)
            last = self._latencies[-1] if self._latencies else None
            c = dict(self._c)
            release_error = self._last_release_error
            fps = self._ingest_meter.rate(now)
            rfps = self._release_meter.rate(now)
        size = self._last_size
        return WorkerStats(
            frames_ingested=c["ingested"],
            frames_released=c["released"],
            frames_repeated=c["repeated"],
            frames_dropped=c["dropped"],
            frames_skipped=c["skipped"],
            release_errors=c["release_errors"],
            last_release_error=release_error,
            sink_errors=c["sink_errors"],
            reconnects=c["reconnects"],
            fps=fps,
            release_fps=rfps,
            last_release_latency_s=last,
            latency_p50_s=lat[len(lat) // 2] if lat else None,
            latency_p99_s=lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] if lat else None,
            width=size[0] if size else None,
            height=size[1] if size else None,
            queue_depth=len(self._queue),
        )

    def latency_samples_s(self) -> list[float]:
        """The most recent capture-to-release latencies (up to 1024), oldest first, in seconds."""
        with self._stats_lock:
            return list(self._latencies)

    @property
    def last_release(self) -> Release | None:
        """The most recent fresh release (privatized; safe to serve)."""
        return self._last_release

    def start(self) -> None:
        """Start the supervisor and release threads. Returns at once; watch ``health`` for progress."""
        with self._lifecycle_lock:
            if self._stopped:
                raise ConfigError(
                    f"camera {self.camera_id!r}: a stopped worker cannot be restarted; create a new one"
                )
            if self._started:
                return
            self._started = True
        self._health.set(HealthState.STARTING, "preparing the privacy kernels")
        # Not joined by stop(): see "Compiling" in the module docstring.
        threading.Thread(target=self._warm_up, name=f"dpstream-{self.camera_id}-compile", daemon=True).start()
        for target, name in ((self._supervise, "supervisor"), (self._release_loop, "release")):
            thread = threading.Thread(target=target, name=f"dpstream-{self.camera_id}-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop ingesting and releasing; join the worker's threads; leave the pipeline in NULL. Idempotent.

        Returns promptly also while dp's kernels are still compiling: the compile finishes in the background
        and nothing is released (see "Compiling" in the module docstring). ``timeout_s`` bounds each join
        (a sink that blocks longer is left behind).
        """
        with self._lifecycle_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop.set()
        with self._queue_cv:
            self._queue_cv.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout_s)
        source, self._source = self._source, None
        if source is not None:  # the supervisor normally stops it; this covers a join timeout
            source.stop()
        self._health.set(HealthState.DISABLED, "stopped")

    def update_config(
        self,
        spec: PixelizeSpec | None = None,
        release_fps: float | None = None,
    ) -> None:
        """Change the spec (budget, layout) or the release rate from the next frame on.

        The pipeline keeps running. Invalid values raise :class:`dp.ConfigError` here and change nothing.
        The ledger is not swapped here: a new ``Ledger`` would start empty, so the budget spent in the
        current window would be spent again. Change the window budget on the ledger the worker was given,
        ``Ledger.reconfigure``, which keeps its spends.
        """
        changes: dict = {}
        if spec is not None:
            if not isinstance(spec, PixelizeSpec):
                raise ConfigError(f"camera {self.camera_id!r}: spec must be a dp.PixelizeSpec")
            if spec.channels != self._channels or spec.color != self._color:
                raise ConfigError(
                    f"camera {self.camera_id!r}: spec channels={spec.channels}, color={spec.color!r} differ from "
                    f"the pipeline's ({self._channels}, {self._color!r}); create a new worker to change them"
                )
            try:  # refused now, not at the next frame: the backend's limits (CUDA's shared memory)
                self._pixelizer.check_spec(spec)
            except ConfigError as err:
                raise ConfigError(f"camera {self.camera_id!r}: {err}") from None
            changes["spec"] = spec
        if release_fps is not None:
            changes["release_fps"] = self._checked_fps(release_fps)
        with self._config_lock:
            self._pending.update(changes)

    @property
    def spec(self) -> PixelizeSpec:
        return self._spec

    def __enter__(self) -> CameraWorker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- helpers -------------------------------------------------------------------------------
    def _checked_fps(self, fps: float) -> float:
        try:
            value = float(fps)
        except (TypeError, ValueError):
            raise ConfigError(f"camera {self.camera_id!r}: release_fps={fps!r} must be a number") from None
        if not value > 0:
            raise ConfigError(
                f"camera {self.camera_id!r}: release_fps={fps!r} must be > 0 (math.inf: every frame)"
            )
        return value

    def _health_changed(self, old: CameraHealth, new: CameraHealth) -> None:
        self.log.info(
            "camera %s health %s -> %s: %s", self.camera_id, old.state.value, new.state.value, new.reason
        )
        if self._user_health_cb is not None:
            try:
                self._user_health_cb(old, new)
            except Exception:
                self.log.exception("camera %s: on_health_change callback failed", self.camera_id)

    def _redact(self, text: str) -> str:
        return redact_text(text, *self._secrets)

    # --- ingest side (the source's pull thread) ------------------------------------------------
    def _on_frame(self, pipeline: object, frame: Frame) -> None:
        """A frame of ``pipeline`` (a token per pipeline the supervisor starts) from its pull thread."""
        now = time.monotonic()
        self._last_size = (frame.width, frame.height)
        self._last_frame_mono = now  # the source delivered: alive, whether or not the queue has room
        with self._queue_cv:
            if self._block_when_full and len(self._queue) == self._queue.maxlen:
                # back-pressure into GStreamer: the streaming thread waits (stop() wakes it). A slow release
                # is not a stalled source: the supervisor's stall clock stops while this waits.
                self._producer_waiting = True
                try:
                    while len(self._queue) == self._queue.maxlen and not self._stop.is_set():
                        self._queue_cv.wait(0.1)
                finally:
                    self._last_frame_mono = time.monotonic()  # before the flag drops: no false silence
                    self._producer_waiting = False
            if self._media_time:
                t_s = self._timeline.place(pipeline, frame.timestamp_s)
                frame = replace(frame, index=self._next_index, timestamp_s=t_s)
            else:
                frame = replace(frame, index=self._next_index)
            self._next_index += 1
            dropped = len(self._queue) == self._queue.maxlen
            self._queue.append(frame)  # deque(maxlen) drops the oldest
            self._queue_cv.notify()
        with self._stats_lock:
            self._c["ingested"] += 1
            if dropped:
                self._c["dropped"] += 1
            self._ingest_meter.tick(now)

    # --- supervisor thread -------------------------------------------------------------------------
    def _supervise(self) -> None:
        try:
            source_spec = parse_source(self._uri)
        except DpstreamError as exc:
            self._health.set(HealthState.FAILED, self._redact(str(exc)))
            return
        except Exception as exc:  # not a URI parse_source knows how to refuse (not a string, say)
            self._health.set(HealthState.FAILED, self._unexpected(exc, "cannot read the source"))
            return
        is_file = source_spec.kind == "file"
        self._media_time = not (source_spec.is_live or self._realtime)  # as FrameSource stamps its frames
        # Connect only once dp is compiled: a first compile can take tens of seconds, and frames decoded
        # meanwhile would only be dropped.
        while not self._dp_ready.wait(0.1):
            if self._stop.is_set():
                return
        if self._stop.is_set() or _DP_CALLS.closed:  # stopped, or the interpreter exits, during the warm-up
            return
        self._health.set(HealthState.STARTING, f"connecting to {self.source_display}")
        attempt = 0  # attempts since the last stream that lasted backoff_reset_s (it picks the backoff)
        frameless = 0  # a file's attempts in a row that ended before its first frame
        while not self._stop.is_set():
            try:
                attempt, frameless = self._supervise_once(is_file, attempt, frameless)
            except Exception as exc:
                # A bug, or an error of a library nobody translated: the supervisor must outlive it, or health
                # would say RECONNECTING forever with nobody reconnecting. Say so, and try again.
                attempt = min(attempt + 1, _ATTEMPTS_CAP)
                delay = self._backoff_max_s
                reason = self._unexpected(exc, f"internal error, retrying in {delay:g} s")
                self._health.set(HealthState.RECONNECTING, reason)
                self._stop.wait(delay)

    def _unexpected(self, exc: BaseException, what: str) -> str:
        """Log an unexpected exception (redacted, traceback included); return a redacted reason for health."""
        reason = f"{what}: {self._redact(f'{type(exc).__name__}: {exc}')}"
        self.log.error("camera %s: %s\n%s", self.camera_id, reason,
                       self._redact("".join(traceback.format_exception(exc))).rstrip())
        return reason

    def _supervise_once(self, is_file: bool, attempt: int, frameless: int) -> tuple[int, int]:
        """Run one pipeline, then wait as long as its outcome asks. Returns the new (attempt, frameless)."""
        outcome, reason = self._run_pipeline_once()
        if self._stop.is_set():
            return attempt, frameless
        if outcome == "eos-loop":
            attempt = 0  # played to its end: all is well
        elif outcome == "streamed" and self._streamed_s >= self._backoff_reset_s:
            attempt = 1  # it worked for a while: retry fast
        else:
            # a stream that ends within backoff_reset_s (a flapping camera) backs off like a failed attempt
            attempt = min(attempt + 1, _ATTEMPTS_CAP)
        frameless = frameless + 1 if outcome == "error" else 0
        if is_file and frameless >= _FILE_ATTEMPTS:
            # A camera's errors pass (the network, the camera's encoder), a file's come back the same way
            # every time: say so and retry slowly (the file may be replaced), instead of every few seconds.
            outcome = "fatal"
            reason = (f"the file cannot be played ({_FILE_ATTEMPTS} attempts in a row ended before its first "
                      f"frame): {reason}")
        with self._stats_lock:
            self._c["reconnects"] += 1
        if outcome == "eos-loop":
            return attempt, frameless  # a file or clip played to its end: loop it, like a camera that never ends
        if outcome == "fatal":
            self._health.set(HealthState.FAILED, reason)
            delay = self._failed_retry_s
        else:
            self._health.set(HealthState.RECONNECTING, reason)
            uniform = self._rng.uniform if self._rng is not None else random.uniform
            delay = reconnect_delay_s(attempt, self._backoff_s, self._backoff_max_s, uniform)
        self._log_retry(delay, reason)
        self._stop.wait(delay)
        return attempt, frameless

    def _log_retry(self, delay: float, reason: str) -> None:
        """A retry at INFO when its reason is new, or once per ``_RETRY_LOG_EVERY_S`` while it stays the same; at
        DEBUG otherwise. A camera that is down is retried every few seconds for as long as it stays down: one
        line each time would bury every other line (the count is in ``stats.reconnects``)."""
        now = time.monotonic()
        last = self._last_retry_log
        if last is None or last[0] != reason or now - last[1] >= _RETRY_LOG_EVERY_S:
            repeats = self._retries_unlogged
            self._last_retry_log, self._retries_unlogged = (reason, now), 0
            self.log.info("camera %s: retrying in %.2f s (%s)%s", self.camera_id, delay, reason,
                          f"; {repeats} more retries for this reason since the last line" if repeats else "")
        else:
            self._retries_unlogged += 1
            self.log.debug("camera %s: retrying in %.2f s (%s)", self.camera_id, delay, reason)

    def _run_pipeline_once(self) -> tuple[str, str]:
        """Run one pipeline until it fails, ends or stalls. Returns (outcome, redacted reason).

        Sets ``_streamed_s``: how long it delivered frames, from the first to the last.
        """
        self._streamed_s = 0.0
        pipeline = object()  # tells this pipeline's frames from the previous one's (see _MediaTimeline)
        try:
            source = FrameSource(
                self._uri,
                channels=self._channels,
                pixel_format=pixel_format_for(self._color, self._channels),
                transport=self._transport,
                latency_ms=self._latency_ms,
                realtime=self._realtime,
                on_frame=functools.partial(self._on_frame, pipeline),
                convert_threads=self._convert_threads,
                tcp_timeout_s=self._connect_timeout_s,
                tls_validate=self._tls_validate,
                tls_ca_file=self._tls_ca_file,
                thread_name=f"dpstream-{self.camera_id}-ingest",
            )
        except DpstreamError as exc:
            return "fatal", self._redact(str(exc))
        is_file = source.spec.kind != "rtsp"
        self._source = source
        streamed = False
        first_frame_mono: float | None = None
        started = time.monotonic()
        try:
            self._last_frame_mono = 0.0
            source.start()
            while not self._stop.is_set():
                event = source.poll_bus(0.1)
                if event is not None:
                    # frames may have arrived since the last look (a short clip can end within one poll)
                    streamed = streamed or self._last_frame_mono >= started
                    if event.kind == "error":
                        return (
                            "fatal" if event.fatal else ("streamed" if streamed else "error")
                        ), event.reason
                    if event.kind == "eos":
                        if is_file and streamed:
                            return "eos-loop", "end of file"
                        if is_file:  # looping it again at once would only spin
                            return "error", "the source ended before its first frame (no decodable video)"
                        return ("streamed" if streamed else "error"), "the server ended the stream"
                    if event.kind == "warning":
                        self.log.warning("camera %s: %s", self.camera_id, event.reason)
                now = time.monotonic()
                last = self._last_frame_mono
                if last >= started:
                    streamed = True
                    if first_frame_mono is None:
                        first_frame_mono = last
                    # a producer waiting for room in the queue holds a frame: the source is not silent
                    silent_s = 0.0 if self._producer_waiting else now - last
                    if silent_s < self._stall_timeout_s:
                        rejected = self._rejection_failure()
                        if rejected:
                            self._health.set(HealthState.FAILED, rejected)
                        else:
                            self._health.set(
                                HealthState.STREAMING, f"{self._last_size_text()} from {self.source_display}"
                            )
                    elif silent_s < 2 * self._stall_timeout_s:
                        # a fixed reason: the callback fires on change, not on every poll
                        self._health.set(
                            HealthState.STALLED, f"no frame for over {self._stall_timeout_s:g} s"
                        )
                    else:
                        return "streamed", f"no frame for {silent_s:.1f} s; reconnecting"
                elif now - started > self._connect_timeout_s:
                    return "error", f"no frame within {self._connect_timeout_s:.0f} s of connecting"
            return "stopped", ""
        except DpstreamError as exc:
            return "error", self._redact(str(exc))
        finally:
            self._source = None
            source.stop()
            if first_frame_mono is not None:
                self._streamed_s = max(0.0, self._last_frame_mono - first_frame_mono)

    def _rejection_failure(self) -> str:
        """The FAILED reason while every frame given to dp is rejected, for ``stall_timeout_s`` or longer.

        Two rejections at least, and no release between: a single odd frame is no failure. The reason is the
        latest rejection's (public settings and sizes only), so it says what to change; the next release
        clears it, so a config change that fits the frames makes the camera STREAMING again.
        """
        with self._stats_lock:
            run, reason = self._rejected_run, self._rejected_reason
            first, last = self._rejected_first_mono, self._rejected_last_mono
        if run < 2 or last - first < self._stall_timeout_s:
            return ""
        return f"no frame released for over {self._stall_timeout_s:g} s, every one was rejected: {reason}"

    def _note_rejection(self, reason: str) -> None:
        now = time.monotonic()
        with self._stats_lock:
            self._c["release_errors"] += 1
            if self._rejected_run == 0:
                self._rejected_first_mono = now
            self._rejected_run += 1
            self._rejected_last_mono = now
            self._rejected_reason = reason

    def _last_size_text(self) -> str:
        size = self._last_size
        return f"{size[0]}x{size[1]}" if size else "frames"

    # --- release thread ----------------------------------------------------------------------------
    def _apply_pending(self) -> None:
        with self._config_lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        if "release_fps" in pending:
            self._release_fps = pending["release_fps"]
            self._next_due_s = None
        if "spec" in pending:  # checked by update_config against this backend already
            self._pixelizer.update_spec(pending["spec"])
            self._spec = pending["spec"]
        self.log.info("camera %s: configuration updated (%s)", self.camera_id, ", ".join(sorted(pending)))

    def _rate_gate(self, t_s: float) -> bool:
        """True when a frame captured at ``t_s`` may be released under ``release_fps``."""
        if math.isinf(self._release_fps):
            return True
        interval = 1.0 / self._release_fps
        due = self._next_due_s
        # Half an interval of tolerance absorbs capture jitter (30 fps frames are not exactly 1/30 s apart),
        # so release_fps equal to the camera rate keeps every frame; the schedule keeps the mean rate.
        if due is not None and t_s < due - 0.5 * interval:
            return False
        # Advance the schedule by whole intervals (keeps the mean rate), resynchronise after a gap.
        self._next_due_s = t_s + interval if due is None or t_s > due + interval else due + interval
        return True

    def _warm_up(self) -> None:
        """Compile dp's kernels before the first real frame, so it is not dropped while they compile.

        Runs on the compile thread (see "Compiling" in the module docstring). Separate Pixelizers on black
        frames: nothing is delivered, no budget is spent and the camera's own Pixelizer state (the previous
        release, for layout='previous') is untouched. The camera's own spec first, released twice (the
        second release takes an adaptive layout's path from the first), on a frame of 2x2 macro-blocks; a
        spec that frame cannot serve (an operator's layout map) falls back to fixed 16 px cells, which load
        the kernels every layout shares. Between releases it checks for ``stop()``: a stopped worker starts
        no further compile.
        """
        try:
            self._lower_release_priority()  # the release thread's settings: this is its work, done early
            self._limit_dp_threads()
            backend = self._pixelizer.backend
            side = 2 * max(self._spec.block_size, 16)
            # frames arrive as the pipeline delivers them: I420 for yuv420, and for RGB too (dp converts them)
            i420 = "bt709" if pixel_format_for(self._color, self._channels) == "auto" else None
            planar = self._color == "yuv420" or i420 is not None
            shape = (side * 3 // 2, side) if planar else (side, side, self._channels)
            scratch = np.zeros(shape, dtype=np.uint8)
            scratch.flags.writeable = False  # decoded frames are read-only: compile that signature
            fallback = PixelizeSpec(eps_pix=1.0, channels=self._channels, cell_size=16, color=self._color)
            for spec in (self._spec, fallback):
                try:
                    warm = Pixelizer(spec, backend=backend)
                    for _ in range(2):
                        if self._stop.is_set():
                            return
                        _DP_CALLS.run(warm.release, scratch, i420=i420)
                    break
                except _InterpreterExiting:
                    return
                except Exception:
                    self.log.debug("camera %s: warm-up (%s layout) failed", self.camera_id, spec.layout,
                                   exc_info=True)
        finally:
            self._dp_ready.set()  # the supervisor connects once this is set, warm or not

    def _limit_dp_threads(self) -> None:
        if not self._dp_threads:
            return
        try:
            import numba  # dp's engine; the limit applies to this (the release) thread only

            numba.set_num_threads(min(self._dp_threads, numba.config.NUMBA_NUM_THREADS))
        except Exception:
            self.log.debug("camera %s: could not limit Numba threads", self.camera_id, exc_info=True)

    def _lower_release_priority(self) -> None:
        """Linux: nice this thread (only) by release_nice; raising one's own nice needs no privilege."""
        if not self._release_nice or not hasattr(os, "setpriority"):
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self._release_nice)
        except OSError:
            self.log.debug("camera %s: could not lower the release thread's priority", self.camera_id,
                           exc_info=True)

    def _release_loop(self) -> None:
        self._lower_release_priority()
        self._limit_dp_threads()
        # No frame arrives before the compile thread is done: the supervisor starts the pipeline after it.
        while True:
            with self._queue_cv:
                while not self._queue and not self._stop.is_set():
                    self._queue_cv.wait(0.5)
                if self._stop.is_set():
                    return
                frame = self._queue.popleft()
                self._queue_cv.notify_all()  # a producer may be waiting for space (queue_policy="block")
            try:
                self._process(frame)
            except Exception as exc:  # keep the camera alive; never log the frame
                self._unexpected(exc, f"frame {frame.index} could not be processed")
                self._note_rejection("frames could not be processed (an internal error: see the worker's log)")

    def _process(self, frame: Frame) -> None:
        if _DP_CALLS.closed:  # the interpreter is exiting: spend nothing, release nothing
            return
        self._apply_pending()
        t_s = frame.timestamp_s
        if not self._rate_gate(t_s):
            with self._stats_lock:
                self._c["skipped"] += 1
            return
        ledger_t = max(t_s, self._last_ledger_t)  # the ledger needs a monotonic clock
        if self._ledger is not None and not self._ledger.try_spend(ledger_t, self._spec.eps_frame_exact):
            with self._stats_lock:
                self._c["repeated"] += 1
            if self._last_release is not None:
                self._deliver(self._last_release)
            return
        self._last_ledger_t = ledger_t
        charged_t = self._ledger.last_spend_s if self._ledger is not None else None  # a ledger may charge later
        try:
            release = _DP_CALLS.run(
                self._pixelizer.release, frame.array, camera_id=self.camera_id, frame_index=frame.index,
                timestamp_s=t_s, i420=i420_for(frame, self._color),
            )
        except _InterpreterExiting:
            return
        except DpstreamError as exc:
            # Refused for its size or the settings (a layout map of another shape, say): nothing of it
            # exists, so the spend is given back, or a misconfigured camera would burn its whole budget.
            if self._ledger is not None:
                self._ledger.refund(charged_t, self._spec.eps_frame_exact)
            reason = self._redact(str(exc))
            self.log.warning("camera %s: frame %d rejected: %s", self.camera_id, frame.index, reason)
            with self._stats_lock:
                self._last_release_error = reason
            self._note_rejection(reason)
            return
        if self._stop.is_set():
            # stopped while releasing (a first frame of a new kind compiles, and can outlast stop()'s join):
            # nothing leaves after stop(); the spend stays, which errs on the safe side
            return
        with self._stats_lock:
            self._c["released"] += 1
            self._rejected_run = 0  # released: whatever was rejected before, the camera works now
            if self._realtime or self._is_rtsp:  # media timestamps (realtime=False files) have no latency
                self._latencies.append(time.time() - t_s)
            self._release_meter.tick(time.monotonic())
        self._last_release = release
        self._deliver(release)

    def _deliver(self, release: Release) -> None:
        for sink in self._sinks:
            try:
                sink(release)
            except Exception as exc:
                self.log.warning(
                    "camera %s: sink %s failed on frame %d: %s",
                    self.camera_id,
                    getattr(sink, "__name__", type(sink).__name__),
                    release.frame_index,
                    self._redact(type(exc).__name__ + ": " + str(exc)),
                )
                with self._stats_lock:
                    self._c["sink_errors"] += 1
