"""One camera inside a worker process: a `streams.worker.CameraWorker` plus what the service adds to it.

The adapter keeps the camera's ledger across restarts and takeovers (it is loaded from Redis when the
camera is claimed, and every stored release carries its state), turns config versions into
`update_config` calls or a pipeline restart, hands each fresh release to the publisher exactly once, and
turns worker stats into Prometheus counters.

A config version that cannot be applied never makes the status lie: one that dp refuses changes nothing
(the previous version keeps running, and `last_error` says which version was refused and why); one whose
new pipeline cannot start leaves the camera FAILED, with the reason, until a later version starts. The
ledger is the same object throughout, so no failure loses or resets a spend.
"""

from __future__ import annotations

import contextlib
import functools
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
from service.redaction import redact_text, redacted_error, url_secrets
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
        self._secrets = url_secrets(camera.source)  # for redact_text: messages may quote them outside a URL
        self._on_change = on_change
        self._lock = threading.Lock()
        # Held while a release is handed to the publisher, and while the running worker is replaced: a worker
        # that has been let go (a stop whose thread join timed out) can no longer submit anything.
        self._sink_lock = threading.Lock()
        self._live_sink: object | None = None  # the token of the worker whose releases are accepted
        self._last_submitted: Release | None = None
        self._seen = dict.fromkeys(("ingested", "dropped", "skipped", "repeated", "rejected", "reconnects"), 0)
        self._worker = None
        self._failed_reason: str | None = None  # set while an enabled camera has no pipeline (see apply)
        self._restarting: int | None = None  # the config version whose pipeline is being (re)started
        self._rtsp = rtsp_server
        self._last_error: tuple[str, float] | None = None  # (redacted reason, unix time)
        self._private = None  # the /<id>/private re-stream sink, when an RTSP server is given
        camera.to_spec()  # refuse a config dp refuses, before anything starts
        self.ledger = CameraLedger.for_camera(camera, store.load_ledger(camera.id))
        self._store = store
        if camera.enabled:
            self._start_worker(camera)  # on failure nothing is left running or mounted (see _start_worker)

    @classmethod
    def factory(cls, settings: Settings, publisher: ReleasePublisher, store: SyncStore,
                on_change: Callable[[], None] | None = None, rtsp_server=None):
        return lambda camera: cls(camera, settings=settings, publisher=publisher, store=store,
                                  on_change=on_change, rtsp_server=rtsp_server)

    # --- lifecycle ---------------------------------------------------------------------------------
    def _start_worker(self, camera: Camera) -> None:
        """Build and start the camera's pipeline; raise, with nothing left running or mounted, if it cannot."""
        from streams.worker import CameraWorker

        token = object()
        worker = CameraWorker(
            camera.id, camera.source, camera.to_spec(), ledger=self.ledger, release_fps=camera.release_fps,
            sinks=[functools.partial(self._store_release, token)], stall_timeout_s=self._settings.stall_timeout_s,
            channels=camera.channels, backend=self._settings.backend, on_health_change=self._health_changed,
            tls_ca_file=self._settings.tls_ca_file)
        try:
            if self._rtsp is not None and self._private is None:
                # fed by the publisher once a release is stored, not as a sink of its own (see _store_release)
                self._private = self._rtsp.serve_private(camera.id)
            with self._lock:
                self._seen = dict.fromkeys(self._seen, 0)  # a new CameraWorker counts from zero
            with self._sink_lock:
                self._worker, self._live_sink = worker, token
            worker.start()
        except BaseException:
            with self._sink_lock:
                self._worker, self._live_sink = None, None
            worker.stop()
            self._remove_private()
            raise
        self._failed_reason = None

    def _stop_worker(self) -> None:
        with self._sink_lock:  # from here on, nothing the old worker releases reaches the publisher
            worker, self._worker, self._live_sink = self._worker, None, None
        if worker is not None:
            worker.stop()
            self._count(worker)  # after the stop: the frames of its last moments count too

    def _remove_private(self) -> None:
        if self._private is not None:
            self._rtsp.remove(f"/{self._camera.id}/private")
            self._private = None

    def stop(self) -> None:
        """Stop releasing (no more releases reach the publisher after this returns)."""
        self._stop_worker()
        self._remove_private()

    def save_state(self) -> None:
        """Store the ledger for whoever claims the camera next (call once queued releases are stored: each
        carries an older snapshot of the ledger)."""
        with contextlib.suppress(StoreUnavailable):  # else the last stored release carries a recent state
            self._store.save_ledger(self._camera.id, self.ledger.to_dict(), ttl_s=self._ledger_ttl_s())

    def apply(self, camera: Camera) -> None:
        """Apply a new config version: live where the pipeline allows, else restart it.

        Raises when the version cannot be applied, and the status says so: a version dp refuses changes
        nothing (the previous one keeps running; `last_error` names the refused version); a restarted
        pipeline that cannot start leaves the camera FAILED with the reason until a later version starts.
        The ledger keeps every spend either way.
        """
        old = self._camera
        restart = self._worker is None or any(getattr(old, f) != getattr(camera, f) for f in RESTART_FIELDS)
        try:  # before anything changes: dp may refuse the spec, and a live worker its backend's limits
            spec = camera.to_spec()
            if not restart:
                self._worker.update_config(spec=spec, release_fps=camera.release_fps)
        except Exception as err:
            self._note_error(f"config version {camera.version} refused: {self._redact(err, camera)}; version "
                             f"{old.version} stays in effect until a later version is accepted")
            raise
        self.ledger.reconfigure(camera.eps_window, camera.window_s)  # keeps every spend
        self._camera = camera
        self._secrets = tuple(dict.fromkeys((*url_secrets(camera.source), *self._secrets)))
        if not restart:
            return
        # status() runs on another thread: between the stop and the start it says STARTING, not DISABLED
        self._restarting = camera.version if camera.enabled else None
        try:
            self._stop_worker()
            self._failed_reason = None
            if camera.enabled:
                self._start_worker(camera)
        except Exception as err:
            # a store error passes: the worker applies the version again at its heartbeats (worker_process)
            until = "the store answers" if isinstance(err, StoreUnavailable) else "a later version starts"
            self._failed_reason = (f"config version {camera.version} could not start: {self._redact(err)}; "
                                   f"the camera stays stopped, its budget kept, until {until}")
            self._note_error(self._failed_reason)
            raise
        finally:
            self._restarting = None

    def _redact(self, err: BaseException, *cameras: Camera) -> str:
        return redacted_error(err, *cameras, secrets=self._secrets)

    def _note_error(self, reason: str) -> None:
        if self._last_error is not None and self._last_error[0] == reason:
            return  # a retry failing the same way: no news, and waking the worker would retry at once, in a loop
        self._last_error = (reason, time.time())
        if self._on_change is not None:
            self._on_change()

    def _ledger_ttl_s(self) -> float:
        # used only once the camera is deleted (store.save_ledger): the ledger outlives it by its window
        return max(2.0 * self._camera.window_s, 60.0)

    # --- the sink ----------------------------------------------------------------------------------
    def _store_release(self, token: object, release: Release) -> None:
        with self._sink_lock:
            if token is self._live_sink:  # else its worker was stopped or replaced: never submit after that
                self._submit(release)

    def _submit(self, release: Release) -> None:
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
            captured_s=release.timestamp_s,
            on_stored=(lambda: private(release)) if private is not None else None))

    # --- health and stats --------------------------------------------------------------------------
    def _health_changed(self, _old, new) -> None:
        if new.state.value in ("stalled", "reconnecting", "failed") and new.reason:
            self._last_error = (redact_text(new.reason, *self._secrets), time.time())
        if self._on_change is not None:
            self._on_change()

    def _count(self, worker) -> None:
        s = worker.stats
        cid = self._camera.id
        with self._lock:
            now = {"ingested": s.frames_ingested, "dropped": s.frames_dropped, "skipped": s.frames_skipped,
                   "repeated": s.frames_repeated, "rejected": s.release_errors, "reconnects": s.reconnects}
            delta = {k: max(0, now[k] - self._seen[k]) for k in now}
            self._seen = now
        FRAMES_INGESTED.labels(cid).inc(delta["ingested"])
        FRAMES_DROPPED.labels(cid, "queue").inc(delta["dropped"])
        FRAMES_DROPPED.labels(cid, "rate").inc(delta["skipped"])
        FRAMES_DROPPED.labels(cid, "budget").inc(delta["repeated"])
        FRAMES_DROPPED.labels(cid, "rejected").inc(delta["rejected"])  # dp refused them (see rejected_reason)
        RECONNECTS.labels(cid).inc(delta["reconnects"])

    def status(self) -> dict[str, Any]:
        worker = self._worker
        extra: dict[str, Any] = {}
        if self._last_error is not None:
            extra["last_error"], extra["last_error_s"] = self._last_error
        if worker is None:
            if self._restarting is not None:
                return {**extra, "state": "STARTING", "reason": f"restarting for config version {self._restarting}"}
            if self._failed_reason:
                return {**extra, "state": "FAILED", "reason": self._failed_reason}
            if not self._camera.enabled:
                return {**extra, "state": "DISABLED", "reason": "disabled by configuration"}
            return {**extra, "state": "FAILED", "reason": "the camera is enabled but not running; apply a new "
                    "config version to start it"}  # no path leads here; never say DISABLED for it
        self._count(worker)
        h, s = worker.health, worker.stats
        if self._private:
            extra["private_rtsp"] = self._rtsp.public_url(f"/{self._camera.id}/private")
        return {**extra,
            "state": h.state.value.upper(), "reason": redact_text(h.reason, *self._secrets) or None,
            "fps": round(s.fps, 3), "release_fps": round(s.release_fps, 3),
            "frames_ingested": s.frames_ingested, "frames_released": s.frames_released,
            "frames_dropped": s.frames_dropped, "frames_skipped": s.frames_skipped,
            "frames_over_budget": s.frames_repeated,
            "frames_rejected": s.release_errors, "rejected_reason": s.last_release_error,
            "reconnects": s.reconnects,
        }
