"""`dpstream worker`: runs cameras claimed through Redis leases.

Protocol (architecture.md, "Scaling out"): each camera has a lease key holding the owning worker's id with
a TTL (`lease_ttl_s`), renewed every heartbeat. A worker takes at most its fair share of the cameras
(ceil(cameras / live workers)), so several workers spread the load; when a worker dies its leases expire and
the survivors take its cameras over within one TTL plus one heartbeat. Config changes arrive by pub/sub and
are also reconciled every heartbeat (pub/sub messages are lost while Redis restarts).

While Redis is unreachable the cameras keep running: releases queue in the publisher, leases cannot be
renewed, and when Redis comes back a lease that expired meanwhile is taken again if nobody else holds it.
A worker whose liveness expired meanwhile claims no other camera for one lease TTL, so that peers still
reconnecting get theirs back instead of seeing them move.

No log line or status holds a camera's credentials: every error text passes through `service.redaction`
with the secrets of the cameras it may be about. A stored config this worker cannot read (written by hand,
or by another dpstream version) is skipped, with its error, never quoted with its values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from dp.errors import ConfigError, StoreUnavailable
from service.metrics import LEASES_HELD, REDIS_ERRORS, forget_camera
from service.models import Camera
from service.publisher import ReleasePublisher
from service.redaction import redacted_error
from service.settings import Settings
from service.store import StoredCameraUnreadable, SyncStore

log = logging.getLogger("dpstream.worker")


class CameraRunner(Protocol):
    """What the worker needs from a running camera (streams.worker.CameraWorker behind an adapter)."""

    def stop(self) -> None: ...
    def save_state(self) -> None: ...
    def apply(self, camera: Camera) -> None: ...
    def status(self) -> dict[str, Any]: ...


class FailedRunner:
    """Stands in for a camera whose runner could not be built: reports FAILED until its config changes, or,
    when `retry` (the store could not be read), until the worker's next heartbeat builds it."""

    def __init__(self, reason: str, *, retry: bool = False) -> None:
        self.reason = reason  # already redacted
        self.retry = retry

    def stop(self) -> None:
        pass

    def save_state(self) -> None:
        pass

    def apply(self, camera: Camera) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"state": "FAILED", "reason": self.reason}


def start_rtsp_server(settings: Settings, port: int, *, any_port_if_taken: bool = False):
    """The RTSP server of a worker's /<camera>/private re-streams (and `dpstream up`'s demo camera), on the
    API's address, with the settings' credentials (DPSTREAM_RTSP_USER/PASSWORD) when given."""
    from dp.errors import DpstreamError
    from streams.rtsp_server import LocalRtspServer

    def start(p: int):
        return LocalRtspServer(port=p, host=settings.host, auth=settings.rtsp_auth,
                               public_host=settings.rtsp_public_host).start()

    try:
        return start(port)
    except DpstreamError:
        if not any_port_if_taken:
            raise
        log.warning("RTSP port %s is taken; using a free port", port)
        return start(0)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:64]


@dataclass
class Owned:
    camera: Camera
    runner: CameraRunner


