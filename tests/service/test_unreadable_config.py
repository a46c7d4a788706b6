"""A stored camera config this version cannot read (hand-written, or by another dpstream version), through the
API: the other cameras stay listed, the broken one answers a 500 that names the field and the way out, it can
be deleted, and its source's password appears in no response and no log line (pydantic's own error text
quotes the value)."""

from __future__ import annotations

import json
import logging

import httpx
import redis

from service.keys import Keys
from tests.service.test_worker import make_camera

KEYS = Keys()
PASSWORD = "s3cret-pw"


def test_an_unreadable_stored_config_is_a_clear_500_never_quoted_and_can_be_deleted(
        admin: httpx.Client, redis_url: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    make_camera(admin, "fine")
    make_camera(admin, "broken", window_s=7.0)
    r = redis.Redis.from_url(redis_url)
    try:
        bad = json.loads(r.get(KEYS.camera("broken")))
        bad["source"] = f"rtsp://admin:{PASSWORD}@127.0.0.1:1/live main"  # a space: the model refuses it
        r.set(KEYS.camera("broken"), json.dumps(bad))
        r.set(KEYS.ledger("broken"), json.dumps({"eps_window": 100.0, "window_s": 7.0, "spends": [[1.0, "1/1"]],
                                                 "latest_dropped": None}))

        listed = admin.get("/api/v1/cameras")
        assert listed.status_code == 200, listed.text
        assert [c["id"] for c in listed.json()] == ["fine"]  # one broken config hides no other camera

        for path in ("/api/v1/cameras/broken", "/api/v1/cameras/broken/status", "/api/v1/cameras/broken/budget"):
            got = admin.get(path)
            assert got.status_code == 500, (path, got.status_code, got.text)
            detail = got.json()["detail"]
            assert "'broken'" in detail and "unreadable" in detail and "source" in detail, detail
            assert "DELETE /api/v1/cameras/broken" in detail
            assert PASSWORD not in got.text

        gone = admin.delete("/api/v1/cameras/broken")
        assert gone.status_code == 204, gone.text
        assert admin.get("/api/v1/cameras/broken").status_code == 404
        assert 0 < r.pttl(KEYS.ledger("broken")) <= 7000  # the ledger outlives it by its own window
        assert admin.get("/api/v1/cameras/fine").status_code == 200
    finally:
        r.close()
    assert PASSWORD not in caplog.text
