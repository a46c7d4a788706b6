"""Config versions a worker cannot apply, against a real worker, Valkey, GStreamer and HTTP: the status says
what happened (never DISABLED for an enabled camera), no log line or status quotes a camera's credentials,
and the camera's ledger keeps every spend."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import redis

from service.keys import Keys
from service.settings import Settings
from service.store import SyncStore
from tests.service.conftest import wait_for
from tests.service.test_worker import BALL, make_camera, releases_of, status_of

KEYS = Keys()
PASSWORD = "s3cret-pw"
SECRET_SOURCE = f"rtsp://admin:{PASSWORD}@127.0.0.1:1/live"


def stored_status(r: redis.Redis, camera_id: str) -> dict:
    raw = r.get(KEYS.status(camera_id))
    return json.loads(raw) if raw else {}


def cuda_usable() -> bool:
    from dp.pixelizer import make_backend

    try:
        make_backend("cuda")
    except Exception:
        return False
    return True


def test_an_unreadable_stored_config_is_skipped_and_never_quoted(admin: httpx.Client, worker, redis_url: str,
                                                                 caplog) -> None:
    """A config this version's model refuses (hand-written, or by another dpstream version) quotes its values
    in pydantic's error: with an RTSP password in its source. The worker keeps running what it has, claims
    the other cameras, and says so without the password."""
    caplog.set_level(logging.DEBUG)
    make_camera(admin, "ball")
    wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=30, what="STREAMING")
    r = redis.Redis.from_url(redis_url)
    bad = json.loads(r.get(KEYS.camera("ball")))
    bad.update(version=bad["version"] + 1, source=SECRET_SOURCE + " main")  # a space: the model refuses it
    r.set(KEYS.camera("ball"), json.dumps(bad))
    r.set(KEYS.camera("aaa-bad"), json.dumps({**bad, "id": "aaa-bad", "version": 1}))  # listed first
    r.sadd(KEYS.cameras, "aaa-bad")
    make_camera(admin, "late")

    wait_for(lambda: status_of(admin, "late")["state"] == "STREAMING", timeout_s=30,
             what="the camera listed after the unreadable ones streaming")
    st = wait_for(lambda: (s := stored_status(r, "ball")).get("last_error") and s, timeout_s=10,
                  what="the running camera's status naming the unreadable config")
    assert st["state"] == "STREAMING" and "still running version 1" in st["last_error"]
    assert "source" in st["last_error"] and PASSWORD not in json.dumps(st)
    first = st["updated_s"]
    wait_for(lambda: stored_status(r, "ball")["updated_s"] > first, timeout_s=10, what="status still reported")
    assert worker.camera_ids == ["ball", "late"]  # the unreadable one is left to a worker that can read it
    assert r.get(KEYS.status("aaa-bad")) is None
    assert any("config unreadable camera_id=aaa-bad" in m for m in caplog.messages)
    assert PASSWORD not in caplog.text
    r.close()


def test_a_version_dp_refuses_keeps_the_running_one_and_says_so(admin: httpx.Client, worker, redis_url: str,
                                                                caplog) -> None:
    """A stored config the API never checked (SyncStore.put_camera, as `dpstream up` and the CLI write, or one
    that an upgraded dp refuses): the previous version keeps releasing, the status names the refused version,
    and a later good version is applied."""
    caplog.set_level(logging.DEBUG)
    make_camera(admin, "ball", eps_pix=1.0, release_fps=5.0)
    wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=30, what="STREAMING")
    wait_for(lambda: releases_of(admin, "ball"), timeout_s=30, what="a release")
    store = SyncStore(redis_url)
    try:
        cam = store.get_camera("ball")
        store.put_camera(cam.model_copy(update={"version": 2, "eps_pix": 50.0, "eps_window": 10.0,
                                                "source": SECRET_SOURCE}))
        st = wait_for(lambda: (s := status_of(admin, "ball"))["last_error"] and s, timeout_s=15,
                      what="the refusal in the status")
        assert st["state"] == "STREAMING" and "config version 2 refused" in st["last_error"]
        assert "eps_window" in st["last_error"] and "version 1 stays in effect" in st["last_error"]
        mark = releases_of(admin, "ball", limit=1000)[-1]["entry_id"]
        wait_for(lambda: releases_of(admin, "ball", since=mark), timeout_s=15, what="version 1 still releasing")
        assert {x["eps_spent"] for x in releases_of(admin, "ball", limit=1000)} == {1.0}

        store.put_camera(cam.model_copy(update={"version": 3, "eps_pix": 0.5}))
        wait_for(lambda: (fresh := releases_of(admin, "ball", since=mark, limit=1000)) and
                 fresh[-1]["eps_spent"] == 0.5, timeout_s=15, what="version 3 applied")
    finally:
        store.close()
    assert PASSWORD not in caplog.text


@pytest.mark.skipif(cuda_usable(), reason="needs a machine where backend='cuda' cannot start")
def test_a_restart_that_cannot_start_is_failed_not_disabled_and_keeps_the_budget(
        admin: httpx.Client, settings: Settings, dp_warm, caplog) -> None:
    """Enabling a camera restarts its pipeline. On a worker whose pipeline cannot start (here backend='cuda'
    without a GPU), the camera, enabled, is FAILED with the reason, and it says so without the source's
    password. The ledger it holds (a spent window) reaches the next worker whole."""
    from service.worker_process import WorkerProcess

    caplog.set_level(logging.DEBUG)
    make_camera(admin, "cam", eps_pix=1.0, eps_window=2.0, window_s=600.0, release_fps=10.0)
    first = WorkerProcess(settings.model_copy(update={"worker_id": "first"}))
    first.start()
    try:
        wait_for(lambda: status_of(admin, "cam")["frames_over_budget"] >= 2, timeout_s=30, what="budget spent")
    finally:
        first.stop()
    assert len(releases_of(admin, "cam")) == 2
    assert admin.patch("/api/v1/cameras/cam", json={"enabled": False}).status_code == 200  # version 2

    cudaless = WorkerProcess(settings.model_copy(update={"worker_id": "cuda-less", "backend": "cuda"}))
    cudaless.start()
    try:
        wait_for(lambda: (s := status_of(admin, "cam"))["worker"] == "cuda-less" and s["state"] == "DISABLED",
                 timeout_s=15, what="the disabled camera claimed")
        r = admin.patch("/api/v1/cameras/cam", json={"enabled": True, "source": SECRET_SOURCE})  # version 3
        assert r.status_code == 200
        st = wait_for(lambda: (s := status_of(admin, "cam"))["state"] not in ("DISABLED", "STARTING") and s,
                      timeout_s=15, what="the enabled camera's state")
        assert st["state"] == "FAILED", st
        assert "config version 3 could not start" in st["reason"] and "backend='cuda'" in st["reason"]
        assert PASSWORD not in json.dumps(st)
        assert admin.get("/api/v1/cameras/cam/budget").json()["eps_remaining"] == 0.0
        assert admin.patch("/api/v1/cameras/cam", json={"eps_pix": 0.9}).status_code == 200  # version 4
        wait_for(lambda: "config version 4 could not start" in (status_of(admin, "cam")["reason"] or ""),
                 timeout_s=15, what="the next version tried again")
    finally:
        cudaless.stop()
    assert admin.patch("/api/v1/cameras/cam", json={"source": BALL, "eps_pix": 1.0}).status_code == 200

    third = WorkerProcess(settings.model_copy(update={"worker_id": "third"}))
    third.start()
    try:
        wait_for(lambda: (s := status_of(admin, "cam"))["worker"] == "third" and s["frames_over_budget"] >= 3,
                 timeout_s=30, what="the next worker refusing frames of the spent window")
        assert len(releases_of(admin, "cam")) == 2  # the failed versions lost no spend
    finally:
        third.stop()
    assert PASSWORD not in caplog.text


def test_a_camera_whose_ledger_cannot_be_read_starts_once_it_can(admin: httpx.Client, worker, redis_url: str,
                                                                  caplog) -> None:
    """The store answers with an error when a claimed camera's ledger is read (here a key of the wrong type,
    a real Valkey error, as a Redis blip at that moment would be): the camera is FAILED, never started
    without its ledger, and starts at a later heartbeat once the ledger reads, with no config change."""
    caplog.set_level(logging.DEBUG)
    r = redis.Redis.from_url(redis_url)
    r.hset(KEYS.ledger("ball"), "not", "a ledger")
    make_camera(admin, "ball")
    st = wait_for(lambda: (s := status_of(admin, "ball"))["state"] == "FAILED" and s, timeout_s=15,
                  what="FAILED")
    assert r.xlen(KEYS.releases("ball")) == 0
    failures = sum("camera failed to start camera_id=ball" in m for m in caplog.messages)
    r.delete(KEYS.ledger("ball"))
    wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=30, what="STREAMING")
    wait_for(lambda: releases_of(admin, "ball"), timeout_s=20, what="a release")
    assert "config version 1 could not start" in st["reason"] and "retrying" in st["reason"], st
    warnings = [x for x in caplog.records if "camera failed to start camera_id=ball" in x.getMessage()
                and x.levelno >= logging.WARNING]
    assert failures >= 1 and len(warnings) == 1  # retried every heartbeat, logged once
    r.close()
