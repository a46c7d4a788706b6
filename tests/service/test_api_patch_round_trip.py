"""PATCH takes back what GET returned: the camera as GET gave it, edited, is a valid PATCH body; its `version`
makes the change conditional, so two editors never overwrite each other unseen; a PATCH that changes nothing
writes nothing. Real HTTP against a real Valkey."""

from __future__ import annotations

import httpx

from service.store import SyncStore

SOURCE = "rtsp://viewer:Hunter2Secret@127.0.0.1:18554/lobby"


def create(admin: httpx.Client) -> dict:
    r = admin.post("/api/v1/cameras", json={"id": "lobby", "source": SOURCE})
    assert r.status_code == 201, r.text
    return r.json()


def test_the_camera_as_get_returned_it_is_a_patch_body(admin: httpx.Client, redis_url: str) -> None:
    create(admin)
    cam = admin.get("/api/v1/cameras/lobby").json()
    r = admin.patch("/api/v1/cameras/lobby", json=cam | {"eps_pix": 0.5})
    assert r.status_code == 200, r.text
    assert (r.json()["eps_pix"], r.json()["version"]) == (0.5, cam["version"] + 1)
    stored = SyncStore(redis_url).get_camera("lobby")
    assert (stored.eps_pix, stored.version, stored.source) == (0.5, cam["version"] + 1, SOURCE)


def test_a_patch_based_on_an_older_version_is_refused_and_changes_nothing(admin: httpx.Client,
                                                                          redis_url: str) -> None:
    create(admin)
    alice = admin.get("/api/v1/cameras/lobby").json()
    bob = admin.get("/api/v1/cameras/lobby").json()
    assert admin.patch("/api/v1/cameras/lobby", json=alice | {"eps_pix": 0.5}).status_code == 200
    r = admin.patch("/api/v1/cameras/lobby", json=bob | {"m_pixels": 64})  # bob's copy is one version old
    assert r.status_code == 409, r.text
    assert f"version {alice['version'] + 1}, not {bob['version']}" in r.text and "GET it again" in r.text
    stored = SyncStore(redis_url).get_camera("lobby")
    assert (stored.eps_pix, stored.m_pixels, stored.version) == (0.5, 16, alice["version"] + 1)
    # without a version the change applies to whatever is current, as before
    r = admin.patch("/api/v1/cameras/lobby", json={"m_pixels": 64})
    assert r.status_code == 200 and r.json()["version"] == alice["version"] + 2


def test_the_id_cannot_change(admin: httpx.Client, redis_url: str) -> None:
    cam = create(admin)
    r = admin.patch("/api/v1/cameras/lobby", json=cam | {"id": "hall", "eps_pix": 0.5})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "id"] and "never changes" in r.text
    assert SyncStore(redis_url).get_camera("hall") is None
    assert SyncStore(redis_url).get_camera("lobby").eps_pix == cam["eps_pix"]


def test_a_patch_that_changes_nothing_writes_nothing(admin: httpx.Client, redis_url: str) -> None:
    cam = create(admin)
    for body in ({}, cam, {"eps_pix": cam["eps_pix"]}, {"version": cam["version"]}, {"layout_map": None}):
        r = admin.patch("/api/v1/cameras/lobby", json=body)
        assert r.status_code == 200, (body, r.text)
        assert r.json() == cam, body
        assert SyncStore(redis_url).get_camera("lobby").version == cam["version"], body
    assert admin.patch("/api/v1/cameras/lobby", json={"eps_pix": 2.0}).json()["version"] == cam["version"] + 1
