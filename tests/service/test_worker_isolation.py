"""One camera's failure stays that camera's, against a real worker, Valkey, GStreamer and HTTP: a runner whose
status raises, a camera key of the wrong type (a real Valkey error, as a hand-written key or a bug elsewhere
leaves it), a restart the store fails. The other cameras keep their leases, their statuses and their claims;
the failing one says what fails, without its credentials, and it is logged once."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from service.camera_runner import StreamsCameraRunner
from service.settings import Settings
from tests.service.conftest import wait_for
from tests.service.test_runner_failures import KEYS, PASSWORD, SECRET_SOURCE, stored_status
from tests.service.test_worker import make_camera, releases_of, status_of


def reported_after(r: redis.Redis, camera_id: str, t_s: float) -> dict:
    """The camera's stored status once the worker has reported it after unix time `t_s`."""
    return wait_for(lambda: (s := stored_status(r, camera_id)).get("updated_s", 0) > t_s and s, timeout_s=15,
                    what=f"{camera_id}'s status reported after {t_s}")


def messages(caplog, text: str, level: int = logging.WARNING) -> list[str]:
    return [x.getMessage() for x in caplog.records if text in x.getMessage() and x.levelno >= level]


def start_worker(settings: Settings, runner_cls: type[StreamsCameraRunner]):
    """A real WorkerProcess whose cameras run as `runner_cls` (a subclass of the real runner)."""
    from service.worker_process import WorkerProcess

    s = settings.model_copy(update={"worker_id": "iso-worker"})
    proc = WorkerProcess(s, runner_factory=lambda cam: runner_cls(cam, settings=s, publisher=proc.publisher,
                                                                  store=proc.store))
    proc.start()
    return proc


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


class BrokenStatusRunner(StreamsCameraRunner):
    """The real runner, except for the status of a camera named `*-broken`: it raises, quoting the camera's
    source (as a GStreamer error quotes a URL), or (`unreadable`) names a state the API does not know."""

    unreadable = False

    def status(self):
        doc = super().status()
        if not self._camera.id.endswith("-broken"):
            return doc
        if self.unreadable:
            return {**doc, "state": "LOOKING"}
        raise RuntimeError(f"no status for {self._camera.source}: pipeline gone")


class UnreadableStatusRunner(BrokenStatusRunner):
    unreadable = True


@pytest.mark.parametrize("runner_cls", [BrokenStatusRunner, UnreadableStatusRunner], ids=["raises", "unreadable"])
def test_a_runner_whose_status_cannot_be_read_is_failed_and_the_others_are_reported(
        runner_cls, admin: httpx.Client, settings: Settings, dp_warm, r: redis.Redis, caplog) -> None:
    """The broken camera's status says FAILED and why, without the password, logged once; the others are
    reported every heartbeat, and the API's reads of every camera (its status, /metrics) work."""
    caplog.set_level(logging.DEBUG)
    make_camera(admin, "aaa-broken", source=SECRET_SOURCE)  # listed, claimed and reported first
    make_camera(admin, "ball")
    proc = start_worker(settings, runner_cls)
    try:
        wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=30,
                 what="the camera reported after the broken one streaming")
        st = wait_for(lambda: (s := stored_status(r, "aaa-broken")).get("state") and s, timeout_s=10,
                      what="a status for the camera whose status cannot be read")
        assert st["state"] == "FAILED" and "cannot read this camera's status" in st["reason"], st
        assert ("state" if runner_cls.unreadable else "pipeline gone") in st["reason"], st
        assert PASSWORD not in json.dumps(st)
        t0 = time.time()
        for _ in range(3):  # heartbeats go on, for both
            t0 = max(reported_after(r, "aaa-broken", t0)["updated_s"], reported_after(r, "ball", t0)["updated_s"])
        assert proc.camera_ids == ["aaa-broken", "ball"]
        assert {r.get(KEYS.lease(c)) for c in ("ball", "aaa-broken")} == {b"iso-worker"}
        assert status_of(admin, "aaa-broken")["state"] == "FAILED"
        metrics = admin.get("/metrics")
        assert metrics.status_code == 200
        assert 'dpstream_camera_health_state{camera="ball",state="STREAMING"} 1.0' in metrics.text
        assert len(messages(caplog, "status failed camera_id=aaa-broken")) == 1  # logged once, not every beat
        assert len(messages(caplog, "status failed again camera_id=aaa-broken", logging.DEBUG)) >= 2
    finally:
        proc.stop()
    assert PASSWORD not in caplog.text


