"""A camera whose every frame dp rejects, against a real worker, Valkey, GStreamer and HTTP: its status is
FAILED with the reason (not STREAMING), the rejected frames are counted in the frames-dropped metric, an
alert fires for it, and a config version that fits its frames makes it stream again."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import yaml
from prometheus_client import REGISTRY

from tests.service.conftest import wait_for
from tests.service.test_worker import make_camera, releases_of, status_of

REPO = Path(__file__).resolve().parents[2]
FITS = [[16] * 5] * 4  # 160x120 frames (tests.service.test_worker.BALL) hold 4x5 macro-blocks of 32 px


def rejected_count(camera_id: str) -> float:
    labels = {"camera": camera_id, "reason": "rejected"}
    return REGISTRY.get_sample_value("dpstream_frames_dropped_total", labels) or 0.0


def test_a_camera_whose_every_frame_dp_rejects_is_failed_counted_and_fixed_by_a_config_change(
        admin: httpx.Client, worker) -> None:
    make_camera(admin, "mis", layout="map", layout_map=[[16]])
    st = wait_for(lambda: (s := status_of(admin, "mis"))["state"] == "FAILED" and s, timeout_s=30,
                  what="FAILED for its rejected frames")
    assert "rejected" in st["reason"] and "layout_map has shape (1, 1)" in st["reason"]
    assert st["frames_rejected"] > 0 and "layout_map has shape" in st["rejected_reason"]
    assert st["frames_released"] == 0 and st["reconnects"] == 0
    assert releases_of(admin, "mis") == []
    wait_for(lambda: rejected_count("mis") > 0, timeout_s=10, what='frames dropped with reason="rejected"')
    assert admin.get("/api/v1/cameras/mis/budget").json()["eps_spent"] == 0.0  # every spend given back

    assert admin.patch("/api/v1/cameras/mis", json={"layout_map": FITS}).status_code == 200
    st = wait_for(lambda: (s := status_of(admin, "mis"))["state"] == "STREAMING" and s, timeout_s=15,
                  what="STREAMING again")
    assert st["reconnects"] == 0  # applied live: the same pipeline
    wait_for(lambda: len(releases_of(admin, "mis")) >= 3, timeout_s=15, what="releases")
    # the counters reach the metric at the worker's status reports: one more, and every rejection is in
    wait_for(lambda: status_of(admin, "mis")["updated_s"] > st["updated_s"], timeout_s=15, what="a report")
    rejected = rejected_count("mis")
    st = wait_for(lambda: (s := status_of(admin, "mis"))["frames_released"] >= 5 and s, timeout_s=15,
                  what="more releases")
    wait_for(lambda: status_of(admin, "mis")["updated_s"] > st["updated_s"], timeout_s=15, what="a report")
    assert rejected_count("mis") == rejected  # none rejected since
    assert status_of(admin, "mis")["state"] == "STREAMING"


def test_a_failed_camera_and_rejected_frames_alert() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load((REPO / "deploy/alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    states = re.search(r'state=~"([^"]+)"', rules["DpstreamCameraNotStreaming"]["expr"]).group(1)
    assert re.fullmatch(states, "FAILED") and not re.fullmatch(states, "STREAMING")
    assert 'dpstream_frames_dropped_total{reason="rejected"}' in rules["DpstreamFramesRejected"]["expr"]
