"""The API when Redis is unreachable, audits, and retention."""

from __future__ import annotations

import httpx
import pytest

from service.api import create_app
from service.audits import attacks_available
from service.settings import Settings
from tests.service.conftest import ADMIN_TOKEN, LiveServer, free_port, wait_for
from tests.service.test_worker import KEYS, make_camera


def test_unreachable_redis_is_503_and_not_ready(tmp_path) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", admin_token=ADMIN_TOKEN,
                        data_dir=tmp_path)
    server = LiveServer(create_app(settings))
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
            assert c.get("/healthz").status_code == 200
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "unavailable"
            assert "127.0.0.1" not in r.text and "Error" not in r.text  # anonymous: not where Redis is
            r = c.get("/api/v1/cameras")
            assert r.status_code == 503 and "Redis" in r.json()["detail"]
            assert c.get("/metrics").status_code == 200  # the process's own metrics still come out
            assert "dpstream_redis_errors_total" in c.get("/metrics").text
    finally:
        server.close()


def test_unknown_audit_is_404(admin: httpx.Client) -> None:
    assert admin.get("/api/v1/audits/aud-0123456789ab").status_code == 404


def test_audit_needs_admin_scope(anon: httpx.Client) -> None:
    assert anon.post("/api/v1/audits", json={}).status_code == 401


@pytest.mark.parametrize(("body", "fragment"), [
    ({"m_pixels": 4096, "cell_size": 1}, "does not fit in one 1 px cell"),
    ({"eps_pix": 1e-300}, "too large for the sampler"),
])
def test_an_audit_that_cannot_run_is_422_before_it_starts(admin: httpx.Client, body: dict, fragment: str) -> None:
    r = admin.post("/api/v1/audits", json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.text


def test_the_audit_tools_error_is_kept_whole() -> None:
    from service.audits import _error_message

    stderr = "progress 0/880000\nerror: mechanism audit settings: noise scale 1.2e+304 is too large for\nthe sampler (max about 1.6e15)\n"
    assert _error_message(stderr) == ("error: mechanism audit settings: noise scale 1.2e+304 is too large for the "
                                      "sampler (max about 1.6e15)")
    assert _error_message("Traceback\nValueError: x\n") == "ValueError: x"


@pytest.mark.skipif(attacks_available(), reason="attacks is installed: the audit runs (see the next test)")
def test_audit_without_attacks_answers_503_saying_why(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/audits", json={"eps_pix": 1.0, "m_pixels": 16})
    assert r.status_code == 503 and "attacks" in r.json()["detail"]


@pytest.mark.slow
@pytest.mark.skipif(not attacks_available(), reason="attacks (python -m attacks) is not installed")
def test_mechanism_audit_runs_in_a_child_process_and_stores_its_report(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/audits", json={"eps_pix": 1.0, "m_pixels": 16, "n_eval": 20_000})
    assert r.status_code == 202, r.text
    audit_id = r.json()["id"]
    done = wait_for(lambda: (a := admin.get(f"/api/v1/audits/{audit_id}").json())["state"] != "running" and a,
                    timeout_s=300, interval_s=1.0, what="the audit to finish")
    assert done["state"] == "done", done["error"]
    assert done["report"]["command"] == "mechanism" and done["passed"] is done["report"]["passed"]


def test_retention_keeps_exactly_the_newest_releases(admin: httpx.Client, worker, redis_url: str) -> None:
    import redis

    make_camera(admin, "ball", retention_releases=3, release_fps=10.0)
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: int(admin.get("/api/v1/cameras/ball/status").json()["frames_released"]) >= 6,
             timeout_s=20, what="6 releases")
    assert r.xlen(KEYS.releases("ball")) == 3
    r.close()


def test_retention_s_holds_for_a_camera_that_stopped_releasing(admin: httpx.Client, worker, redis_url: str) -> None:
    import time

    import redis

    make_camera(admin, "idle", retention_s=2.0, release_fps=5.0)
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: r.xlen(KEYS.releases("idle")) >= 3, timeout_s=20, what="releases")
    assert admin.patch("/api/v1/cameras/idle", json={"enabled": False}).status_code == 200
    wait_for(lambda: admin.get("/api/v1/cameras/idle/status").json()["state"] == "DISABLED", timeout_s=10,
             what="disabled")
    stopped = time.time()
    # every release is at least 2 s old a little after this: none may be left, nor the latest
    wait_for(lambda: r.xlen(KEYS.releases("idle")) == 0 and not r.exists(KEYS.latest("idle")), timeout_s=15,
             what="the idle camera's releases expired")
    assert time.time() - stopped >= 1.0  # not dropped at once: kept for retention_s
    assert admin.get("/api/v1/cameras/idle/releases/latest").status_code == 404
    r.close()
