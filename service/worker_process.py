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

One camera's failure stays that camera's: a step of the heartbeat (lease renewal, config read, trim, claim,
status report) that fails for one camera (its runner raises, one of its keys holds the wrong type) is noted
on that camera's status and logged once per distinct error, and the step goes on with the other cameras.
Only an unreachable store stops a step for all of them (each camera would fail alike, after a timeout).
"""

from __future__ import annotations

import contextlib
import ipaddress
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
from service.models import Camera, CameraStatus
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

    if (warning := open_rtsp_warning(settings)) is not None:
        log.warning(warning)
    try:
        return start(port)
    except DpstreamError:
        if not any_port_if_taken:
            raise
        log.warning("RTSP port %s is taken; using a free port", port)
        return start(0)


def open_rtsp_warning(settings: Settings) -> str | None:
    """What to log when the re-streams listen beyond this machine and take no credentials, else None."""
    if settings.rtsp_auth is not None or _loopback(settings.host):
        return None
    return (f"the RTSP server listens on {settings.host} without credentials: anyone who reaches it may watch "
            "every /<camera>/private re-stream; set DPSTREAM_RTSP_USER and DPSTREAM_RTSP_PASSWORD")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:64]


@dataclass
class Owned:
    camera: Camera
    runner: CameraRunner
    # Set while `camera` is a version the runner could not restart with for a reason that passes (the store
    # was unreachable): the status reason, redacted. `_reconcile` applies the version again at every heartbeat.
    retrying: str | None = None


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
        # camera id -> {heartbeat step -> (redacted error, unix time since it fails so)}: see _step_failed
        self._step_errors: dict[str, dict[str, tuple[str, float]]] = {}
        self._errors_lock = threading.Lock()  # the renewal thread notes errors too

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
            for cid, o in list(self._owned.items()):
                try:
                    self._drop(cid, release_lease=True)
                except Exception as err:  # the others are stopped and handed back all the same
                    log.error("camera stop failed camera_id=%s: %s", cid,
                              redacted_error(err, o.camera, with_traceback=True))
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
            for cid in sorted(lost):
                if cid in self._owned:
                    # Stopped first, whatever else fails: another worker holds the lease and runs the camera.
                    # The owner is only for the log line: reading it must not keep the camera running.
                    camera = self._owned[cid].camera
                    try:
                        self._drop(cid, release_lease=False)
                    except Exception as err:  # logged, never raised: the other lost cameras must stop too
                        log.error("camera stop failed camera_id=%s: %s", cid,
                                  redacted_error(err, camera, with_traceback=True))
                    try:
                        owner = self.store.lease_owner(cid)
                    except StoreUnavailable:
                        owner = "unknown"
                    log.warning("lease lost camera_id=%s owner=%s", cid, owner)
        ids = self.store.camera_ids()
        self._unreadable = {cid: e for cid, e in self._unreadable.items() if cid in ids}
        with self._errors_lock:
            self._step_errors = {cid: e for cid, e in self._step_errors.items() if cid in ids}
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
            try:
                self._renew_lease(cid, ttl)
            except Exception as err:
                self._step_failed(cid, "lease renewal", err)
            else:
                self._step_ok(cid, "lease renewal")

    def _renew_lease(self, cid: str, ttl: float) -> None:
        # a lease that expired meanwhile (e.g. Redis was down) is taken back unless another has it
        if self.store.renew_lease(cid, self.worker_id, ttl):
            return
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
                camera = self._owned[cid].camera
                try:
                    self._reconcile_one(cid, ids)
                except Exception as err:  # e.g. its config key holds another type: it keeps its version
                    self._step_failed(cid, "config reconcile", err, camera)
                else:
                    self._step_ok(cid, "config reconcile")

    def _reconcile_one(self, cid: str, ids: list[str]) -> None:
        cam, unreadable = self._read_camera(cid) if cid in ids else (None, False)
        if unreadable:
            return  # keep running the version we have (see _report)
        owned = self._owned[cid]
        if cam is None:
            log.info("camera removed camera_id=%s", cid)
            self._drop(cid, release_lease=True)
            self.publisher.discard_camera(cid)
        elif (cam.incarnation, cam.version) != (owned.camera.incarnation, owned.camera.version):
            self._apply(cid, cam)
        elif owned.retrying is not None:
            self._apply(cid, cam, again=True)  # the restart failed for a passing reason: the store is back, maybe
        elif isinstance(runner := owned.runner, FailedRunner) and runner.retry:
            owned.runner = self._make_runner(cam, previous=runner)  # the store is back, maybe

    def _trim_idle(self) -> None:
        """retention_s holds for cameras that stopped releasing too (disabled, failing): appends trim only
        while releases come."""
        with self._lock:
            retained = [(cid, o.camera.retention_s) for cid, o in self._owned.items() if o.camera.retention_s]
            for cid in set(self._owned) - {cid for cid, _ in retained}:
                self._step_ok(cid, "release trim")  # its retention_s is gone: so is the trim that failed
        for cid, retention_s in retained:
            try:
                self.store.trim_old_releases(cid, retention_s)
            except Exception as err:  # e.g. its releases key holds another type
                self._step_failed(cid, "release trim", err)
            else:
                self._step_ok(cid, "release trim")

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
            try:
                cam, _unreadable = self._read_camera(cid)  # an unreadable one is left to a worker that can read it
                if cam is not None and self.store.acquire_lease(cid, self.worker_id, self.settings.lease_ttl_s):
                    self._start_camera(cam)
            except Exception as err:  # e.g. its config key holds another type: the next camera is claimed
                self._step_failed(cid, "claim", err)
                continue
            self._step_ok(cid, "claim")
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

    def _apply(self, cid: str, cam: Camera, *, again: bool = False) -> None:
        """Apply a config version to a camera this worker runs. `again`: the same version once more, after
        its restart failed for a reason that passes (`Owned.retrying`)."""
        owned = self._owned.get(cid)
        # Versions order the changes of one camera. A camera deleted and created again under its id (a new
        # incarnation, version 1 again) is applied whatever the version: else a worker that missed the delete
        # would run the old settings until the new camera's version passed them. A stale read of the old one
        # after that is undone by the next heartbeat's reconcile, which reads the store.
        if owned is None or (not again and cam.incarnation == owned.camera.incarnation
                             and cam.version <= owned.camera.version):
            return
        if isinstance(owned.runner, FailedRunner):  # a new version may fix it: try again
            owned.runner = self._make_runner(cam)
            owned.camera = cam
            return
        # Always the runner that ran the camera, never a new one from the factory: its ledger holds every
        # spend, also those whose releases still wait in the publisher (the stored ledger lacks them).
        previous, owned.retrying = owned.retrying, None
        try:
            owned.runner.apply(cam)
        except Exception as err:  # the runner's status says what happened to the camera (see CameraRunner)
            reason = redacted_error(err, cam, owned.camera)
            if isinstance(err, StoreUnavailable):  # passes: applied again at every heartbeat (_reconcile)
                owned.retrying = (f"config version {cam.version} could not start: {reason}; retrying at every "
                                  "heartbeat, the budget kept")
            log.log(logging.DEBUG if owned.retrying is not None and owned.retrying == previous else logging.WARNING,
                    "camera config not applied camera_id=%s version=%s: %s%s", cid, cam.version, reason,
                    "; retrying at every heartbeat" if owned.retrying else "")
        else:
            log.info("camera config applied camera_id=%s version=%s%s", cid, cam.version,
                     " (retried)" if previous else "")
        owned.camera = cam  # applied or not, a version that cannot be is not retried unless it may pass

    def _drop(self, cid: str, *, release_lease: bool) -> None:
        """Stop a camera. With `release_lease` (a graceful hand-over) its queued releases are stored first,
        then its ledger, then the lease is handed back, so the next worker starts from the full ledger."""
        with self._ids_lock:
            self._owned_ids.discard(cid)
        with self._errors_lock:  # what failed for it here is no longer this worker's to report
            self._step_errors.pop(cid, None)
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
            try:
                owned.runner.save_state()
            except Exception as err:  # the last stored release carries a recent state; hand the lease back
                log.error("camera state not saved camera_id=%s: %s", cid,
                          redacted_error(err, owned.camera, with_traceback=True))
        with contextlib.suppress(StoreUnavailable):  # else it expires by itself
            self.store.release_lease(cid, self.worker_id)

    def _report(self) -> None:
        with self._lock:
            owned = list(self._owned.items())
        for cid, o in owned:
            try:
                self.store.set_status(cid, self._status_doc(cid, o), ttl_s=self.settings.lease_ttl_s * 3)
            except Exception as err:
                self._step_failed(cid, "status report", err, o.camera)
            else:
                self._step_ok(cid, "status report")

    def _status_doc(self, cid: str, o: Owned) -> dict[str, Any]:
        """The runner's status, with what the worker knows on top; a runner whose status cannot be read (it
        raises, or returns what the API could not read back) is FAILED, saying so."""
        try:
            doc = dict(o.runner.status())
            CameraStatus.model_validate({**doc, "id": cid})  # else the API's reads (list, /metrics) would fail
            json.dumps(doc)
        except Exception as err:
            reason = self._step_failed(cid, "status", err, o.camera)
            doc = {"state": "FAILED", "reason": f"the worker cannot read this camera's status: {reason}; it may "
                   "still be releasing, within its budget"}
        else:
            self._step_ok(cid, "status")
        if o.retrying is not None:  # the runner says why its restart failed; the worker says it retries
            doc["state"], doc["reason"] = "FAILED", o.retrying
        with self._errors_lock:  # (a failing status or report says so itself, or is not seen at all)
            failing = {step: e for step, e in self._step_errors.get(cid, {}).items()
                       if step not in ("status", "status report")}
        if failing:  # the latest of the steps failing for this camera alone
            step, (reason, since_s) = max(failing.items(), key=lambda kv: kv[1][1])
            doc["last_error"], doc["last_error_s"] = f"the worker's {step} fails for this camera: {reason}", since_s
        if cid in self._unreadable:  # the store holds a version we cannot read: say we still run ours
            reason, since_s = self._unreadable[cid]
            doc["last_error"] = (f"the stored config is unreadable ({reason}); still running version "
                                 f"{o.camera.version}")
            doc["last_error_s"] = since_s
        doc["updated_s"] = time.time()
        return doc

    # --- one camera's failure stays that camera's ------------------------------------------------
    def _step_failed(self, cid: str, step: str, err: Exception, *cameras: Camera | None) -> str:
        """Note that heartbeat `step` failed for camera `cid` alone, so that the caller carries on with the
        others; returns the redacted reason. Logged once per distinct error (with the traceback when it is
        not the store's) and shown on the camera's status until the step works again (`_step_ok`).

        Raises `StoreUnavailable` when the store itself is unreachable: then every camera would fail alike,
        each after a socket timeout, and it is the heartbeat's error, retried at the next one."""
        if isinstance(err, StoreUnavailable):
            self.store.ping()  # raises when the store is down; answers when the error was this camera's keys
        owned = self._owned.get(cid)
        cameras = (*cameras, owned.camera if owned else None)
        reason = redacted_error(err, *cameras)
        with self._errors_lock:
            steps = self._step_errors.setdefault(cid, {})
            repeated = step in steps and steps[step][0] == reason
            if not repeated:
                steps[step] = (reason, time.time())
        if repeated:
            log.debug("%s failed again camera_id=%s: %s", step, cid, reason)
        elif isinstance(err, StoreUnavailable):
            log.warning("%s failed camera_id=%s (the other cameras carry on): %s", step, cid, reason)
        else:  # a bug, or a runner's: the traceback says where
            log.error("%s failed camera_id=%s (the other cameras carry on): %s", step, cid,
                      redacted_error(err, *cameras, with_traceback=True))
        return reason

    def _step_ok(self, cid: str, step: str) -> None:
        with self._errors_lock:
            steps = self._step_errors.get(cid)
            if not steps or steps.pop(step, None) is None:
                return
            if not steps:
                del self._step_errors[cid]
        log.info("%s works again camera_id=%s", step, cid)

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
        try:
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
        except Exception as err:  # one camera's event: the subscription (every camera's) carries on
            log.error("config event failed camera_id=%s: %s", cid, redacted_error(err, *self._owned_cameras(),
                                                                                  with_traceback=True))
