"""Scale-out and failure: two worker processes share cameras through leases; one is killed and its cameras
move; Redis restarts and no acknowledged release is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from service.api import create_app
from service.settings import Settings
from service.store import SyncStore
from tests.service.conftest import ADMIN_TOKEN, LiveServer, free_port, start_valkey, wait_for
from tests.service.test_worker import KEYS, make_camera, releases_of, status_of

LEASE_TTL_S = 3.0
REPO = Path(__file__).resolve().parents[2]


def spawn_worker(redis_url: str, worker_id: str, log_path: Path, metrics_port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "DPSTREAM_LEASE_TTL_S": str(LEASE_TTL_S), "DPSTREAM_WORKER_ID": worker_id,
           "DPSTREAM_STALL_TIMEOUT_S": "3"}
    env.pop("REDIS_URL", None)
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--redis-url", redis_url,
                             "--metrics-port", str(metrics_port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc._log = log  # type: ignore[attr-defined]
    return proc


def reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    proc._log.close()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_killed_workers_cameras_are_taken_over_within_the_lease_ttl(
    admin: httpx.Client, redis_url: str, tmp_path: Path, dp_warm
) -> None:
    metrics_ports = {"w1": free_port(), "w2": free_port()}
    workers = {wid: spawn_worker(redis_url, wid, tmp_path / f"{wid}.log", metrics_ports[wid]) for wid in ("w1", "w2")}
    try:
        for cid in ("a", "b"):
            make_camera(admin, cid)
        # fair share: each worker ends up with one camera, both streaming
        owners = wait_for(
            lambda: (o := {c: status_of(admin, c)["worker"] for c in ("a", "b")})
            and set(o.values()) == {"w1", "w2"}
            and all(releases_of(admin, c) for c in ("a", "b")) and o,
            timeout_s=180, interval_s=0.2, what="one streaming camera per worker")  # incl. a cold JIT
        victim, survivor = owners["a"], owners["b"]
        # each worker process serves its own counters (the API serves the per-camera gauges)
        for wid, cid in ((victim, "a"), (survivor, "b")):
            text = httpx.get(f"http://127.0.0.1:{metrics_ports[wid]}/metrics").text
            assert f'dpstream_frames_released_total{{camera="{cid}"}}' in text
        workers[victim].kill()  # SIGKILL: no chance to hand the lease back
        killed_at = time.monotonic()
        workers[victim].wait(timeout=10)
        last_before = releases_of(admin, "a", limit=1000)[-1]["entry_id"]  # nothing is stored after the kill

        wait_for(lambda: status_of(admin, "a")["worker"] == survivor, timeout_s=LEASE_TTL_S + 5,
                 interval_s=0.05, what="takeover")
        takeover_s = time.monotonic() - killed_at
        assert takeover_s <= LEASE_TTL_S + 1.5, takeover_s  # expiry, then the wake-up set to it
        wait_for(lambda: releases_of(admin, "a", since=last_before), timeout_s=20,
                 what="releases after the takeover")
        assert status_of(admin, "b")["worker"] == survivor
        assert workers[survivor].poll() is None
    finally:
        for proc in workers.values():
            reap(proc)


@pytest.mark.slow
def test_redis_restart_loses_no_acknowledged_release(tmp_path: Path, dp_warm) -> None:
    from service.models import Camera
    from service.worker_process import WorkerProcess

    port = free_port()
    server = start_valkey(tmp_path / "valkey", port=port)
    url = f"redis://127.0.0.1:{port}/0"
    store = SyncStore(url)
    store.put_camera(Camera(id="ball", source="test:ball?width=160&height=120&fps=10", release_fps=5.0,
                            eps_window=1000.0, window_s=10.0, retention_releases=100_000))
    settings = Settings(redis_url=url, worker_id="w-restart", lease_ttl_s=2.0, admin_token=ADMIN_TOKEN)
    worker = WorkerProcess(settings)
    worker.start()
    api = LiveServer(create_app(settings))
    client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    r = redis.Redis.from_url(url)
    try:
        wait_for(lambda: r.xlen(KEYS.releases("ball")) >= 5, timeout_s=30, what="releases before")
        assert client.get("/readyz").status_code == 200
        server.stop()  # SIGTERM: the append-only file is flushed
        down_at = time.monotonic()
        wait_for(lambda: worker.publisher.buffered >= 3, timeout_s=15, what="releases buffered while down")
        assert client.get("/readyz").status_code == 503
        assert client.get("/api/v1/cameras/ball/releases/latest").status_code in (200, 503)  # cached or 503
        acknowledged_before = {eid for eid in worker.publisher.last_entry_ids.values()}
        server = start_valkey(tmp_path / "valkey", port=port)
        wait_for(lambda: worker.publisher.buffered == 0 and worker.publisher.store_ok, timeout_s=20,
                 what="buffer flushed")
        n_after_flush = r.xlen(KEYS.releases("ball"))
        wait_for(lambda: r.xlen(KEYS.releases("ball")) > n_after_flush + 2, timeout_s=20,
                 what="new releases after the restart")
        assert time.monotonic() - down_at < 60
        wait_for(lambda: worker.camera_ids == ["ball"], timeout_s=10, what="lease kept or retaken")
        # the API reconnects by itself and serves the releases stored after the restart
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout_s=10, what="API ready again")
        latest = client.get("/api/v1/cameras/ball/releases/latest", params={"format": "json"}).json()
        stored_ids = {e[0].decode() for e in r.xrange(KEYS.releases("ball"))}
        assert latest["camera_id"] == "ball" and latest["entry_id"] in stored_ids
        assert client.get("/api/v1/cameras/ball/status").json()["state"] == "STREAMING"
    finally:
        client.close()
        api.close()
        worker.stop()  # drains the publisher
        stored = r.xlen(KEYS.releases("ball"))
        ids = {e[0].decode() for e in r.xrange(KEYS.releases("ball"))}
        r.close()
        store.close()
        server.stop()
    pub = worker.publisher
    assert pub.dropped == 0
    assert pub.submitted == pub.acknowledged == stored  # every release made it, none twice
    assert acknowledged_before <= ids


def test_a_worker_joining_late_gets_its_share_and_keeps_it(settings: Settings, dp_warm) -> None:
    """The first worker takes both cameras; a second joins; one camera moves to it and stays there.

    The handed-back camera must not be taken back by the worker that handed it over (a tick of its own,
    woken by the camera it just stopped, came long before the newcomer's next heartbeat: it did, forever).
    """
    from service.models import Camera
    from service.worker_process import WorkerProcess

    store = SyncStore(settings.redis_url, prefix=settings.key_prefix)
    first = WorkerProcess(settings.model_copy(update={"worker_id": "first"}))
    late = WorkerProcess(settings.model_copy(update={"worker_id": "late"}))
    try:
        first.start()
        for cid in ("a", "b"):
            store.put_camera(Camera(id=cid, source="test:ball?width=160&height=120&fps=10"))
        wait_for(lambda: first.camera_ids == ["a", "b"], timeout_s=20, what="the first worker holding both")
        late.start()
        wait_for(lambda: len(late.camera_ids) == 1 and len(first.camera_ids) == 1, timeout_s=15,
                 interval_s=0.05, what="one camera each")
        held = (first.camera_ids, late.camera_ids)
        time.sleep(4 * settings.heartbeat_interval_s)  # and nothing moves afterwards
        assert (first.camera_ids, late.camera_ids) == held
        assert {store.lease_owner(c) for c in ("a", "b")} == {"first", "late"}
    finally:
        late.stop()
        first.stop()
        store.close()


def test_the_private_restream_shows_only_releases_redis_has_counted(tmp_path: Path, dp_warm) -> None:
    """While Redis is unreachable a worker may still release into its store buffer, but a viewer must not see
    those releases: a worker taking the camera over meanwhile would start from the stored ledger, and the two
    together would overspend the window."""
    from service.models import Camera
    from service.worker_process import WorkerProcess
    from streams.rtsp_server import LocalRtspServer

    port = free_port()
    server = start_valkey(tmp_path / "valkey", port=port)
    url = f"redis://127.0.0.1:{port}/0"
    store = SyncStore(url)
    store.put_camera(Camera(id="ball", source="test:ball?width=160&height=120&fps=10", release_fps=5.0,
                            eps_window=1000.0, window_s=10.0))
    rtsp = LocalRtspServer(port=0).start()
    worker = WorkerProcess(Settings(redis_url=url, worker_id="w-private", lease_ttl_s=2.0), rtsp_server=rtsp)
    worker.start()
    try:
        mount = wait_for(lambda: (o := worker._owned.get("ball")) and getattr(o.runner, "_private", None),
                         timeout_s=30, what="the private mount")
        wait_for(lambda: mount.releases_seen >= 3, timeout_s=30, what="stored releases on the mount")
        assert mount.releases_seen <= worker.publisher.acknowledged
        server.stop()
        wait_for(lambda: worker.publisher.buffered >= 3, timeout_s=15, what="releases buffered while down")
        seen_while_down = mount.releases_seen
        acknowledged = worker.publisher.acknowledged
        wait_for(lambda: worker.publisher.buffered >= 5, timeout_s=15, what="more releases buffered")
        assert mount.releases_seen == seen_while_down <= acknowledged  # none of the buffered ones was shown
        server = start_valkey(tmp_path / "valkey", port=port)
        wait_for(lambda: worker.publisher.buffered == 0 and mount.releases_seen > seen_while_down, timeout_s=30,
                 what="the buffered releases shown once stored")
    finally:
        worker.stop()
        rtsp.stop()
        store.close()
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["comes back", "never comes back"])
def test_after_a_redis_restart_each_worker_keeps_its_own_cameras(tmp_path: Path, dp_warm, peer: str) -> None:
    """Redis comes back empty of leases and liveness (they expired while it was down). The worker that
    reconnects first sees itself as the only live worker; it must not take the cameras of a peer that
    reconnects a moment later (each would stop and start again, a gap of seconds in its releases). A peer
    that died meanwhile still loses its cameras, one lease TTL later."""
    from service.models import Camera

    port = free_port()
    server = start_valkey(tmp_path / "valkey", port=port)
    url = f"redis://127.0.0.1:{port}/0"
    store = SyncStore(url)
    for cid in ("a", "b"):
        store.put_camera(Camera(id=cid, source="test:ball?width=160&height=120&fps=10", release_fps=5.0,
                                eps_window=1000.0, window_s=10.0))
    logs = {wid: tmp_path / f"{wid}.log" for wid in ("w1", "w2")}
    workers = {wid: spawn_worker(url, wid, logs[wid]) for wid in ("w1", "w2")}
    try:
        owners = wait_for(lambda: (o := {c: store.lease_owner(c) for c in ("a", "b")})
                          and set(o.values()) == {"w1", "w2"} and o,
                          timeout_s=180, interval_s=0.2, what="one camera per worker")  # incl. a cold JIT
        fast_cam, slow_cam = "a", "b"
        fast, slow = owners[fast_cam], owners[slow_cam]
        claims = lambda: {wid: log.read_text().count("camera claimed") for wid, log in logs.items()}  # noqa: E731
        # the log line follows the lease (once the runner exists): count from when both are written
        wait_for(lambda: all(f"camera claimed camera_id={c} worker_id={w}" in logs[w].read_text()
                             for c, w in owners.items()), timeout_s=30, interval_s=0.05, what="each claim logged")
        claimed_before = claims()
        server.stop()
        time.sleep(LEASE_TTL_S + 1.0)  # Redis stays down until every lease and liveness key has expired
        workers[slow].send_signal(signal.SIGSTOP)  # the slow worker reconnects late
        try:
            server = start_valkey(tmp_path / "valkey", port=port)
            assert store.lease_owner(slow_cam) is None  # expired while Redis was down
            wait_for(lambda: store.lease_owner(fast_cam) == fast, timeout_s=15, interval_s=0.05,
                     what="the fast worker back")
            back_at = time.monotonic()
            # while the slow worker is still away (half a lease TTL), its camera is not taken
            while time.monotonic() < back_at + LEASE_TTL_S / 2:
                assert store.lease_owner(slow_cam) in (None, slow)
                time.sleep(0.05)
            if peer == "never comes back":
                workers[slow].kill()
                workers[slow].wait(timeout=10)
        finally:
            workers[slow].send_signal(signal.SIGCONT)
        if peer == "comes back":
            wait_for(lambda: store.lease_owner(slow_cam) == slow, timeout_s=15, interval_s=0.05,
                     what="the slow worker holding its camera again")
            assert {c: store.lease_owner(c) for c in ("a", "b")} == owners
            assert claims() == claimed_before  # no camera was started again anywhere
        else:
            wait_for(lambda: store.lease_owner(slow_cam) == fast, timeout_s=LEASE_TTL_S + 5, interval_s=0.05,
                     what="the dead peer's camera taken over")
            assert time.monotonic() - back_at <= LEASE_TTL_S + 2.0  # the rejoin wait, then the next tick
            wait_for(lambda: claims()[fast] == claimed_before[fast] + 1, timeout_s=10, what="its log line")
    finally:
        for proc in workers.values():
            reap(proc)
        store.close()
        server.stop()
