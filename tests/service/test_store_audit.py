"""The release path's store half against a real Valkey: a release is stored once even when the reply to its
write is lost, a camera's ledger never goes back, and retention keeps exactly what it says.

`ReplyProxy` is a real TCP proxy in front of the real server: it can lose the reply to a script call (Redis
ran it; the client never hears so) or hold replies back, the two ways a network makes a write's outcome
unknown. Nothing of dpstream is replaced."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from fractions import Fraction

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import service.store as store_module
from dp import Ledger
from dp.errors import StoreUnavailable
from service.models import Camera
from service.store import StoreRefused, SyncStore
from tests.service.conftest import wait_for

SUMMARY = {"camera_id": "c", "frame_index": 1, "timestamp_s": 1.0, "height": 2, "width": 2, "channels": 3,
           "layout": "fixed", "eps_spent": 1.0}


class ReplyProxy:
    """Forwards 127.0.0.1:`port` to a Redis server. `lose_next_script_reply()`: the reply to the next script
    call (EVALSHA/EVAL) is thrown away and that client connection closed, after the server ran it.
    `hold()` / `let_go()`: replies wait in the proxy until let go. `script_calls` counts the calls seen."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._lock = threading.Lock()
        self._lose_next = False
        self._open = threading.Event()
        self._open.set()
        self.script_calls = 0
        self.replies_lost = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._partitioned = False
        threading.Thread(target=self._accept, daemon=True).start()

    def partition(self) -> None:
        """Cut every connection, and every new one at once, until `heal()`: the server is unreachable."""
        self._partitioned = True
        for sock in list(self._sockets):
            _close(sock)

    def heal(self) -> None:
        self._partitioned = False

    def lose_next_script_reply(self) -> None:
        with self._lock:
            self._lose_next = True

    def hold(self) -> None:
        self._open.clear()

    def let_go(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._partitioned:
                _close(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, server]
            state = {"lose": False}
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                if b"EVALSHA" in data.upper() or b"\r\nEVAL\r\n" in data.upper():
                    with self._lock:
                        self.script_calls += 1
                        if self._lose_next:
                            self._lose_next, state["lose"] = False, True
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)

    def _downstream(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := server.recv(65536):
                self._open.wait()
                if state["lose"]:  # the server has answered: it ran the call; its client never hears so
                    with self._lock:
                        self.replies_lost += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.set("dpstream:camera:{c}", Camera(id="c", source="test:ball").model_dump_json())
    client.sadd("dpstream:cameras", "c")
    try:
        yield client
    finally:
        client.close()


def append(store: SyncStore, *, ledger: dict | None = None, retention_s: float | None = None,
           release_id: str | None = None, data: bytes = b"release") -> str | None:
    return store.append_release("c", data, SUMMARY, ledger_state=ledger, retention_releases=100,
                                retention_s=retention_s, worker_id="w1", lease_ttl_s=5, release_id=release_id)


def ledger(*spend_times: float, latest_dropped: float | None = None) -> dict:
    return {"eps_window": 10.0, "window_s": 60.0, "spends": [[t, "1/10"] for t in spend_times],
            "latest_dropped": latest_dropped}


def test_a_release_whose_reply_was_lost_is_stored_once_when_sent_again(proxy: ReplyProxy, r: redis.Redis) -> None:
    """Redis stores the release, the connection drops before its reply arrives: redis-py sends the call again
    on a new connection (and the publisher does too, after StoreUnavailable). The release is stored once,
    and every try answers with its one entry id."""
    store = SyncStore(proxy.url, socket_timeout_s=5)
    try:
        first = append(store, release_id="rel-1", data=b"one")  # also loads the script into the server
        proxy.lose_next_script_reply()
        try:
            second = append(store, release_id="rel-2", data=b"two")
        except StoreUnavailable as err:  # the publisher's case: the store said it is unavailable; it tries again
            assert "unavailable" in str(err)
            second = append(store, release_id="rel-2", data=b"two")
        assert proxy.replies_lost == 1
        again = append(store, release_id="rel-2", data=b"two")  # one more try of the same release
    finally:
        store.close()
    entries = r.xrange("dpstream:releases:{c}")
    assert [f[b"r"] for _, f in entries] == [b"one", b"two"]
    assert [eid.decode() for eid, _ in entries] == [first, second] and again == second
    assert r.hget("dpstream:latest:{c}", "id").decode() == second


def test_an_older_ledger_snapshot_never_overwrites_a_newer_one(r: redis.Redis, redis_url: str) -> None:
    """The worker stores its full ledger (save_state) while the publisher still writes a release queued
    before it, carrying an older snapshot; or a worker that lost the camera saves after the new owner spent.
    The release is stored; the stored ledger stays the newer one."""
    store = SyncStore(redis_url)
    try:
        assert append(store, ledger=ledger(100.0)) is not None
        store.save_ledger("c", ledger(100.0, 101.0, 102.0), ttl_s=60)  # save_state: the full ledger
        assert append(store, ledger=ledger(100.0, 101.0), data=b"late") is not None  # queued before the save
        assert r.hget("dpstream:latest:{c}", "r") == b"late"  # the release itself is stored
        assert store.load_ledger("c") == ledger(100.0, 101.0, 102.0)

        store.save_ledger("c", ledger(100.0, 101.5), ttl_s=60)  # a stale worker's save
        assert store.load_ledger("c") == ledger(100.0, 101.0, 102.0)
        # spends at one time (a new owner charging at the last stored spend until its clock catches up)
        assert append(store, ledger=ledger(101.0, 102.0, 102.0)) is not None
        assert not store.save_ledger("c", ledger(101.0, 102.0), ttl_s=60)  # False: not written
        assert not store.save_ledger("c", ledger(), ttl_s=60)  # a ledger that never spent
        assert store.load_ledger("c") == ledger(101.0, 102.0, 102.0)
        # newer states are written: a later spend (the older ones dropped from the window meanwhile), and
        # the same spends under a new window (reconfigured)
        assert store.save_ledger("c", ledger(104.0, latest_dropped=102.0), ttl_s=60)
        assert store.save_ledger("c", ledger(104.0, latest_dropped=102.0) | {"window_s": 30.0}, ttl_s=60)
        assert store.load_ledger("c") == ledger(104.0, latest_dropped=102.0) | {"window_s": 30.0}
    finally:
        store.close()


def test_a_release_still_being_written_when_its_camera_was_handed_back_does_not_take_the_lease_again(
        r: redis.Redis, redis_url: str) -> None:
    """The worker hands the camera back: it waits for the queued releases (up to a timeout: Redis is slow),
    stores its full ledger and deletes its lease. A release whose write was still on its way lands after
    that: it is stored (the stored ledger counts it), but must not take the free lease back for a worker
    that no longer runs the camera (nobody could claim it for a lease TTL), nor replace the ledger."""
    store = SyncStore(redis_url)
    try:
        assert store.acquire_lease("c", "w1", 5)
        assert append(store, ledger=ledger(100.0)) is not None
        store.save_ledger("c", ledger(100.0, 101.0, 102.0), ttl_s=60)  # save_state
        store.release_lease("c", "w1")
        assert append(store, ledger=ledger(100.0, 101.0), data=b"late") is not None
        assert store.lease_owner("c") is None and store.acquire_lease("c", "w2", 5)
        assert store.load_ledger("c") == ledger(100.0, 101.0, 102.0)
        assert r.xlen("dpstream:releases:{c}") == 2
    finally:
        store.close()


def test_a_worker_that_lost_the_camera_cannot_take_it_back_with_a_ledger_lacking_the_new_owners_spends(
        r: redis.Redis, redis_url: str) -> None:
    """w1 cannot reach Redis; its lease expires; w2 claims the camera (from the stored ledger), spends, and
    lets it go. w1 comes back and takes the free lease again, still releasing from its own ledger, which
    lacks w2's spends: stored, its releases and w2's would overspend the window. They are refused, the
    stored ledger keeps w2's spends, and w1 can neither renew nor take the lease until it expires, so it
    lets the camera go; whoever claims it then starts from the stored ledger."""
    store = SyncStore(redis_url)

    def append_as(worker_id: str, spends: dict, data: bytes) -> str | None:
        return store.append_release("c", data, SUMMARY, ledger_state=spends, retention_releases=100,
                                    retention_s=None, worker_id=worker_id, lease_ttl_s=5)

    try:
        assert store.acquire_lease("c", "w1", 5) and append_as("w1", ledger(100.0), b"w1 before") is not None
        r.delete("dpstream:lease:{c}")  # expired while w1 could not reach Redis
        assert store.acquire_lease("c", "w2", 5)
        assert append_as("w2", ledger(100.0, 110.0), b"w2") is not None  # from the stored ledger, on
        store.save_ledger("c", ledger(100.0, 110.0), ttl_s=60)
        store.release_lease("c", "w2")  # w2 lets the camera go (rebalanced, stopped)

        assert store.acquire_lease("c", "w1", 5)  # w1 is back: the lease is free, it takes it again
        assert append_as("w1", ledger(100.0, 105.0), b"w1 while away") is None  # spent apart from w2's
        assert not store.save_ledger("c", ledger(100.0, 105.0, 111.0), ttl_s=60)
        assert store.load_ledger("c") == ledger(100.0, 110.0)
        assert [f[b"r"] for _, f in r.xrange("dpstream:releases:{c}")] == [b"w1 before", b"w2"]
        assert not store.renew_lease("c", "w1", 5) and not store.acquire_lease("c", "w1", 5)  # so it lets go
        assert 0 < r.pttl("dpstream:lease:{c}") <= 5000

        r.delete("dpstream:lease:{c}")  # expired: a worker claims it from the stored ledger
        assert store.acquire_lease("c", "w1", 5)
        assert append_as("w1", ledger(100.0, 110.0, 120.0), b"w1 again") is not None
        assert store.load_ledger("c") == ledger(100.0, 110.0, 120.0)
    finally:
        store.close()


def test_releases_stored_across_a_partition_and_a_takeover_never_overspend_the_window(
        proxy: ReplyProxy, r: redis.Redis, redis_url: str, settings, dp_warm) -> None:
    """The end-to-end case of the test above, with real workers, cameras and a real partition: worker A
    loses Redis; B takes the camera over, releases, and stops; A's network heals and A takes the free lease
    back. Everything Redis holds for the camera stays within one window's budget (8 releases of eps 1 in a
    600 s window), and the camera streams again afterwards."""
    from service.worker_process import WorkerProcess

    r.delete("dpstream:camera:{c}")
    r.srem("dpstream:cameras", "c")
    store = SyncStore(redis_url)
    store.put_camera(Camera(id="ball", source="test:ball?width=64&height=64&fps=10", release_fps=2.0,
                            eps_pix=1.0, eps_window=8.0, window_s=600.0, retention_releases=1000))
    a = WorkerProcess(settings.model_copy(update={"worker_id": "A", "redis_url": proxy.url}))
    b = WorkerProcess(settings.model_copy(update={"worker_id": "B"}))

    def stored_eps() -> float:
        return sum(float(f[b"eps_spent"]) for _, f in r.xrange("dpstream:releases:{ball}"))

    try:
        a.start()
        wait_for(lambda: r.xlen("dpstream:releases:{ball}") >= 2, timeout_s=30, what="A's first releases")
        b.start()
        proxy.partition()
        wait_for(lambda: store.lease_owner("ball") == "B", timeout_s=15, what="B taking the camera over")
        n = r.xlen("dpstream:releases:{ball}")
        wait_for(lambda: r.xlen("dpstream:releases:{ball}") >= n + 2, timeout_s=15, what="B's releases")
        b.stop()  # stores its ledger and lets the lease go
        assert store.lease_owner("ball") is None and a.publisher.buffered > 0  # A released meanwhile
        proxy.heal()
        t_heal = time.time()
        wait_for(lambda: a.publisher.buffered == 0 and a.publisher.store_ok, timeout_s=20,
                 what="A's buffer flushed")
        assert stored_eps() <= 8.0
        # A lets the camera go and claims it again from the stored ledger: it streams within its budget
        wait_for(lambda: store.lease_owner("ball") == "A" and any(
            float(f[b"timestamp_s"]) > t_heal for _, f in r.xrange("dpstream:releases:{ball}")),
            timeout_s=20, what="A streaming the camera again")
        assert stored_eps() <= 8.0
        ledger_eps = sum(1 for _ in (store.load_ledger("ball") or {}).get("spends", []))
        assert ledger_eps >= r.xlen("dpstream:releases:{ball}")  # the ledger counts every stored release
    finally:
        b.stop()
        a.stop()
        store.close()
    assert stored_eps() <= 8.0


def test_removing_retention_s_stops_the_releases_from_expiring(r: redis.Redis, redis_url: str) -> None:
    """A camera that had retention_s and then has none (retention_releases only): its releases must not
    vanish when the TTL of the last release stored under the old setting runs out."""
    store = SyncStore(redis_url)
    try:
        append(store, retention_s=60.0)
        assert 0 < r.pttl("dpstream:releases:{c}") <= 60_000
        append(store, retention_s=None)
        assert r.pttl("dpstream:releases:{c}") == -1 and r.pttl("dpstream:latest:{c}") == -1
        assert r.xlen("dpstream:releases:{c}") == 2
    finally:
        store.close()


def test_retention_s_keeps_no_release_older_than_it(r: redis.Redis, redis_url: str) -> None:
    """retention_s is exact: every release older than it is gone after the next append (or the idle
    trim), not only once a whole node of the stream's radix tree is older."""
    store = SyncStore(redis_url)
    try:
        for _ in range(3):
            append(store, retention_s=1.0)
        t_old = time.time()
        wait_for(lambda: time.time() > t_old + 0.6, timeout_s=5, what="0.6 s")
        append(store, retention_s=1.0)
        t_mid = time.time()
        wait_for(lambda: time.time() > t_old + 1.1, timeout_s=5, what="the first three older than 1 s")
        append(store, retention_s=1.0)
        assert r.xlen("dpstream:releases:{c}") == 2  # the first three are older than 1 s
        wait_for(lambda: time.time() > t_mid + 0.35, timeout_s=5, what="the fourth older than 0.3 s")
        store.trim_old_releases("c", 0.3)  # the idle trim: 0.3 s keeps only the newest
        assert r.xlen("dpstream:releases:{c}") == 1
    finally:
        store.close()


def test_a_key_of_the_wrong_type_is_refused_before_anything_is_written(r: redis.Redis, redis_url: str) -> None:
    """A script is not rolled back when a command in it fails: a latest key of the wrong type must not leave
    a stream entry behind (stored, yet reported as failed, and stored again at every try)."""
    store = SyncStore(redis_url)
    try:
        r.set("dpstream:latest:{c}", "not a hash")
        for _ in range(2):
            with pytest.raises(StoreRefused, match="WRONGTYPE"):
                append(store, ledger=ledger(100.0))
        assert r.xlen("dpstream:releases:{c}") == 0 and r.get("dpstream:ledger:{c}") is None
        r.delete("dpstream:latest:{c}")
        assert append(store) is not None
    finally:
        store.close()


# `covers` reads the ledger text without decoding it when it has the shape store.py writes (the decoded
# reading costs more than the rest of an append); both readings must agree on every pair of states.
_COVERS_BOTH = store_module._LEDGER_ORDER_LUA + """
local a, b = ARGV[1], ARGV[2]
return {tostring(covers_text(a, b)), tostring(covers_doc(ledger_doc(a), ledger_doc(b))), tostring(covers(a, b))}
"""
_times = st.sampled_from([0.0, 0.1, 0.2, 0.30000000000000004, 1.5, 2.0, 1e-07, 12345.678, 1e17])


@st.composite
def _ledger_state(draw) -> dict:
    dp_ledger = Ledger(eps_window=10_000.0, window_s=1e18)
    for t in sorted(draw(st.lists(_times, max_size=8))):
        assert dp_ledger.try_spend(t, Fraction(1, draw(st.integers(1, 7))))
    state = dp_ledger.to_dict()  # the shape store.py writes, from the real ledger
    if draw(st.booleans()):  # drop a prefix, as a shorter window would (latest_dropped: the last dropped)
        k = draw(st.integers(0, len(state["spends"])))
        if k:
            state["latest_dropped"] = state["spends"][k - 1][0]
            state["spends"] = state["spends"][k:]
    return state


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=_ledger_state(), b=_ledger_state())
def test_covers_reads_the_ledger_text_as_decoding_it_would(r: redis.Redis, a: dict, b: dict) -> None:
    script = r.register_script(_COVERS_BOTH)
    for x, y in ((a, b), (b, a), (a, a)):
        text, doc, used = (v.decode() for v in script(keys=[], args=[json.dumps(x), json.dumps(y)]))
        assert text == doc == used, (x, y)


def test_covers_falls_back_to_decoding_a_text_of_another_shape(r: redis.Redis) -> None:
    script = r.register_script(_COVERS_BOTH)
    newer = {"window_s": 60.0, "spends": [[1.0, "1/10"], [2.0, "1/10"]], "eps_window": 10.0}  # no latest_dropped
    older = {"spends": [[1.0, "1/10"]]}
    for x, y, want in ((newer, older, "true"), (older, newer, "false")):
        text, doc, used = (v.decode() for v in script(keys=[], args=[json.dumps(x), json.dumps(y)]))
        assert (text, doc, used) == ("nil", want, want)
