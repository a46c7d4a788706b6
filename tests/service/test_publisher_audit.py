"""The release publisher against a real Valkey (through a real TCP proxy where a write's outcome must be made
unknown): each release is counted once, under what happened to it; a release whose reply was lost is stored
once; one camera whose keys Redis refuses does not hold back the others."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from service.keys import Keys
from service.models import Camera
from service.publisher import PendingRelease, ReleasePublisher
from service.store import SyncStore
from tests.service.conftest import wait_for
from tests.service.test_store_audit import SUMMARY, ReplyProxy

KEYS = Keys()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    store = SyncStore(redis_url)
    for cid in ("c", "bad"):
        store.put_camera(Camera(id=cid, source="test:ball"))
    store.close()
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


def start_publisher(url: str, **kw) -> ReleasePublisher:
    pub = ReleasePublisher(SyncStore(url, socket_timeout_s=10), **{"buffer_s": 60.0, "buffer_max": 100, **kw},
                           worker_id="w", lease_ttl_s=10.0)
    pub.start()
    return pub


def pending(camera_id: str, n: int, stored: list | None = None) -> PendingRelease:
    return PendingRelease(camera_id=camera_id, data=f"release {n}".encode(),
                          summary={**SUMMARY, "camera_id": camera_id, "frame_index": n}, ledger_state=None,
                          retention_releases=100, retention_s=None, captured_s=time.time(),
                          on_stored=(lambda: stored.append(n)) if stored is not None else None)


def counts(pub: ReleasePublisher) -> tuple[int, int, int, int]:
    return pub.acknowledged, pub.discarded, pub.dropped, pub.buffered


def dropped_metric(camera_id: str, reason: str) -> float:
    return REGISTRY.get_sample_value("dpstream_frames_dropped_total", {"camera": camera_id, "reason": reason}) or 0.0


@pytest.mark.parametrize("meanwhile", ["the buffer fills", "its camera is discarded"])
def test_a_release_being_written_is_counted_once_by_how_its_write_ends(
        proxy: ReplyProxy, r: redis.Redis, meanwhile: str) -> None:
    """While Redis's reply to a release is on its way, the buffer overflows (or the camera is discarded).
    That release may already be stored: it is neither dropped nor discarded, and is counted once, as
    acknowledged when the reply says so. submitted = acknowledged + discarded + dropped + buffered."""
    pub = start_publisher(proxy.url, buffer_max=1)
    stored: list[int] = []
    dropped_before = dropped_metric("c", "store_buffer")
    try:
        pub.submit(pending("c", 1, stored))
        wait_for(lambda: pub.acknowledged == 1, timeout_s=10, what="the first release stored")
        calls = proxy.script_calls  # (two when the script had to be loaded first)
        proxy.hold()
        pub.submit(pending("c", 2, stored))
        wait_for(lambda: proxy.script_calls > calls, timeout_s=10, what="the second release's write sent")
        if meanwhile == "the buffer fills":
            pub.submit(pending("c", 3, stored))  # one over the bound, beside the one being written
        else:
            pub.discard_camera("c")
        proxy.let_go()
        wait_for(lambda: pub.buffered == 0, timeout_s=10, what="the queue empty")
    finally:
        proxy.let_go()
        pub.stop()
    n = 3 if meanwhile == "the buffer fills" else 2
    assert r.xlen(KEYS.releases("c")) == n and stored == list(range(1, n + 1))
    assert pub.submitted == n and counts(pub) == (n, 0, 0, 0)
    assert dropped_metric("c", "store_buffer") == dropped_before  # nothing stored is reported as dropped


def test_a_release_whose_reply_was_lost_is_stored_and_shown_once(proxy: ReplyProxy, r: redis.Redis) -> None:
    """Redis stores a release and the connection drops before the reply: the publisher (and redis-py below
    it) sends it again. It is in the stream once, acknowledged once, and reaches the re-stream once."""
    pub = start_publisher(proxy.url)
    stored: list[int] = []
    try:
        pub.submit(pending("c", 1, stored))
        wait_for(lambda: pub.acknowledged == 1, timeout_s=10, what="the first release stored")
        proxy.lose_next_script_reply()
        pub.submit(pending("c", 2, stored))
        wait_for(lambda: pub.buffered == 0 and pub.acknowledged == 2, timeout_s=15, what="the second stored")
    finally:
        pub.stop()
    assert proxy.replies_lost == 1
    entries = r.xrange(KEYS.releases("c"))
    assert [f[b"r"] for _, f in entries] == [b"release 1", b"release 2"]
    assert pub.last_entry_ids["c"] == entries[-1][0].decode()
    assert counts(pub) == (2, 0, 0, 0) and stored == [1, 2]


def test_a_camera_whose_keys_redis_refuses_does_not_hold_back_the_others(r: redis.Redis, redis_url: str,
                                                                          caplog) -> None:
    """One camera's stream key holds a string (written by hand, or by a bug elsewhere): Redis refuses every
    release of it. The publisher stores releases in order, one at a time; the other camera's must not wait
    behind a release that can never be stored. The refused ones are dropped, counted and logged once."""
    caplog.set_level(logging.INFO, logger="dpstream.worker.publisher")
    r.set(KEYS.releases("bad"), "not a stream")
    refused_before = dropped_metric("bad", "store_refused")
    pub = start_publisher(redis_url)
    try:
        for n in range(3):
            pub.submit(pending("bad", n))
            pub.submit(pending("c", n))
        wait_for(lambda: pub.buffered == 0, timeout_s=10, what="the queue empty")
        assert r.xlen(KEYS.releases("c")) == 3 and pub.store_ok
        assert counts(pub) == (3, 0, 3, 0) and dropped_metric("bad", "store_refused") == refused_before + 3
        refusals = [m for m in caplog.messages if "refuses the releases of camera_id=bad" in m]
        assert len(refusals) == 1 and "WRONGTYPE" in refusals[0], refusals
        r.delete(KEYS.releases("bad"))  # repaired: its releases are stored again
        pub.submit(pending("bad", 3))
        wait_for(lambda: pub.acknowledged == 4, timeout_s=10, what="the repaired camera's release stored")
    finally:
        pub.stop()
    assert r.xlen(KEYS.releases("bad")) == 1
    assert any("accepts the releases of camera_id=bad again" in m for m in caplog.messages)
