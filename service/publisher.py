"""Releases into Redis, in order, surviving Redis restarts.

The camera thread hands each release over and never waits on Redis: a publisher thread stores them one by
one (stream entry + latest + ledger state, atomically). While Redis is unreachable releases queue in memory,
bounded by age (`release_buffer_s`) and count (`release_buffer_max`); the oldest are dropped first and
counted. Once `append_release` returns the release is acknowledged; with append-only persistence on the
server it survives a restart. Outputs other than the store (the private RTSP re-stream) hang on
`on_stored`: a release reaches them only once it is counted in Redis.

Each release is stored once: the release being written is neither dropped nor discarded while its reply is
awaited (it may already be stored; the buffer bounds the releases besides it), and when a write fails it is
sent again under the same release id, which the store recognises (a reply lost after Redis stored the
release must not store it twice). A release whose
camera's keys Redis refuses (a key of the wrong type) is dropped at once, counted with reason
`store_refused`: waiting for it would hold back every other camera's releases.
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
from service.store import StoreRefused, SyncStore, new_release_id

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
    release_id: str = field(default_factory=new_release_id)  # the same on every try: stored once (see module)


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
        self._writing: PendingRelease | None = None  # the queue's head while the store writes it
        self._writing_discarded = False  # its camera was discarded meanwhile: not retried if the write fails
        self._refused: dict[str, str] = {}  # camera id -> why Redis refuses its releases (logged once)
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
        discarded, so that submitted = acknowledged + discarded + dropped + buffered always holds). One the
        store is writing right now is counted by how that write ends: the store refuses it for a camera
        deleted or leased elsewhere, and it is not tried again."""
        with self._cond:
            writing = self._writing_head_locked()
            if writing is not None and writing.camera_id == camera_id:
                self._writing_discarded = True
            kept = deque(p for p in self._queue if p.camera_id != camera_id or p is writing)
            self.discarded += len(self._queue) - len(kept)
            self._queue = kept
            RELEASES_BUFFERED.set(len(self._queue))

    def _writing_head_locked(self) -> PendingRelease | None:
        w = self._writing
        return w if w is not None and self._queue and self._queue[0] is w else None

    def _trim_locked(self) -> None:
        # never the release being written: it may be stored already, and is counted by how its write ends
        skip = 1 if self._writing_head_locked() is not None else 0
        oldest_ok = time.monotonic() - self._buffer_s
        while len(self._queue) > skip and (len(self._queue) - skip > self._buffer_max
                                           or self._queue[skip].queued_monotonic_s < oldest_ok):
            lost = self._queue[skip]
            del self._queue[skip]
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
                item = self._writing = self._queue[0]
                self._writing_discarded = False
            try:
                entry_id = self._store.append_release(
                    item.camera_id, item.data, item.summary, ledger_state=item.ledger_state,
                    retention_releases=item.retention_releases, retention_s=item.retention_s,
                    worker_id=self._worker_id, lease_ttl_s=self._lease_ttl_s, release_id=item.release_id)
            except StoreRefused as err:  # this camera's keys, not the store: the other cameras' releases go on
                self._store_ok = True
                self._finish(item, "dropped")
                FRAMES_DROPPED.labels(item.camera_id, "store_refused").inc()
                REDIS_ERRORS.labels("worker").inc()
                if self._refused.get(item.camera_id) != str(err):
                    self._refused[item.camera_id] = str(err)
                    log.warning("store refuses the releases of camera_id=%s; dropping them until its keys are "
                                "repaired: %s", item.camera_id, err)
                continue
            except StoreUnavailable as err:
                REDIS_ERRORS.labels("worker").inc()
                if self._store_ok:
                    log.warning("store unreachable; buffering releases (up to %.0f s): %s", self._buffer_s, err)
                self._store_ok = False
                with self._cond:
                    self._writing = None
                    if self._writing_discarded and self._queue and self._queue[0] is item:
                        self._queue.popleft()  # its camera is gone from this worker: not tried again
                        self.discarded += 1
                    self._trim_locked()
                    RELEASES_BUFFERED.set(len(self._queue))
                    self._cond.notify_all()
                    self._cond.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 1.0)
                continue
            if not self._store_ok:
                log.info("store reachable again; flushing %d buffered releases", len(self._queue))
            self._store_ok = True
            backoff_s = 0.1
            self._finish(item, "acknowledged" if entry_id is not None else "discarded")
            if entry_id is None:
                continue
            if self._refused.pop(item.camera_id, None) is not None:
                log.info("store accepts the releases of camera_id=%s again", item.camera_id)
            self.last_entry_ids[item.camera_id] = entry_id
            if item.on_stored is not None:
                try:
                    item.on_stored()
                except Exception:  # a viewer's trouble must not stop the store
                    log.exception("after-store callback failed camera_id=%s", item.camera_id)
            FRAMES_RELEASED.labels(item.camera_id).inc()
            RELEASE_LATENCY.labels(item.camera_id).observe(max(0.0, time.time() - item.captured_s))

    def _finish(self, item: PendingRelease, outcome: str) -> None:
        """Take the release just written (or refused) off the queue, and count it under `outcome` (one of
        the counters) in the same step: it is still the head, since nothing else removes the release being
        written."""
        with self._cond:
            self._writing = None
            if self._queue and self._queue[0] is item:
                self._queue.popleft()
            setattr(self, outcome, getattr(self, outcome) + 1)
            RELEASES_BUFFERED.set(len(self._queue))
            self._cond.notify_all()
