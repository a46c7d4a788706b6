"""A camera source with credentials under any parameter name is never returned, and a copy of a redacted
source is refused instead of storing '***' as its credentials; over real HTTP against a real Valkey."""

from __future__ import annotations

import httpx
import pytest

from service.store import SyncStore

SECRET = "Hunter2Secret"
SOURCE = f"rtsp://viewer:{SECRET}@127.0.0.1:18554/cam/realmonitor?channel=1&subtype=0&authtoken={SECRET}x"


@pytest.mark.parametrize("name", ["authtoken", "apitoken", "sessiontoken", "authkey", "jwt", "credentials",
                                  "loginpas", "authcode", "authbasic"])
def test_a_credential_under_any_parameter_name_is_never_returned(admin: httpx.Client, redis_url: str,
                                                                  name: str) -> None:
    source = f"rtsp://127.0.0.1:18554/cam/realmonitor?channel=1&subtype=0&{name}={SECRET}"
    r = admin.post("/api/v1/cameras", json={"id": "door", "source": source})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == f"rtsp://127.0.0.1:18554/cam/realmonitor?channel=1&subtype=0&{name}=***"
    for path in ("/api/v1/cameras/door", "/api/v1/cameras", "/api/v1/cameras/door/status"):
        assert SECRET not in admin.get(path).text, path
    # GET, edit another field, PATCH: the masked source comes back unchanged and the stored one is kept
    cam = admin.get("/api/v1/cameras/door").json()
    body = {k: v for k, v in cam.items() if k not in ("id", "version")} | {"eps_pix": 0.5}
    r = admin.patch("/api/v1/cameras/door", json=body)
    assert r.status_code == 200, r.text
    assert SECRET not in r.text
    assert SyncStore(redis_url).get_camera("door").source == source


@pytest.mark.parametrize("edited", [
    "rtsp://***@127.0.0.1:18554/nope3",  # the redacted userinfo, another path
    "rtsp://viewer:***@127.0.0.1:18554/cam/realmonitor?channel=2&subtype=0&authtoken=***",  # a user name typed in
    "rtsp://***@127.0.0.1:18554/cam/realmonitor?channel=2&subtype=0&authtoken=***",  # only the channel changed
    f"rtsp://viewer:{SECRET}@127.0.0.1:18554/cam/realmonitor?channel=2&authtoken=***",  # the token left masked
    "rtsp://127.0.0.1:18554/live?user=***&password=***",
])
def test_a_patch_with_an_edited_copy_of_the_redacted_source_is_refused(admin: httpx.Client, redis_url: str,
                                                                       edited: str) -> None:
    assert admin.post("/api/v1/cameras", json={"id": "door", "source": SOURCE}).status_code == 201
    r = admin.patch("/api/v1/cameras/door", json={"source": edited, "eps_pix": 0.5})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "source"]
    assert "full URL with its credentials" in error["msg"] and "leave source out" in error["msg"]
    assert SECRET not in r.text and "viewer" not in r.text
    stored = SyncStore(redis_url).get_camera("door")
    assert (stored.source, stored.version, stored.eps_pix) == (SOURCE, 1, 1.0)  # nothing changed
    # the full URL, or the redacted one unchanged, is still accepted
    unchanged = admin.get("/api/v1/cameras/door").json()["source"]
    assert admin.patch("/api/v1/cameras/door", json={"source": unchanged}).status_code == 200
    assert SyncStore(redis_url).get_camera("door").source == SOURCE
    full = "rtsp://viewer:n3w-pass@127.0.0.1:18554/nope3"
    assert admin.patch("/api/v1/cameras/door", json={"source": full}).status_code == 200
    assert SyncStore(redis_url).get_camera("door").source == full


@pytest.mark.parametrize("source", ["rtsp://admin:***@10.0.0.5/live", "rtsp://***@10.0.0.5/live",
                                    "rtsp://10.0.0.5/live?token=***&channel=1", "rtsp://10.0.0.5/live;password=***"])
def test_a_new_camera_with_a_redacted_source_is_refused(admin: httpx.Client, source: str) -> None:
    r = admin.post("/api/v1/cameras", json={"id": "gate", "source": source})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "source"]
    assert "full URL with its credentials" in r.json()["detail"][0]["msg"]
    assert "admin" not in r.text
    assert admin.get("/api/v1/cameras/gate").status_code == 404