class LedgerReadingRunner(StreamsCameraRunner):
    """The real runner, reading the camera's stored ledger whenever its pipeline (re)starts (as a runner
    that rebuilds from the store would): a store error there is a restart that fails for a passing reason."""

    def _start_worker(self, camera) -> None:
        self._store.load_ledger(camera.id)
        super()._start_worker(camera)


def test_a_restart_the_store_fails_is_retried_at_heartbeats_with_the_ledger_kept(
        admin: httpx.Client, settings: Settings, dp_warm, r: redis.Redis, caplog) -> None:
    """A running camera restarted for a config change while its ledger cannot be read (a key of the wrong
    type: a real Valkey error, as a Redis blip then would be) is FAILED with the reason, retried at every
    heartbeat without a new config version, logged once, and starts once the store answers. The retry
    keeps the ledger the camera ran with: Redis lost the stored one meanwhile, and the window stays spent."""
    caplog.set_level(logging.DEBUG)
    make_camera(admin, "cam", eps_pix=1.0, eps_window=2.0, window_s=600.0, release_fps=10.0)
    proc = start_worker(settings, LedgerReadingRunner)
    try:
        wait_for(lambda: status_of(admin, "cam")["frames_over_budget"] >= 2, timeout_s=30, what="budget spent")
        assert len(releases_of(admin, "cam")) == 2
        assert admin.patch("/api/v1/cameras/cam", json={"enabled": False}).status_code == 200  # version 2
        wait_for(lambda: status_of(admin, "cam")["state"] == "DISABLED", timeout_s=15, what="DISABLED")
        with r.pipeline() as pipe:  # the stored ledger is gone, and its key answers with an error
            pipe.delete(KEYS.ledger("cam")).hset(KEYS.ledger("cam"), "not", "a ledger").execute()

        assert admin.patch("/api/v1/cameras/cam", json={"enabled": True}).status_code == 200  # version 3
        # (the runner's own FAILED, without the retry, can be seen for a moment before the worker notes it)
        st = wait_for(lambda: (s := status_of(admin, "cam"))["state"] == "FAILED" and "retrying" in s["reason"]
                      and s, timeout_s=15, what="FAILED, retrying")
        assert "config version 3 could not start" in st["reason"] and "WRONGTYPE" in st["reason"], st
        assert "retrying at every heartbeat" in st["reason"], st
        t0 = time.time()
        for _ in range(3):
            st = reported_after(r, "cam", t0)
            t0 = st["updated_s"]
            assert st["state"] == "FAILED", st  # never started without its ledger
        assert r.xlen(KEYS.releases("cam")) == 2
        assert len(messages(caplog, "camera config not applied camera_id=cam version=3")) == 1
        assert len(messages(caplog, "camera config not applied camera_id=cam version=3", logging.DEBUG)) >= 2

        r.delete(KEYS.ledger("cam"))  # the store answers again: no ledger stored at all
        wait_for(lambda: status_of(admin, "cam")["state"] == "STREAMING", timeout_s=15,
                 what="started at a heartbeat, with no new config version")
        wait_for(lambda: status_of(admin, "cam")["frames_over_budget"] >= 2, timeout_s=30,
                 what="frames refused: the window is still spent")
        assert len(releases_of(admin, "cam")) == 2 and r.xlen(KEYS.releases("cam")) == 2
        assert admin.get("/api/v1/cameras/cam").json()["version"] == 3
    finally:
        proc.stop()


