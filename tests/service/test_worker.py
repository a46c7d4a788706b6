"""A real worker ingesting test-pattern cameras through streams/, releasing into a real Valkey, read back
over real HTTP."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
import redis
from PIL import Image

from dp import Release
from service.keys import Keys
from service.settings import Settings
from tests.service.conftest import wait_for

KEYS = Keys()

BALL = "test:ball?width=160&height=120&fps=10"
RAW_FRAME_BYTES = 160 * 120 * 3


def make_camera(admin: httpx.Client, camera_id: str, **overrides) -> dict:
    body = {"id": camera_id, "source": BALL, "release_fps": 5.0, "eps_window": 100.0, "window_s": 10.0,
            **overrides}
    r = admin.post("/api/v1/cameras", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def status_of(admin: httpx.Client, camera_id: str) -> dict:
    return admin.get(f"/api/v1/cameras/{camera_id}/status").json()


def releases_of(admin: httpx.Client, camera_id: str, **params) -> list[dict]:
    r = admin.get(f"/api/v1/cameras/{camera_id}/releases", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_worker_releases_a_test_camera_end_to_end(admin: httpx.Client, worker) -> None:
    make_camera(admin, "ball")
    wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=20, what="STREAMING")
    wait_for(lambda: len(releases_of(admin, "ball")) >= 3, timeout_s=20, what="3 releases")
    st = status_of(admin, "ball")
    assert st["worker"] == "test-worker" and st["frames_ingested"] > 0

    r = admin.get("/api/v1/cameras/ball/releases/latest")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    rel = Release.from_bytes(r.content)
    assert (rel.camera_id, rel.height, rel.width, rel.channels) == ("ball", 120, 160, 3)
    summary = admin.get("/api/v1/cameras/ball/releases/latest", params={"format": "json"}).json()
    assert summary["size_bytes"] == len(r.content) or summary["frame_index"] >= rel.frame_index

    listed = releases_of(admin, "ball")
    one = admin.get(f"/api/v1/cameras/ball/releases/{listed[0]['entry_id']}")
    assert one.status_code == 200 and Release.from_bytes(one.content).frame_index == listed[0]["frame_index"]
    later = releases_of(admin, "ball", since=listed[0]["entry_id"])
    assert [x["entry_id"] for x in later][: len(listed) - 1] == [x["entry_id"] for x in listed[1:]]

    jpg = admin.get("/api/v1/cameras/ball/frame.jpg")
    assert jpg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpg.content)).size == (160, 120)


def test_yuv420_camera_is_released_from_the_decoders_planes(admin: httpx.Client, worker) -> None:
    """color=yuv420 over the API: the worker ingests I420, stores YUV releases, serves RGB previews."""
    make_camera(admin, "yuv", color="yuv420")
    wait_for(lambda: len(releases_of(admin, "yuv")) >= 2, timeout_s=20, what="2 releases")
    rel = Release.from_bytes(admin.get("/api/v1/cameras/yuv/releases/latest").content)
    assert rel.color == "yuv420" and (rel.height, rel.width, rel.channels) == (120, 160, 3)
    assert rel.layout_mode == "previous"  # the camera default: adaptive at no privacy cost
    jpg = admin.get("/api/v1/cameras/yuv/frame.jpg")
    assert Image.open(io.BytesIO(jpg.content)).size == (160, 120)
    bad = admin.post("/api/v1/cameras", json={"id": "odd", "source": BALL, "color": "yuv420", "layout": "fixed",
                                              "cell_size": 5})
    assert bad.status_code == 422 and "even" in bad.text


def test_mjpeg_stream_sends_release_frames(admin: httpx.Client, worker) -> None:
    make_camera(admin, "ball")
    wait_for(lambda: releases_of(admin, "ball"), timeout_s=20, what="a release")
    with admin.stream("GET", "/api/v1/cameras/ball/stream.mjpeg", params={"max_frames": 3}) as r:
        assert r.headers["content-type"].startswith("multipart/x-mixed-replace")
        body = b"".join(r.iter_bytes())
    assert body.count(b"Content-Type: image/jpeg") == 3


def test_an_open_mjpeg_stream_ends_once_its_key_is_revoked(admin: httpx.Client, worker, redis_url: str) -> None:
    import time

    from service.api.releases import STREAM_REAUTH_S
    from service.auth import create_token, revoke_token
    from service.store import SyncStore

    store = SyncStore(redis_url)
    key = create_token(store, "read", name="viewer")
    make_camera(admin, "ball", release_fps=10.0)
    wait_for(lambda: releases_of(admin, "ball"), timeout_s=20, what="a release")
    revoked_at = None
    viewer = httpx.Client(base_url=admin.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    with viewer, viewer.stream("GET", "/api/v1/cameras/ball/stream.mjpeg") as r:
        assert r.status_code == 200
        for _ in r.iter_bytes():
            if revoked_at is None:
                revoke_token(store, key)
                revoked_at = time.monotonic()
            assert time.monotonic() - revoked_at < 4 * STREAM_REAUTH_S, "still streaming to a revoked key"
    assert time.monotonic() - revoked_at < 2 * STREAM_REAUTH_S + 2.0  # the next check, after the 2 s cache
    store.close()


def test_patch_applies_live_to_the_running_camera(admin: httpx.Client, worker) -> None:
    make_camera(admin, "ball", eps_pix=1.0)
    wait_for(lambda: releases_of(admin, "ball"), timeout_s=20, what="a release")
    assert admin.patch("/api/v1/cameras/ball", json={"eps_pix": 0.5, "m_pixels": 4}).status_code == 200

    def new_spec_in_use() -> bool:
        r = admin.get("/api/v1/cameras/ball/releases/latest")
        rel = Release.from_bytes(r.content)
        return rel.eps_pix == 0.5 and rel.m_pixels == 4

    wait_for(new_spec_in_use, timeout_s=15, what="releases with the patched spec")
    assert status_of(admin, "ball")["worker"] == "test-worker"


def test_ledger_never_overspends_the_window(admin: httpx.Client, worker) -> None:
    make_camera(admin, "ball", eps_pix=1.0, eps_window=3.0, window_s=600.0, release_fps=10.0)
    wait_for(lambda: status_of(admin, "ball")["frames_over_budget"] >= 5, timeout_s=20, what="refused frames")
    assert len(releases_of(admin, "ball")) == 3  # 3 x eps 1.0 fill the window; nothing more is stored
    b = admin.get("/api/v1/cameras/ball/budget").json()
    assert (b["eps_spent"], b["eps_remaining"]) == (3.0, 0.0)
    assert b["guarantee"] == {"eps_window": 3.0, "m_pixels": 16, "window_s": 600.0}


def test_unreachable_camera_is_a_state_with_a_redacted_reason(admin: httpx.Client, worker, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    make_camera(admin, "gone", source="rtsp://admin:s3cret-pw@127.0.0.1:1/live")
    make_camera(admin, "ball")
    st = wait_for(lambda: (s := status_of(admin, "gone"))["state"] in ("RECONNECTING", "FAILED") and s,
                  timeout_s=20, what="RECONNECTING or FAILED")
    assert st["reason"] and "s3cret-pw" not in st["reason"]
    st = wait_for(lambda: (s := status_of(admin, "gone"))["last_error"] and s, timeout_s=10, what="last_error")
    assert "s3cret-pw" not in st["last_error"] and st["last_error_s"] > 0
    # the worker is alive and keeps the healthy camera streaming
    wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=20, what="healthy camera")
    assert "s3cret-pw" not in admin.get("/api/v1/cameras/gone").text
    assert caplog.records and "s3cret-pw" not in caplog.text  # nor in any log line of worker or API


def test_deleted_camera_is_stopped_and_its_lease_released(admin: httpx.Client, worker, redis_url: str) -> None:
    make_camera(admin, "ball")
    wait_for(lambda: worker.camera_ids == ["ball"], timeout_s=20, what="claim")
    assert admin.delete("/api/v1/cameras/ball").status_code == 204
    wait_for(lambda: worker.camera_ids == [], timeout_s=10, what="camera stopped")
    r = redis.Redis.from_url(redis_url)
    assert r.get(KEYS.lease("ball")) is None and r.xlen(KEYS.releases("ball")) == 0
    assert r.exists(KEYS.ledger("ball"))  # kept for one window: recreating cannot reset the budget


def test_disabled_camera_is_not_run(admin: httpx.Client, worker) -> None:
    make_camera(admin, "ball", enabled=False)
    wait_for(lambda: status_of(admin, "ball")["state"] == "DISABLED", timeout_s=10, what="DISABLED")
    assert admin.patch("/api/v1/cameras/ball", json={"enabled": True}).status_code == 200
    wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=20, what="re-enabled")


def test_no_redis_value_holds_a_raw_frame(admin: httpx.Client, worker, redis_url: str) -> None:
    make_camera(admin, "ball", cell_size=8)
    wait_for(lambda: len(releases_of(admin, "ball")) >= 5, timeout_s=20, what="releases")
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter("*"):
        kind = r.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [r.get(key)]
        elif kind == b"hash":
            values = list(r.hgetall(key).values())
        elif kind == b"stream":
            values = [v for _id, f in r.xrange(key) for v in f.values()]
        for v in values:
            # 8 px cells hold 1/64 of the pixels; anything near a raw frame's size would be a leak
            assert len(v) < RAW_FRAME_BYTES / 8, key
        if kind == b"stream":
            fields = {k for _id, f in r.xrange(key) for k in f}
            assert fields == {b"r", b"camera_id", b"frame_index", b"timestamp_s", b"height", b"width",
                              b"channels", b"layout", b"eps_spent"}


def test_metrics_show_counters_budget_and_health(admin: httpx.Client, worker, anon: httpx.Client) -> None:
    make_camera(admin, "ball")
    wait_for(lambda: len(releases_of(admin, "ball")) >= 2, timeout_s=20, what="releases")
    text = anon.get("/metrics").text
    assert 'dpstream_camera_health_state{camera="ball",state="STREAMING"} 1.0' in text
    for name in ("dpstream_frames_released_total", "dpstream_release_latency_seconds_bucket",
                 "dpstream_camera_epsilon_spent", "dpstream_camera_budget_remaining",
                 "dpstream_api_request_duration_seconds_bucket", "dpstream_redis_errors_total"):
        assert name in text, name


def test_a_deleted_cameras_series_leave_the_metrics(admin: httpx.Client, worker, anon: httpx.Client) -> None:
    make_camera(admin, "short-lived")
    wait_for(lambda: len(releases_of(admin, "short-lived")) >= 2, timeout_s=20, what="releases")
    wait_for(lambda: 'dpstream_frames_ingested_total{camera="short-lived"}' in anon.get("/metrics").text,
             timeout_s=10, what="its counters")  # the runner adds its counts at its status refresh
    assert admin.delete("/api/v1/cameras/short-lived").status_code == 204
    wait_for(lambda: worker.camera_ids == [], timeout_s=10, what="the worker dropping it")
    text = anon.get("/metrics").text
    assert 'camera="short-lived"' not in text, [line for line in text.splitlines() if "short-lived" in line]


@pytest.mark.parametrize("layout", ["fixed", "previous"])
def test_layout_modes_run_in_the_worker(admin: httpx.Client, worker, layout: str) -> None:
    make_camera(admin, "ball", layout=layout)
    wait_for(lambda: releases_of(admin, "ball"), timeout_s=20, what="a release")
    assert releases_of(admin, "ball")[0]["layout"] == layout


def test_budget_carries_over_to_the_next_worker(admin: httpx.Client, settings, dp_warm) -> None:
    """A camera moving to another worker keeps its ledger: a takeover cannot reset the window's budget."""
    from service.worker_process import WorkerProcess

    make_camera(admin, "ball", eps_pix=1.0, eps_window=3.0, window_s=600.0, release_fps=10.0)
    first = WorkerProcess(settings.model_copy(update={"worker_id": "first"}))
    first.start()
    try:
        wait_for(lambda: status_of(admin, "ball")["frames_over_budget"] >= 3, timeout_s=20, what="budget spent")
    finally:
        first.stop()
    second = WorkerProcess(settings.model_copy(update={"worker_id": "second"}))
    second.start()
    try:
        wait_for(lambda: (s := status_of(admin, "ball"))["worker"] == "second" and s["frames_over_budget"] >= 5,
                 timeout_s=20, what="the second worker refusing frames")
        assert len(releases_of(admin, "ball")) == 3
        assert admin.get("/api/v1/cameras/ball/budget").json()["eps_remaining"] == 0.0
    finally:
        second.stop()


