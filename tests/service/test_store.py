"""The Redis store's protocol against a real Valkey: leases, and who may append releases."""

from __future__ import annotations

import pytest

from service.models import Camera
from service.store import SyncStore

SUMMARY = {"camera_id": "c", "frame_index": 1, "timestamp_s": 1.0, "height": 2, "width": 2, "channels": 3,
           "layout": "fixed", "eps_spent": 1.0}


@pytest.fixture
def store(redis_url: str):
    s = SyncStore(redis_url)
    s.put_camera(Camera(id="c", source="test:ball"))
    yield s
    s.close()


def append(store: SyncStore, worker_id: str, camera_id: str = "c") -> str | None:
    return store.append_release(camera_id, b"release", SUMMARY, ledger_state={"x": 1}, retention_releases=10,
                                retention_s=None, worker_id=worker_id, lease_ttl_s=5)


def test_a_lease_is_held_by_one_worker_and_renewed_only_by_it(store: SyncStore) -> None:
    assert store.acquire_lease("c", "w1", 5)
    assert not store.acquire_lease("c", "w2", 5)
    assert store.renew_lease("c", "w1", 5) and not store.renew_lease("c", "w2", 5)
    store.release_lease("c", "w2")  # not the owner: nothing happens
    assert store.lease_owner("c") == "w1"
    store.release_lease("c", "w1")
    assert store.lease_owner("c") is None and store.acquire_lease("c", "w2", 5)


def test_only_the_lease_holder_appends_releases(store: SyncStore) -> None:
    assert store.acquire_lease("c", "w1", 5)
    assert append(store, "w2") is None  # e.g. releases w2 buffered while Redis was down
    assert store.redis.xlen(store.keys.releases("c")) == 0
    assert append(store, "w1") is not None
    assert store.redis.xlen(store.keys.releases("c")) == 1
    assert store.redis.hget(store.keys.latest("c"), "r") == b"release"
    assert store.load_ledger("c") == {"x": 1}


def test_an_append_takes_back_a_lease_that_expired(store: SyncStore) -> None:
    assert append(store, "w1") is not None
    assert store.lease_owner("c") == "w1"


def test_releases_of_a_deleted_camera_are_not_stored(store: SyncStore) -> None:
    assert append(store, "w1", camera_id="gone") is None
    assert not store.redis.exists(store.keys.releases("gone"), store.keys.latest("gone"), store.keys.lease("gone"))


def test_heartbeat_lists_live_workers_and_their_load(store: SyncStore) -> None:
    assert store.heartbeat_worker("w1", 5, {"cameras": 2}) == ({"w1": 2}, False)  # its first heartbeat
    assert store.heartbeat_worker("w2", 5, {"cameras": 0}) == ({"w1": 2, "w2": 0}, False)
    assert store.heartbeat_worker("w2", 5, {"cameras": 0}).was_alive
    store.remove_worker("w1")
    assert store.heartbeat_worker("w2", 5, {"cameras": 1}) == ({"w2": 1}, True)
    store.redis.delete(store.keys.worker("w2"))  # as after its liveness expired
    assert not store.heartbeat_worker("w2", 5, {"cameras": 1}).was_alive


def test_releases_forgotten_for_a_lost_camera_are_counted_as_discarded(store: SyncStore) -> None:
    from service.publisher import PendingRelease, ReleasePublisher

    pub = ReleasePublisher(store, buffer_s=60.0, buffer_max=100, worker_id="w", lease_ttl_s=5.0)  # not started
    for cid in ("lost", "lost", "kept", "lost"):
        pub.submit(PendingRelease(camera_id=cid, data=b"", summary={}, ledger_state=None, retention_releases=10,
                                  retention_s=None, captured_s=0.0))
    pub.discard_camera("lost")
    assert (pub.submitted, pub.discarded, pub.buffered) == (4, 3, 1)  # nothing vanishes uncounted


def test_a_ledger_does_not_expire_while_its_camera_exists(store: SyncStore) -> None:
    """A camera stopped for longer than its window and then given a longer one must still count the releases
    that window reaches back to: its ledger stays while the camera does, and outlives it by the given TTL."""
    assert append(store, "w1") is not None
    assert store.redis.pttl(store.keys.ledger("c")) == -1  # stored with a release: no expiry
    store.save_ledger("c", {"x": 2}, ttl_s=60)  # the worker's save when it lets the camera go
    assert store.redis.pttl(store.keys.ledger("c")) == -1 and store.load_ledger("c") == {"x": 2}

    store.save_ledger("gone", {"x": 3}, ttl_s=60)  # a camera deleted meanwhile: kept for its TTL only
    assert 0 < store.redis.pttl(store.keys.ledger("gone")) <= 60_000
    assert store.load_ledger("gone") == {"x": 3}
