"""One camera inside a worker process: a `streams.worker.CameraWorker` plus what the service adds to it.

The adapter keeps the camera's ledger across restarts and takeovers (it is loaded from Redis when the
camera is claimed, and every stored release carries its state), turns config versions into
`update_config` calls or a pipeline restart, hands each fresh release to the publisher exactly once, and
turns worker stats into Prometheus counters.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dp import Ledger, Release
from dp.errors import StoreUnavailable
from service.metrics import FRAMES_DROPPED, FRAMES_INGESTED, RECONNECTS
from service.models import Camera
from service.publisher import PendingRelease, ReleasePublisher
from service.redaction import redact_text
from service.settings import Settings
from service.store import SyncStore

log = logging.getLogger("dpstream.worker.camera")

# changing these needs a new pipeline; everything else applies at the next frame
RESTART_FIELDS = ("source", "channels", "color", "enabled")


class CameraLedger(Ledger):
    """A `dp.Ledger` restored from the store, tolerant of the previous owner's clock running ahead."""

    def try_spend(self, t_s: float, eps: float) -> bool:
        # after a takeover the last spend may carry another machine's clock, a little ahead of ours; charging
        # at the later time is conservative (the spend stays in the window longer) and avoids refusing
        # every frame until our clock catches up
        last = self.last_spend_s
        return super().try_spend(t_s if last is None else max(t_s, last), eps)

    @classmethod
    def for_camera(cls, camera: Camera, state: dict[str, Any] | None) -> CameraLedger:
        if not state:
            return cls(camera.eps_window, camera.window_s)
        ledger = cls.from_dict(state)  # the spends carried over from the previous owner
        ledger.reconfigure(camera.eps_window, camera.window_s)
        return ledger