def test_grey_camera_serves_a_grey_jpeg(admin: httpx.Client, worker) -> None:
    make_camera(admin, "grey", channels=1)
    wait_for(lambda: releases_of(admin, "grey"), timeout_s=20, what="a release")
    img = Image.open(io.BytesIO(admin.get("/api/v1/cameras/grey/frame.jpg").content))
    assert (img.mode, img.size) == ("L", (160, 120))
    assert releases_of(admin, "grey")[0]["channels"] == 1


def test_a_camera_created_again_under_its_id_runs_its_own_settings(admin: httpx.Client, worker,
                                                                   redis_url: str) -> None:
    from service.models import Camera

    make_camera(admin, "gate", eps_pix=5.0)
    for fps in (4.0, 3.0, 5.0):  # version 4
        assert admin.patch("/api/v1/cameras/gate", json={"release_fps": fps}).status_code == 200
    wait_for(lambda: any(r["eps_spent"] == 5.0 for r in releases_of(admin, "gate")), timeout_s=20,
             what="releases at eps 5")
    # Deleted and created again while the worker's pub/sub connection was down: the worker hears of neither,
    # and the new camera starts at version 1. Written straight to Redis, as the API would, minus the events.
    r = redis.Redis.from_url(redis_url)
    old = Camera.model_validate_json(r.get(KEYS.camera("gate")))
    new = old.model_copy(update={"version": 1, "incarnation": "a-new-one", "eps_pix": 1.0, "eps_window": 3.0})
    r.set(KEYS.camera("gate"), new.model_dump_json())
    mark = releases_of(admin, "gate", limit=1000)[-1]["entry_id"]
    wait_for(lambda: (fresh := releases_of(admin, "gate", since=mark)) and fresh[-1]["eps_spent"] == 1.0,
             timeout_s=15, what="the new camera's eps_pix in its releases")