def _break(r: redis.Redis, key: str, how: str) -> None:
    with r.pipeline() as pipe:  # in one transaction: the worker never sees the key missing
        pipe.delete(key)
        if how == "hash":
            pipe.hset(key, "not", "what it should be")
        else:
            pipe.set(key, "not a stream")
        pipe.execute()


# (the key broken, how, the heartbeat step that fails, whether the broken camera is claimed first)
BROKEN = {
    "lease": (KEYS.lease, "hash", "lease renewal", True),
    "releases": (KEYS.releases, "string", "release trim", True),
    "config": (KEYS.camera, "hash", "config reconcile", True),
    "unclaimed-config": (KEYS.camera, "hash", "claim", False),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_camera_whose_key_fails_leaves_the_others_leased_reported_and_claimed(
        case: str, admin: httpx.Client, worker, settings: Settings, r: redis.Redis, caplog) -> None:
    """A key of one camera holds the wrong type, so every Redis command on it fails: the worker's heartbeat
    step on that camera fails each time. The other cameras' leases are renewed, their statuses reported, a
    new camera is claimed; the broken camera's status names the failing step, logged once, until the key is
    repaired."""
    caplog.set_level(logging.DEBUG)
    key_of, how, step, claimed_first = BROKEN[case]
    # "aaa" is listed first; disabled, so that it releases nothing (the publisher stores releases in order)
    if claimed_first:
        make_camera(admin, "aaa", enabled=False, retention_s=60.0)
        wait_for(lambda: worker.camera_ids == ["aaa"], timeout_s=15, what="aaa claimed")
    good = r.get(KEYS.camera("aaa"))
    _break(r, key_of("aaa"), how)
    if not claimed_first:  # listed only once broken, so that no worker claims it before
        r.sadd(KEYS.cameras, "aaa")
    broken_s = time.time()
    make_camera(admin, "ball")
    wait_for(lambda: status_of(admin, "ball")["state"] == "STREAMING", timeout_s=30, what="ball streaming")
    make_camera(admin, "late")
    wait_for(lambda: status_of(admin, "late")["state"] == "STREAMING", timeout_s=30, what="late streaming")

    # two lease TTLs after the break: the others' leases are still renewed, and their statuses reported
    wait_for(lambda: time.time() > broken_s + 2 * settings.lease_ttl_s, timeout_s=10, what="two TTLs")
    t0 = time.time()
    for cid in ("ball", "late"):
        reported_after(r, cid, t0)
        assert r.get(KEYS.lease(cid)) == b"test-worker" and r.pttl(KEYS.lease(cid)) > 0
    failed = messages(caplog, f"{step} failed camera_id=aaa")
    assert len(failed) == 1 and "WRONGTYPE" in failed[0], failed  # once, though it fails every heartbeat
    if claimed_first:
        st = reported_after(r, "aaa", t0)
        assert st["state"] == "DISABLED" and f"the worker's {step} fails" in st["last_error"], st
        assert worker.camera_ids == ["aaa", "ball", "late"]
    else:
        assert worker.camera_ids == ["ball", "late"] and r.get(KEYS.status("aaa")) is None

    # repaired: the step works again, and says so
    if case == "config":
        r.set(KEYS.camera("aaa"), good)  # over the hash, in one command: never seen deleted
    else:
        r.delete(key_of("aaa"))
    if good is None:
        make_camera(admin, "aaa", enabled=False, retention_s=60.0)
    wait_for(lambda: messages(caplog, f"{step} works again camera_id=aaa", logging.INFO), timeout_s=15,
             what="the step working again")
    wait_for(lambda: worker.camera_ids == ["aaa", "ball", "late"], timeout_s=15, what="aaa held")
    st = reported_after(r, "aaa", time.time())
    assert st["state"] == "DISABLED" and "last_error" not in st, st
