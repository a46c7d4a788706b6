"""Camera CRUD, auth scopes and config validation over real HTTP against a real Valkey."""

from __future__ import annotations

import httpx
import pytest

from service.auth import create_token
from service.store import SyncStore

TEST_SOURCE = "test:ball?width=160&height=120&fps=10"


def test_every_api_route_needs_a_bearer_token(anon: httpx.Client) -> None:
    for method, path in [("GET", "/api/v1/cameras"), ("POST", "/api/v1/cameras"),
                         ("GET", "/api/v1/cameras/x"), ("PATCH", "/api/v1/cameras/x"),
                         ("DELETE", "/api/v1/cameras/x"), ("GET", "/api/v1/cameras/x/releases/latest"),
                         ("GET", "/api/v1/cameras/x/budget"), ("GET", "/api/v1/audits/aud-000000000000")]:
        r = anon.request(method, path, json={} if method in ("POST", "PATCH") else None)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    assert anon.get("/api/v1/cameras", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_health_routes_need_no_token(anon: httpx.Client) -> None:
    assert anon.get("/healthz").json() == {"status": "ok", "detail": None}
    assert anon.get("/readyz").status_code == 200
    assert "dpstream_api_request_duration_seconds" in anon.get("/metrics").text


def test_read_token_reads_but_cannot_change(anon: httpx.Client, admin: httpx.Client, redis_url: str) -> None:
    store = SyncStore(redis_url)
    read = create_token(store, "read")
    store.close()
    assert admin.post("/api/v1/cameras", json={"id": "lobby", "source": TEST_SOURCE}).status_code == 201
    h = {"Authorization": f"Bearer {read}"}
    assert anon.get("/api/v1/cameras/lobby", headers=h).status_code == 200
    assert anon.patch("/api/v1/cameras/lobby", json={"eps_pix": 2}, headers=h).status_code == 403
    assert anon.delete("/api/v1/cameras/lobby", headers=h).status_code == 403
    assert anon.post("/api/v1/cameras", json={"source": TEST_SOURCE}, headers=h).status_code == 403


def test_created_admin_token_can_change(anon: httpx.Client, redis_url: str) -> None:
    store = SyncStore(redis_url)
    token = create_token(store, "admin")
    # only the hash is stored: the token itself appears nowhere in Redis
    assert not any(token.encode() in (store.redis.get(k) or b"") for k in store.redis.keys("*"))
    store.close()
    r = anon.post("/api/v1/cameras", json={"source": TEST_SOURCE}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201
    assert r.json()["id"].startswith("cam-")


def test_camera_round_trip_echoes_whole_camera(admin: httpx.Client) -> None:
    body = {"id": "gate-2", "source": TEST_SOURCE, "channels": 1, "eps_pix": 0.5, "m_pixels": 64,
            "layout": "previous", "cell_size": 16, "cell_sizes": [8, 16, 32], "release_fps": 2.0,
            "eps_window": 5.0, "window_s": 10.0, "retention_releases": 50}
    r = admin.post("/api/v1/cameras", json=body)
    assert r.status_code == 201, r.text
    got = r.json()
    for k, v in body.items():
        assert got[k] == v, k
    assert got["version"] == 1
    assert admin.get("/api/v1/cameras/gate-2").json() == got
    assert [c["id"] for c in admin.get("/api/v1/cameras").json()] == ["gate-2"]
    assert admin.post("/api/v1/cameras", json=body).status_code == 409


def test_patch_changes_only_given_fields_and_bumps_version(admin: httpx.Client) -> None:
    admin.post("/api/v1/cameras", json={"id": "lobby", "source": TEST_SOURCE, "eps_pix": 1.0})
    r = admin.patch("/api/v1/cameras/lobby", json={"eps_pix": 0.25, "release_fps": 4})
    assert r.status_code == 200, r.text
    cam = r.json()
    assert (cam["eps_pix"], cam["release_fps"], cam["m_pixels"], cam["version"]) == (0.25, 4, 16, 2)


def test_delete_removes_camera(admin: httpx.Client) -> None:
    admin.post("/api/v1/cameras", json={"id": "lobby", "source": TEST_SOURCE})
    assert admin.delete("/api/v1/cameras/lobby").status_code == 204
    assert admin.get("/api/v1/cameras/lobby").status_code == 404
    assert admin.delete("/api/v1/cameras/lobby").status_code == 404


@pytest.mark.parametrize("source", [
    "rtsp://user:hunter2@10.0.0.5/live",
    "rtsp://10.0.0.5:554/user=admin&password=hunter2&channel=1&stream=0.sdp",  # XMeye/Sofia DVRs
    "rtsp://10.0.0.5/live;password=hunter2",
])
def test_source_credentials_are_never_returned(admin: httpx.Client, redis_url: str, source: str) -> None:
    r = admin.post("/api/v1/cameras", json={"id": "door", "source": source})
    assert r.status_code == 201
    assert "hunter2" not in r.text and "user:" not in r.text and "admin" not in r.text  # password, user names
    assert "hunter2" not in admin.get("/api/v1/cameras").text
    # sending the redacted camera back (GET, edit, PATCH) keeps the real credentials
    cam = admin.get("/api/v1/cameras/door").json()
    body = {k: v for k, v in cam.items() if k not in ("id", "version")} | {"eps_pix": 0.5}
    assert admin.patch("/api/v1/cameras/door", json=body).status_code == 200
    assert SyncStore(redis_url).get_camera("door").source == source


def test_eps_window_equal_to_the_frame_cost_in_decimals_is_accepted(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/cameras", json={"source": TEST_SOURCE, "layout": "private", "eps_layout": 0.2,
                                            "eps_pix": 0.1, "eps_window": 0.3})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"eps_pix": 0}, "eps_pix"),
        ({"eps_pix": -1}, "eps_pix"),
        ({"m_pixels": 0}, "m_pixels"),
        ({"channels": 2}, "channels"),
        ({"layout": "random"}, "layout"),
        ({"layout": "private"}, "eps_layout"),  # private layout needs eps_layout > 0 (dp says so)
        ({"layout": "previous", "cell_sizes": [3, 16]}, "cell_sizes"),  # 3 does not divide block_size 32
        ({"layout": "map"}, "layout_map"),
        ({"eps_pix": 2.0, "eps_window": 1.0}, "eps_window"),  # one release would overspend any window
        ({"eps_window": 1e5}, "eps_window"),
        ({"colour": "red"}, "colour"),  # unknown fields are refused
        ({"id": "Not A Slug"}, "id"),
        ({"source": "ftp://cam/live"}, "source"),  # streams refuses the scheme
        ({"source": "test:nosuchpattern"}, "source"),
        ({"source": "rtsp://:554/live"}, "source"),  # no host
        ({"eps_pix": 1e-12}, "eps_pix"),  # noise the sampler cannot draw (dp refused every frame)
        ({"channels": True}, "channels"),  # JSON's own types only: true is not 1
        ({"enabled": "yes"}, "enabled"),
        ({"eps_pix": "1.5"}, "eps_pix"),
        ({"m_pixels": 16.5}, "m_pixels"),
        ({"layout": "map", "layout_map": [[16] * 300] * 300}, "layout_map"),  # 90,000 macro-blocks
    ],
)
def test_invalid_config_is_422_naming_the_field(admin: httpx.Client, body: dict, field: str) -> None:
    r = admin.post("/api/v1/cameras", json={"source": TEST_SOURCE, **body})
    assert "Traceback" not in r.text
    assert r.status_code == 422, r.text
    locs = [e["loc"] for e in r.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    assert all(e["msg"] for e in r.json()["detail"])


def test_invalid_patch_is_422_and_keeps_the_camera(admin: httpx.Client) -> None:
    admin.post("/api/v1/cameras", json={"id": "lobby", "source": TEST_SOURCE})
    r = admin.patch("/api/v1/cameras/lobby", json={"layout": "private"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "eps_layout"]
    assert admin.patch("/api/v1/cameras/lobby", json={"id": "other"}).status_code == 422
    assert admin.patch("/api/v1/cameras/lobby", json={"channels": True}).status_code == 422
    assert admin.patch("/api/v1/cameras/lobby", json={"release_fps": "2"}).status_code == 422
    assert admin.get("/api/v1/cameras/lobby").json()["version"] == 1


def test_budget_states_the_guarantee_before_any_release(admin: httpx.Client) -> None:
    admin.post("/api/v1/cameras", json={"id": "lobby", "source": TEST_SOURCE, "eps_window": 4.0,
                                        "m_pixels": 32, "window_s": 20})
    b = admin.get("/api/v1/cameras/lobby/budget").json()
    assert b["guarantee"] == {"eps_window": 4.0, "m_pixels": 32, "window_s": 20.0}
    assert (b["eps_spent"], b["eps_remaining"], b["eps_frame"]) == (0.0, 4.0, 1.0)


def test_status_of_an_unowned_camera_is_unassigned(admin: httpx.Client) -> None:
    admin.post("/api/v1/cameras", json={"id": "lobby", "source": TEST_SOURCE})
    s = admin.get("/api/v1/cameras/lobby/status").json()
    assert s["state"] == "UNASSIGNED" and s["worker"] is None
    assert admin.get("/api/v1/cameras/lobby/releases/latest").status_code == 404
    assert admin.get("/api/v1/cameras/lobby/releases").json() == []


@pytest.mark.parametrize("password", ["12/s3cret", "pa/ss3cret", "pa#ss3cret", "pa?ss3cret"])
def test_a_password_typed_with_a_raw_slash_hash_or_question_mark_is_never_echoed(
    admin: httpx.Client, password: str
) -> None:
    # unencoded, these end the URL's userinfo early: a strict parse reads 'admin:12' as host and port
    r = admin.post("/api/v1/cameras", json={"id": "gate", "source": f"rtsp://admin:{password}@10.0.0.5/live"})
    assert r.status_code == 422, r.text
    assert "s3cret" not in r.text and "admin" not in r.text
    assert "percent-encode" in r.text and "rtsp://***@10.0.0.5/live" in r.text
    assert admin.get("/api/v1/cameras/gate").status_code == 404


@pytest.mark.parametrize("body", ['{"eps_pix": NaN}', '{"window_s": Infinity}', '{"eps_window": -Infinity}',
                                  '{"source": "rtsp://admin:s3cret@10.0.0.5/live", "m_pixels": NaN}'])
def test_nan_and_infinity_in_a_body_are_422_without_echoing_it(admin: httpx.Client, body: str) -> None:
    for method, path in (("POST", "/api/v1/cameras"), ("PATCH", "/api/v1/cameras/hall")):
        admin.post("/api/v1/cameras", json={"id": "hall", "source": TEST_SOURCE})
        r = admin.request(method, path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (method, r.status_code, r.text)
        assert r.json()["detail"] and all(e["msg"] and e["loc"] for e in r.json()["detail"])
        assert "s3cret" not in r.text
    # the connection is still usable afterwards
    assert admin.get("/api/v1/cameras/hall").status_code == 200


def test_a_camera_created_again_is_a_new_incarnation_and_patches_keep_it(admin: httpx.Client) -> None:
    first = admin.post("/api/v1/cameras", json={"id": "yard", "source": TEST_SOURCE}).json()
    patched = admin.patch("/api/v1/cameras/yard", json={"eps_pix": 0.5}).json()
    assert first["incarnation"] and patched["incarnation"] == first["incarnation"] and patched["version"] == 2
    assert admin.delete("/api/v1/cameras/yard").status_code == 204
    again = admin.post("/api/v1/cameras", json={"id": "yard", "source": TEST_SOURCE}).json()
    assert again["version"] == 1 and again["incarnation"] != first["incarnation"]
    assert admin.patch("/api/v1/cameras/yard", json={"incarnation": "mine"}).status_code == 422  # not settable