def test_the_private_restream_asks_for_the_configured_credentials(settings: Settings, dp_warm) -> None:
    """DPSTREAM_RTSP_USER/PASSWORD: the /private mounts of a worker play only with them, as the API's releases
    need a token; the status advertises the mount without them."""
    from dp.errors import IngestError
    from service.models import Camera
    from service.store import SyncStore
    from service.worker_process import WorkerProcess, start_rtsp_server
    from streams.ingest import iter_frames

    s = Settings(redis_url=settings.redis_url, lease_ttl_s=2.0, worker_id="w-rtsp-auth", rtsp_user="viewer",
                 rtsp_password="correct-horse")
    store = SyncStore(s.redis_url)
    store.put_camera(Camera(id="ball", source=BALL, release_fps=5.0, eps_window=1000.0, window_s=10.0))
    rtsp = start_rtsp_server(s, 0)
    worker = WorkerProcess(s, rtsp_server=rtsp)
    worker.start()
    try:
        mount = wait_for(lambda: (o := worker._owned.get("ball")) and getattr(o.runner, "_private", None),
                         timeout_s=30, what="the private mount")
        wait_for(lambda: mount.releases_seen >= 2, timeout_s=30, what="releases on the mount")
        url = wait_for(lambda: (raw := store.redis.get(store.keys.status("ball"))) and json.loads(raw).get(
            "private_rtsp"), timeout_s=10, what="the advertised mount")
        assert url == rtsp.public_url("/ball/private") and "viewer" not in url
        with pytest.raises(IngestError, match="credentials refused"):
            list(iter_frames(url, max_frames=1, first_frame_timeout_s=10))
        frames = list(iter_frames(rtsp.url("/ball/private", user="viewer", password="correct-horse"),
                                  max_frames=2, first_frame_timeout_s=20))
        assert [f.array.shape for f in frames] == [(120, 160, 3)] * 2
    finally:
        worker.stop()
        rtsp.stop()
        store.close()


@pytest.mark.parametrize("env", [{"rtsp_user": "viewer"}, {"rtsp_user": "viewer", "rtsp_password": "short"}])
def test_rtsp_credentials_come_in_pairs_of_a_usable_length(env: dict) -> None:
    with pytest.raises(ValueError, match="DPSTREAM_RTSP_"):
        Settings(**env)
