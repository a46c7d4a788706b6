"""Prometheus metrics (`dpstream_` prefix, `_total` counters, `_seconds` durations).

Counters and the latency histogram live where the work happens (the worker process). Per-camera state
gauges (epsilon spent, budget remaining, health) are read from Redis by the API at scrape time, so one
scrape of the API covers every camera whichever worker holds it, and no two processes export the same
series. Labels carry camera ids only: never a URL, token or value of a frame.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from service.models import HEALTH_STATES

# --- worker side -----------------------------------------------------------------------------------
FRAMES_INGESTED = Counter("dpstream_frames_ingested_total", "Frames decoded from the camera.", ["camera"])
FRAMES_RELEASED = Counter("dpstream_frames_released_total", "Privatized releases produced.", ["camera"])
FRAMES_DROPPED = Counter(
    "dpstream_frames_dropped_total",
    "Frames not released: queue overflow, rate gate, budget, rejected by dp (settings that do not fit the "
    "frames), or store buffer overflow.",
    ["camera", "reason"],
)
RELEASE_LATENCY = Histogram(
    "dpstream_release_latency_seconds",
    "From frame capture to the release acknowledged by Redis.",
    ["camera"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECONNECTS = Counter("dpstream_reconnects_total", "Camera reconnect attempts.", ["camera"])
RELEASES_BUFFERED = Gauge("dpstream_releases_buffered", "Releases held in memory while Redis is unreachable.")
LEASES_HELD = Gauge("dpstream_worker_leases_held", "Cameras this worker holds.")
REDIS_ERRORS = Counter("dpstream_redis_errors_total", "Failed Redis operations.", ["component"])

WORKER_CAMERA_SERIES = (FRAMES_INGESTED, FRAMES_RELEASED, FRAMES_DROPPED, RELEASE_LATENCY, RECONNECTS)


def forget_camera(camera_id: str) -> None:
    """Drop a camera's worker-side series once this worker no longer runs it (deleted, handed over, lease
    lost): camera ids come and go, and series nobody removes would grow without bound. The worker that runs
    it next exports its own, from zero, which Prometheus reads as a counter reset."""
    for metric in WORKER_CAMERA_SERIES:
        metric.remove_by_labels({"camera": camera_id})


# --- api side --------------------------------------------------------------------------------------
API_REQUEST_DURATION = Histogram(
    "dpstream_api_request_duration_seconds",
    "API request duration by route template.",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EPS_SPENT = Gauge("dpstream_camera_epsilon_spent", "Epsilon spent in the current window.", ["camera"])
BUDGET_REMAINING = Gauge("dpstream_camera_budget_remaining", "Epsilon left in the current window.", ["camera"])
HEALTH = Gauge("dpstream_camera_health_state", "1 for the camera's current health state, else 0.",
               ["camera", "state"])
CAMERAS = Gauge("dpstream_cameras", "Cameras configured.")


async def refresh_camera_gauges(store) -> None:  # store: service.store.AsyncStore
    """Set the per-camera gauges from Redis (called by the /metrics route before rendering)."""
    from service.budget import budget_of

    cameras = await store.list_cameras()
    statuses = await store.statuses([c.id for c in cameras])
    ledgers = await store.load_ledgers([c.id for c in cameras])
    now_s = time.time()
    for g in (EPS_SPENT, BUDGET_REMAINING, HEALTH):
        g.clear()
    CAMERAS.set(len(cameras))
    for cam, status, ledger in zip(cameras, statuses, ledgers, strict=True):
        budget = budget_of(cam, ledger, now_s)
        EPS_SPENT.labels(cam.id).set(budget.eps_spent)
        BUDGET_REMAINING.labels(cam.id).set(budget.eps_remaining)
        for state in HEALTH_STATES:
            HEALTH.labels(cam.id, state).set(1.0 if status.state == state else 0.0)