class WorkerProcess:
    """Claims cameras, runs them, renews leases and reports status. `run()` blocks; `start()` threads it."""

    def __init__(self, settings: Settings, *, runner_factory=None, store: SyncStore | None = None,
                 rtsp_server=None) -> None:
        """`rtsp_server` (a `streams.rtsp_server.LocalRtspServer`): serve each camera's releases as H.264 at
        `/<camera_id>/private` there."""
        if not settings.redis_url:
            raise ConfigError("the worker needs redis_url (REDIS_URL or --redis-url)")
        self.settings = settings
        self.worker_id = settings.worker_id or default_worker_id()
        self.store = store or SyncStore(settings.redis_url, prefix=settings.key_prefix)
        # the publisher has its own connection so a slow store write never delays lease renewal
        self.publisher = ReleasePublisher(
            SyncStore(settings.redis_url, prefix=settings.key_prefix),
            buffer_s=settings.release_buffer_s, buffer_max=settings.release_buffer_max, worker_id=self.worker_id,
            lease_ttl_s=settings.lease_ttl_s)
        self._owned: dict[str, Owned] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        if runner_factory is None:
            from service.camera_runner import StreamsCameraRunner

            runner_factory = StreamsCameraRunner.factory(settings, self.publisher, self.store,
                                                         on_change=self._wake.set, rtsp_server=rtsp_server)
        self._runner_factory = runner_factory
        self._thread: threading.Thread | None = None
        self._sub_thread: threading.Thread | None = None
        self._live_workers = 1
        self._least_loaded_peer: int | None = None
        self._unleased_since: dict[str, float] = {}  # camera id -> when this worker first saw it unleased
        self._lost: set[str] = set()
        self._ids_lock = threading.Lock()  # guards _owned_ids: the renewal thread's view of what we hold
        self._owned_ids: set[str] = set()
        self._renew_thread: threading.Thread | None = None
        self._next_wait_s = settings.heartbeat_interval_s
        self._joined = False  # a heartbeat has marked this worker alive
        self._rejoin_until = 0.0  # monotonic time until which we claim no camera we do not hold
        self._unreadable: dict[str, tuple[str, float]] = {}  # camera id -> (redacted error, unix time)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.publisher.start()
        self._sub_thread = threading.Thread(target=self._listen, name="dpstream-config", daemon=True)
        self._sub_thread.start()
        self._thread = threading.Thread(target=self._loop, name="dpstream-worker", daemon=True)
        self._thread.start()
        self._renew_thread = threading.Thread(target=self._renew_loop, name="dpstream-leases", daemon=True)
        self._renew_thread.start()

    def run(self) -> None:
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        """Stop every camera, hand the leases back and leave the worker set (idempotent)."""
        self.request_stop()
        for thread in (self._thread, self._renew_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)
        with self._lock:
            for cid in list(self._owned):
                self._drop(cid, release_lease=True)
        self.publisher.stop()
        with contextlib.suppress(StoreUnavailable):
            self.store.remove_worker(self.worker_id)
        LEASES_HELD.set(0)

    @property
    def camera_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._owned)

    # --- the heartbeat loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        log.info("worker started worker_id=%s lease_ttl_s=%s", self.worker_id, self.settings.lease_ttl_s)
        while not self._stop.is_set():
            try:
                self.tick()
            except StoreUnavailable as err:
                REDIS_ERRORS.labels("worker").inc()
                log.warning("heartbeat failed worker_id=%s: %s", self.worker_id, redacted_error(err))
            except Exception as err:  # a bug in one tick must not kill the worker; log and carry on
                log.error("heartbeat crashed worker_id=%s: %s", self.worker_id,
                          redacted_error(err, *self._owned_cameras(), with_traceback=True))
            self._wake.wait(max(0.02, self._next_wait_s))
            self._wake.clear()

    def tick(self) -> None:
        """One round of coordination: drop lost leases, apply config changes, claim cameras, report status."""
        self.renew()
        with self._lock:
            lost, self._lost = self._lost, set()
            for cid in lost:
                if cid in self._owned:
                    log.warning("lease lost camera_id=%s owner=%s", cid, self.store.lease_owner(cid))
                    self._drop(cid, release_lease=False)
        ids = self.store.camera_ids()
        self._unreadable = {cid: e for cid, e in self._unreadable.items() if cid in ids}
        self._reconcile(ids)
        self._trim_idle()
        self._claim(ids)
        self._report()
        LEASES_HELD.set(len(self._owned))

    def renew(self) -> None:
        """Liveness and lease renewal only: cheap, and never waits on a camera starting or stopping."""
        ttl = self.settings.lease_ttl_s
        with self._ids_lock:
            owned = sorted(self._owned_ids)
        loads, was_alive = self.store.heartbeat_worker(
            self.worker_id, ttl, {"worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                                  "cameras": len(owned), "time_s": time.time()})
        if not was_alive and self._joined:
            # Our liveness expired (Redis was down or lost its data, or we stalled): so did our peers', most
            # likely, and they are reconnecting too. Seeing ourselves alone, we would take their cameras
            # before their next renewal, and each would stop and start again. Claim none for one lease TTL
            # (peers renew every heartbeat, a third of it); our own leases are taken back below.
            self._rejoin_until = time.monotonic() + ttl
            log.warning("liveness had expired, rejoining worker_id=%s: claiming no other camera for %gs",
                        self.worker_id, ttl)
        self._joined = True
        self._live_workers = max(1, len(loads))
        self._least_loaded_peer = min((n for w, n in loads.items() if w != self.worker_id), default=None)
        for cid in owned:
            # a lease that expired meanwhile (e.g. Redis was down) is taken back unless another has it
            if self.store.renew_lease(cid, self.worker_id, ttl):
                continue
            with self._ids_lock:  # never re-take a lease that `_drop` is handing back right now
                if cid in self._owned_ids and not self.store.acquire_lease(cid, self.worker_id, ttl):
                    self._lost.add(cid)
                    self._wake.set()

    def _renew_loop(self) -> None:
        # a separate thread, so that starting or stopping cameras in `tick` (which can take seconds) never
        # delays the renewal of the other cameras' leases past their TTL
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.renew()
            except StoreUnavailable as err:
                REDIS_ERRORS.labels("worker").inc()
                log.warning("lease renewal failed worker_id=%s: %s", self.worker_id, redacted_error(err))
            except Exception as err:
                log.error("lease renewal crashed worker_id=%s: %s", self.worker_id,
                          redacted_error(err, *self._owned_cameras(), with_traceback=True))

    def _owned_cameras(self) -> list[Camera]:
        return [o.camera for o in list(self._owned.values())]

    def _read_camera(self, cid: str) -> tuple[Camera | None, bool]:
        """(the stored config or None, whether it was unreadable). An unreadable one is logged once per
        distinct error, redacted, and reported on the camera's status while this worker runs it."""
        try:
            cam = self.store.get_camera(cid)
        except StoredCameraUnreadable as err:
            owned = self._owned.get(cid)
            reason = redacted_error(err, owned.camera if owned else None)
            if self._unreadable.get(cid, ("",))[0] != reason:
                log.warning("camera config unreadable camera_id=%s: %s; %s", cid, reason,
                            "keeping the version it runs" if owned else "not claiming it")
                self._unreadable[cid] = (reason, time.time())
            return None, True
        self._unreadable.pop(cid, None)
        return cam, False

    def _reconcile(self, ids: list[str]) -> None:
        with self._lock:
            for cid in list(self._owned):
                cam, unreadable = self._read_camera(cid) if cid in ids else (None, False)
                if unreadable:
                    continue  # keep running the version we have (see _report)
                if cam is None:
                    log.info("camera removed camera_id=%s", cid)
                    self._drop(cid, release_lease=True)
                    self.publisher.discard_camera(cid)
                elif (cam.incarnation, cam.version) != (self._owned[cid].camera.incarnation,
                                                        self._owned[cid].camera.version):
                    self._apply(cid, cam)
                elif isinstance(runner := self._owned[cid].runner, FailedRunner) and runner.retry:
                    self._owned[cid].runner = self._make_runner(cam, previous=runner)  # the store is back, maybe

    def _trim_idle(self) -> None:
        """retention_s holds for cameras that stopped releasing too (disabled, failing): appends trim only
        while releases come."""
        with self._lock:
            retained = [(cid, o.camera.retention_s) for cid, o in self._owned.items() if o.camera.retention_s]
        for cid, retention_s in retained:
            self.store.trim_old_releases(cid, retention_s)

    def _claim(self, ids: list[str]) -> None:
        fair_share = math.ceil(len(ids) / self._live_workers) if ids else 0
        target = min(self.settings.max_cameras_per_worker, fair_share)
        beat = self.settings.heartbeat_interval_s
        handed_back = None
        with self._lock:
            peer = self._least_loaded_peer
            if len(self._owned) > target and peer is not None and peer < target:
                # more than our share (a worker joined): hand one camera back per heartbeat
                handed_back = sorted(self._owned)[-1]
                log.info("rebalancing: handing camera back camera_id=%s", handed_back)
                self._drop(handed_back, release_lease=True)
        others = [cid for cid in ids if cid not in self._owned]
        pttls = self.store.lease_pttls(others)
        unleased = {cid for cid, pttl in zip(others, pttls, strict=True) if pttl < 0}
        # A camera nobody claimed for a whole heartbeat (of time, not of our ticks, which events can make
        # much more frequent) is taken even above the fair share: a dead worker still counts as live until
        # its own liveness expires, and its cameras must not wait for that. One we just handed back waits
        # a heartbeat more, so that the peer it was meant for sees it on one of its own heartbeats (else
        # we could take it back before the peer ever looks, again and again).
        now = time.monotonic()
        rejoining_s = self._rejoin_until - now
        since = {cid: self._unleased_since.get(cid, now) for cid in unleased}
        if handed_back in since:
            since[handed_back] = now + beat
        self._unleased_since = since
        overdue = {cid for cid, t in since.items() if now - t >= beat}
        for cid in others:
            if self._stop.is_set() or len(self._owned) >= self.settings.max_cameras_per_worker or rejoining_s > 0:
                break
            if cid not in unleased or (len(self._owned) >= target and cid not in overdue):
                continue
            cam, _unreadable = self._read_camera(cid)  # an unreadable one is left to a worker that can read it
            if cam is None or not self.store.acquire_lease(cid, self.worker_id, self.settings.lease_ttl_s):
                continue
            self._start_camera(cam)
        # wake up when the first foreign lease runs out, so a dead worker's camera moves within its TTL
        live = [p / 1000.0 for p in pttls if p >= 0]
        if rejoining_s > 0 and unleased:
            live.append(rejoining_s)
        self._next_wait_s = min([self.settings.heartbeat_interval_s, *(t + 0.05 for t in live)])

    def _start_camera(self, cam: Camera) -> None:
        with self._ids_lock:  # renewed from now on, while the camera starts
            self._owned_ids.add(cam.id)
        runner = self._make_runner(cam)
        with self._lock:
            self._owned[cam.id] = Owned(cam, runner)
        log.info("camera claimed camera_id=%s worker_id=%s", cam.id, self.worker_id)

    def _make_runner(self, cam: Camera, previous: FailedRunner | None = None) -> CameraRunner:
        try:
            return self._runner_factory(cam)
        except Exception as err:  # a bad camera is a FAILED state held by this worker, never a crash
            reason = redacted_error(err, cam)
            retry = isinstance(err, StoreUnavailable)  # e.g. its ledger could not be read: never start without it
            failed = FailedRunner(
                f"config version {cam.version} could not start: {reason}; " + (
                    "retrying at every heartbeat" if retry else "a later config version tries again"),
                retry=retry)
            repeated = previous is not None and previous.reason == failed.reason  # a retry failing the same way
            log.log(logging.DEBUG if repeated else logging.WARNING, "camera failed to start camera_id=%s "
                    "version=%s: %s", cam.id, cam.version, reason)
            return failed

    def _apply(self, cid: str, cam: Camera) -> None:
        owned = self._owned.get(cid)
        # Versions order the changes of one camera. A camera deleted and created again under its id (a new
        # incarnation, version 1 again) is applied whatever the version: else a worker that missed the delete
        # would run the old settings until the new camera's version passed them. A stale read of the old one
        # after that is undone by the next heartbeat's reconcile, which reads the store.
        if owned is None or (cam.incarnation == owned.camera.incarnation and cam.version <= owned.camera.version):
            return
        if isinstance(owned.runner, FailedRunner):  # a new version may fix it: try again
            owned.runner = self._make_runner(cam)
            owned.camera = cam
            return
        try:
            owned.runner.apply(cam)
            log.info("camera config applied camera_id=%s version=%s", cid, cam.version)
        except Exception as err:  # the runner's status says what happened to the camera (see CameraRunner)
            log.warning("camera config not applied camera_id=%s version=%s: %s", cid, cam.version,
                        redacted_error(err, cam, owned.camera))
        owned.camera = cam  # applied or not, do not retry the same version every heartbeat

    def _drop(self, cid: str, *, release_lease: bool) -> None:
        """Stop a camera. With `release_lease` (a graceful hand-over) its queued releases are stored first,
        then its ledger, then the lease is handed back, so the next worker starts from the full ledger."""
        with self._ids_lock:
            self._owned_ids.discard(cid)
        owned = self._owned.pop(cid, None)
        if owned is not None:
            try:
                owned.runner.stop()
            except Exception as err:
                log.error("camera stop failed camera_id=%s: %s", cid,
                          redacted_error(err, owned.camera, with_traceback=True))
        if not release_lease:
            self.publisher.discard_camera(cid)  # another worker holds it: these would be refused anyway
            forget_camera(cid)
            return
        wait_s = min(5.0, self.settings.lease_ttl_s / 2) if self.publisher.store_ok else 0.0
        if not self.publisher.flush_camera(cid, timeout_s=wait_s):
            self.publisher.discard_camera(cid)
        forget_camera(cid)
        if owned is not None:
            owned.runner.save_state()
        with contextlib.suppress(StoreUnavailable):  # else it expires by itself
            self.store.release_lease(cid, self.worker_id)

    def _report(self) -> None:
        with self._lock:
            owned = list(self._owned.items())
        for cid, o in owned:
            doc = o.runner.status()
            if cid in self._unreadable:  # the store holds a version we cannot read: say we still run ours
                reason, since_s = self._unreadable[cid]
                doc["last_error"] = (f"the stored config is unreadable ({reason}); still running version "
                                     f"{o.camera.version}")
                doc["last_error_s"] = since_s
            doc["updated_s"] = time.time()
            self.store.set_status(cid, doc, ttl_s=self.settings.lease_ttl_s * 3)

    # --- live config by pub/sub ------------------------------------------------------------------
    def _listen(self) -> None:
        backoff_s = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.store.pubsub()
                backoff_s = 0.1
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg and msg.get("type") == "message":
                        self._on_config_message(msg["data"])
            except Exception as err:  # redis down: retry; the heartbeat reconciles what we missed
                if not self._stop.is_set():
                    log.debug("config subscription lost: %s", redacted_error(err, *self._owned_cameras()))
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _on_config_message(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            cid = str(event["id"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            owned = cid in self._owned
        if not owned:
            self._wake.set()  # maybe a new camera: claim it now rather than at the next heartbeat
            return
        if event.get("op") == "delete":
            with self._lock:
                self._drop(cid, release_lease=True)
            self.publisher.discard_camera(cid)
            return
        try:
            cam = self.store.get_camera(cid)
        except (StoreUnavailable, StoredCameraUnreadable):  # the heartbeat reads it again, and reports it
            return
        if cam is not None:
            with self._lock:
                self._apply(cid, cam)
