"""Releases into Redis, in order, surviving Redis restarts.

The camera thread hands each release over and never waits on Redis: a publisher thread stores them one by
one (stream entry + latest + ledger state, atomically). While Redis is unreachable releases queue in memory,
bounded by age (`release_buffer_s`) and count (`release_buffer_max`); the oldest are dropped first and
counted. Once `append_release` returns the release is acknowledged; with append-only persistence on the
server it survives a restart. Outputs other than the store (the private RTSP re-stream) hang on
`on_stored`: a release reaches them only once it is counted in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dp.errors import StoreUnavailable
from service.metrics import FRAMES_DROPPED, FRAMES_RELEASED, REDIS_ERRORS, RELEASE_LATENCY, RELEASES_BUFFERED
from service.store import SyncStore

log = logging.getLogger("dpstream.worker.publisher")


@dataclass
class PendingRelease:
    camera_id: str
    data: bytes
    summary: dict[str, Any]
    ledger_state: dict[str, Any] | None
    retention_releases: int
    retention_s: float | None
    captured_s: float
    queued_monotonic_s: float = field(default_factory=time.monotonic)
    on_stored: Callable[[], None] | None = None  # called (publisher thread) once the release is acknowledged


class ReleasePublisher:
    """One per worker process; `submit()` is safe from any thread and never blocks on Redis."""

    def __init__(self, store: SyncStore, *, buffer_s: float, buffer_max: int, worker_id: str,
                 lease_ttl_s: float) -> None:
        self._store = store
        self._worker_id = worker_id
        self._lease_ttl_s = lease_ttl_s
        self._buffer_s = buffer_s
        self._queue: deque[PendingRelease] = deque()
        self._buffer_max = buffer_max
        self._cond = threading.Condition()
        self._stop = False
        self._store_ok = True
        self.submitted = 0
        self.acknowledged = 0
        self.discarded = 0  # releases of cameras deleted, or taken by another worker, meanwhile
        self.dropped = 0
        self.last_entry_ids: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="dpstream-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_timeout_s: float = 3.0) -> None:
        """Stop after storing what is queued (up to `drain_timeout_s`)."""
        deadline = time.monotonic() + drain_timeout_s
        with self._cond:
            while self._queue and self._store_ok and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=drain_timeout_s + 3)

    @property
    def store_ok(self) -> bool:
        return self._store_ok

    @property
    def buffered(self) -> int:
        return len(self._queue)

    def submit(self, item: PendingRelease) -> None:
        with self._cond:
            self.submitted += 1
            self._queue.append(item)
            self._trim_locked()
            RELEASES_BUFFERED.set(len(self._queue))
            self._cond.notify_all()

    def flush_camera(self, camera_id: str, timeout_s: float) -> bool:
        """Wait until every queued release of `camera_id` is stored (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while any(p.camera_id == camera_id for p in self._queue):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def discard_camera(self, camera_id: str) -> None:
        """Forget queued releases of a camera that was deleted or taken by another worker (counted as
        discarded, so that submitted = acknowledged + discarded + dropped + buffered always holds)."""
        with self._cond:
            kept = deque(p for p in self._queue if p.camera_id != camera_id)
            self.discarded += len(self._queue) - len(kept)
            self._queue = kept
            RELEASES_BUFFERED.set(len(self._queue))

    def _trim_locked(self) -> None:
        oldest_ok = time.monotonic() - self._buffer_s
        while self._queue and (len(self._queue) > self._buffer_max
                               or self._queue[0].queued_monotonic_s < oldest_ok):
            lost = self._queue.popleft()
            self.dropped += 1
            FRAMES_DROPPED.labels(lost.camera_id, "store_buffer").inc()

    def _run(self) -> None:
        backoff_s = 0.1
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait(0.5)
                if self._stop:
                    return
                item = self._queue[0]
            try:
                entry_id = self._store.append_release(
                    item.camera_id, item.data, item.summary, ledger_state=item.ledger_state,
                    retention_releases=item.retention_releases, retention_s=item.retention_s,
                    worker_id=self._worker_id, lease_ttl_s=self._lease_ttl_s)
            except StoreUnavailable as err:
                REDIS_ERRORS.labels("worker").inc()
                if self._store_ok:
                    log.warning("store unreachable; buffering releases (up to %.0f s): %s", self._buffer_s, err)
                self._store_ok = False
                with self._cond:
                    self._trim_locked()
                    RELEASES_BUFFERED.set(len(self._queue))
                    self._cond.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 1.0)
                continue
            if not self._store_ok:
                log.info("store reachable again; flushing %d buffered releases", len(self._queue))
            self._store_ok = True
            backoff_s = 0.1
            with self._cond:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                RELEASES_BUFFERED.set(len(self._queue))
                self._cond.notify_all()
            if entry_id is None:
                self.discarded += 1
                continue
            self.acknowledged += 1
            self.last_entry_ids[item.camera_id] = entry_id
            if item.on_stored is not None:
                try:
                    item.on_stored()
                except Exception:  # a viewer's trouble must not stop the store
                    log.exception("after-store callback failed camera_id=%s", item.camera_id)
            FRAMES_RELEASED.labels(item.camera_id).inc()
            RELEASE_LATENCY.labels(item.camera_id).observe(max(0.0, time.time() - item.captured_s))