class StreamsCameraRunner:
    """Runs one camera for the worker process (see `service.worker_process.CameraRunner`)."""

    def __init__(self, camera: Camera, *, settings: Settings, publisher: ReleasePublisher, store: SyncStore,
                 on_change: Callable[[], None] | None = None, rtsp_server=None) -> None:
        self._settings = settings
        self._publisher = publisher
        self._camera = camera
        self._on_change = on_change
        self._lock = threading.Lock()
        self._last_submitted: Release | None = None
        self._seen = {"ingested": 0, "dropped": 0, "skipped": 0, "repeated": 0, "reconnects": 0}
        self._worker = None
        self._failed_reason: str | None = None
        self._rtsp = rtsp_server
        self._last_error: tuple[str, float] | None = None  # (redacted reason, unix time)
        self._private = None  # the /<id>/private re-stream sink, when an RTSP server is given
        camera.to_spec()  # refuse a config dp refuses, before anything starts
        self.ledger = CameraLedger.for_camera(camera, store.load_ledger(camera.id))
        self._store = store
        if camera.enabled:
            self._start_worker(camera)

    @classmethod
    def factory(cls, settings: Settings, publisher: ReleasePublisher, store: SyncStore,
                on_change: Callable[[], None] | None = None, rtsp_server=None):
        return lambda camera: cls(camera, settings=settings, publisher=publisher, store=store,
                                  on_change=on_change, rtsp_server=rtsp_server)

    # --- lifecycle ---------------------------------------------------------------------------------
    def _start_worker(self, camera: Camera) -> None:
        from streams.worker import CameraWorker

        with self._lock:
            self._seen = dict.fromkeys(self._seen, 0)  # a new CameraWorker counts from zero
        if self._rtsp is not None:
            # fed by the publisher once a release is stored, not as a sink of its own (see _store_release)
            self._private = self._rtsp.serve_private(camera.id)
        self._worker = CameraWorker(
            camera.id, camera.source, camera.to_spec(), ledger=self.ledger, release_fps=camera.release_fps,
            sinks=[self._store_release], stall_timeout_s=self._settings.stall_timeout_s,
            channels=camera.channels, backend=self._settings.backend, on_health_change=self._health_changed,
            tls_ca_file=self._settings.tls_ca_file)
        self._worker.start()

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            self._count(worker)
            worker.stop()

    def stop(self) -> None:
        """Stop releasing (no more releases reach the publisher after this returns)."""
        self._stop_worker()
        if self._private is not None:
            self._rtsp.remove(f"/{self._camera.id}/private")
            self._private = None

    def save_state(self) -> None:
        """Store the ledger for whoever claims the camera next (call once queued releases are stored: each
        carries an older snapshot of the ledger)."""
        with contextlib.suppress(StoreUnavailable):  # else the last stored release carries a recent state
            self._store.save_ledger(self._camera.id, self.ledger.to_dict(), ttl_s=self._ledger_ttl_s())

    def apply(self, camera: Camera) -> None:
        """Apply a new config version: live where the pipeline allows, else restart it."""
        spec = camera.to_spec()
        old = self._camera
        self.ledger.reconfigure(camera.eps_window, camera.window_s)
        self._camera = camera
        if any(getattr(old, f) != getattr(camera, f) for f in RESTART_FIELDS) or self._worker is None:
            self._stop_worker()
            if camera.enabled:
                self._start_worker(camera)
            return
        self._worker.update_config(spec=spec, release_fps=camera.release_fps)

    def _ledger_ttl_s(self) -> float:
        # the ledger must outlive its window; after that it holds nothing that limits a release
        return max(2.0 * self._camera.window_s, 60.0)

    # --- the sink ----------------------------------------------------------------------------------
    def _store_release(self, release: Release) -> None:
        # a refused (overspending) frame re-sends the previous release object: it is already stored
        if release is self._last_submitted:
            return
        self._last_submitted = release
        cam = self._camera
        summary = {"camera_id": cam.id, "frame_index": release.frame_index, "timestamp_s": release.timestamp_s,
                   "height": release.height, "width": release.width, "channels": release.channels,
                   "layout": release.layout_mode, "eps_spent": release.eps_spent}
        # The private re-stream shows a release only once Redis holds it, with the ledger state that counts
        # it, under this worker's lease. Shown at once, a release made while Redis was unreachable could
        # reach viewers uncounted: the worker that takes the camera over meanwhile starts from the stored
        # ledger, and the two together would overspend the window.
        private = self._private
        self._publisher.submit(PendingRelease(
            camera_id=cam.id, data=release.to_bytes(), summary=summary, ledger_state=self.ledger.to_dict(),
            retention_releases=cam.retention_releases, retention_s=cam.retention_s,
            ledger_ttl_s=self._ledger_ttl_s(), captured_s=release.timestamp_s,
            on_stored=(lambda: private(release)) if private is not None else None))

    # --- health and stats --------------------------------------------------------------------------
    def _health_changed(self, _old, new) -> None:
        if new.state.value in ("stalled", "reconnecting", "failed") and new.reason:
            self._last_error = (redact_text(new.reason), time.time())
        if self._on_change is not None:
            self._on_change()

    def _count(self, worker) -> None:
        s = worker.stats
        cid = self._camera.id
        with self._lock:
            now = {"ingested": s.frames_ingested, "dropped": s.frames_dropped, "skipped": s.frames_skipped,
                   "repeated": s.frames_repeated, "reconnects": s.reconnects}
            delta = {k: max(0, now[k] - self._seen[k]) for k in now}
            self._seen = now
        FRAMES_INGESTED.labels(cid).inc(delta["ingested"])
        FRAMES_DROPPED.labels(cid, "queue").inc(delta["dropped"])
        FRAMES_DROPPED.labels(cid, "rate").inc(delta["skipped"])
        FRAMES_DROPPED.labels(cid, "budget").inc(delta["repeated"])
        RECONNECTS.labels(cid).inc(delta["reconnects"])

    def status(self) -> dict[str, Any]:
        worker = self._worker
        if worker is None:
            state = "FAILED" if self._failed_reason else "DISABLED"
            return {"state": state, "reason": self._failed_reason or "disabled by configuration"}
        self._count(worker)
        h, s = worker.health, worker.stats
        extra: dict[str, Any] = {"private_rtsp": self._rtsp.public_url(f"/{self._camera.id}/private")} \
            if self._private else {}
        if self._last_error is not None:
            extra["last_error"], extra["last_error_s"] = self._last_error
        return {**extra,
            "state": h.state.value.upper(), "reason": redact_text(h.reason) or None,
            "fps": round(s.fps, 3), "release_fps": round(s.release_fps, 3),
            "frames_ingested": s.frames_ingested, "frames_released": s.frames_released,
            "frames_dropped": s.frames_dropped, "frames_skipped": s.frames_skipped,
            "frames_over_budget": s.frames_repeated,
            "frames_rejected": s.release_errors, "rejected_reason": s.last_release_error,
            "reconnects": s.reconnects,
        }

