"""The Redis store: camera configs, releases, ledger state, leases, status, API keys and audits.

Two faces over one key schema (`service.keys`): `SyncStore` for workers and the CLI (threads), and
`AsyncStore` for the API (asyncio). Every Redis error is translated here into `dp.StoreUnavailable`, so no
caller catches a redis-py class. Nothing stored here is a raw frame or an un-noised statistic: releases are
`dp.Release.to_bytes()` plus public summary fields of the release header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from dp.errors import DpstreamError, StoreUnavailable
from service.keys import Keys
from service.models import Camera, CameraStatus, ReleaseSummary
from service.redaction import describe_validation_error, redact_text

log = logging.getLogger("dpstream.store")


class StoredCameraUnreadable(DpstreamError):
    """A stored camera config this version cannot read (written by hand, or by another dpstream version).
    The message names the fields and what is wrong with them, never their values (a source's password)."""

    def __init__(self, camera_id: str, err: ValidationError) -> None:
        super().__init__(f"camera {camera_id!r}: its stored config is unreadable ({describe_validation_error(err)}); "
                         f"delete the camera (DELETE /api/v1/cameras/{camera_id}) and create it again")
        self.camera_id = camera_id


def _camera_from_json(camera_id: str, raw: bytes | str) -> Camera:
    try:
        return Camera.model_validate_json(raw)
    except ValidationError as err:
        raise StoredCameraUnreadable(camera_id, err) from None  # not chained: pydantic's text quotes values

# renew only a lease we still hold; another worker may have taken it over after expiry
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Store one release atomically (exact MAXLEN: one entry trimmed per entry added, so retention is exact),
# only while the camera exists (a release still in flight when the camera is deleted must not re-create its
# keys) and only by the lease holder (releases a worker buffered while Redis was down are dropped if another
# worker took the camera meanwhile: one writer per camera, one consistent ledger). A lease that expired while
# Redis was down is taken back. The ledger does not expire while its camera exists (see save_ledger). KEYS:
# camera, stream, latest, ledger, lease. ARGV: maxlen, minid ("" for none), ledger json ("" for none), (unused),
# worker id, lease ttl ms, then field/value pairs.
_APPEND_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local owner = redis.call('GET', KEYS[5])
if owner == false then
  redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[6])
elseif owner ~= ARGV[5] then
  return false
end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], '*', unpack(fields))
if ARGV[2] ~= '' then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[4], ARGV[3])
end
fields[#fields + 1] = 'id'
fields[#fields + 1] = id
redis.call('HSET', KEYS[3], unpack(fields))
if ARGV[7] ~= '' then
  -- retention_s: once a camera stops releasing, its newest release (and so all of them) goes too
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
return id
"""
# A camera's ledger outlives it by `ttl` (delete_camera); while the camera exists it does not expire. KEYS:
# camera, ledger. ARGV: ledger json, ttl ms.
_LEDGER_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1])
else
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
return 1
"""
_STATUS_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""
SUMMARY_FIELDS = ("camera_id", "frame_index", "timestamp_s", "height", "width", "channels", "layout",
                  "eps_spent")


def _oldest_kept_id(retention_s: float) -> str:
    """The stream entry id below which releases are older than retention_s (ids start with their ms time)."""
    return f"{max(0, now_ms() - int(retention_s * 1000))}-0"


def _store_error(err: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"Redis store unavailable: {redact_text(str(err)) or type(err).__name__}")


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py errors into `StoreUnavailable` at this edge."""
    try:
        yield
    except redis.RedisError as err:
        raise _store_error(err) from None
    except OSError as err:  # socket errors that escape redis-py's own classes
        raise _store_error(err) from None


class Heartbeat(NamedTuple):
    loads: dict[str, int]  # live worker id -> cameras it holds
    was_alive: bool  # this worker's liveness had not expired


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def summary_from_fields(entry_id: str | bytes, fields: dict[bytes, bytes]) -> ReleaseSummary:
    data = fields.get(b"r", b"")
    get = lambda k: _text(fields.get(k.encode(), b"0"))  # noqa: E731
    return ReleaseSummary(
        entry_id=_text(entry_id), camera_id=get("camera_id"), frame_index=int(get("frame_index")),
        timestamp_s=float(get("timestamp_s")), height=int(get("height")), width=int(get("width")),
        channels=int(get("channels")), layout=get("layout"), eps_spent=float(get("eps_spent")),
        size_bytes=len(data),
    )


def status_from_json(camera_id: str, raw: bytes | None, worker: bytes | None) -> CameraStatus:
    if raw is None:  # claimed but not reported yet: starting; else nobody runs it
        return CameraStatus(id=camera_id, state="STARTING" if worker else "UNASSIGNED",
                            worker=_text(worker) if worker else None)
    doc = json.loads(raw)
    doc["id"] = camera_id
    doc["worker"] = _text(worker) if worker else None
    if worker is None and doc.get("state") not in ("DISABLED", "FAILED"):
        doc["state"] = "UNASSIGNED"
    return CameraStatus.model_validate(doc)


class SyncStore:
    """Blocking store, for worker threads and the CLI."""

    def __init__(self, url: str, *, prefix: str = "dpstream", socket_timeout_s: float = 2.0) -> None:
        self.keys = Keys(prefix)
        self.redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            health_check_interval=5,
        )
        self._renew = self.redis.register_script(_RENEW_LUA)
        self._release = self.redis.register_script(_RELEASE_LUA)
        self._append = self.redis.register_script(_APPEND_LUA)
        self._save_ledger = self.redis.register_script(_LEDGER_LUA)
        self._set_status = self.redis.register_script(_STATUS_LUA)

    def close(self) -> None:
        self.redis.close()

    def ping(self) -> bool:
        with translate_errors():
            return bool(self.redis.ping())

    # --- cameras ------------------------------------------------------------------------------
    def camera_ids(self) -> list[str]:
        with translate_errors():
            return sorted(_text(x) for x in self.redis.smembers(self.keys.cameras))

    def get_camera(self, camera_id: str) -> Camera | None:
        """The stored config, None when there is none; `StoredCameraUnreadable` when this version cannot
        read it."""
        with translate_errors():
            raw = self.redis.get(self.keys.camera(camera_id))
        return _camera_from_json(camera_id, raw) if raw else None

    def put_camera(self, camera: Camera) -> None:
        """Create or replace a camera (CLI and `dpstream up`; the API uses AsyncStore)."""
        with translate_errors():
            pipe = self.redis.pipeline()
            pipe.set(self.keys.camera(camera.id), camera.model_dump_json())
            pipe.sadd(self.keys.cameras, camera.id)
            pipe.publish(self.keys.config_channel,
                         json.dumps({"id": camera.id, "op": "put", "version": camera.version}))
            pipe.execute()

    def pubsub(self):  # -> redis.client.PubSub
        ps = self.redis.pubsub(ignore_subscribe_messages=True)
        with translate_errors():
            ps.subscribe(self.keys.config_channel)
        return ps

    # --- leases and liveness -------------------------------------------------------------------
    def acquire_lease(self, camera_id: str, worker_id: str, ttl_s: float) -> bool:
        with translate_errors():
            return bool(self.redis.set(self.keys.lease(camera_id), worker_id, nx=True, px=int(ttl_s * 1000)))

    def renew_lease(self, camera_id: str, worker_id: str, ttl_s: float) -> bool:
        with translate_errors():
            return bool(self._renew(keys=[self.keys.lease(camera_id)], args=[worker_id, int(ttl_s * 1000)]))

    def release_lease(self, camera_id: str, worker_id: str) -> None:
        with translate_errors():
            self._release(keys=[self.keys.lease(camera_id)], args=[worker_id])

    def lease_pttls(self, camera_ids: list[str]) -> list[int]:
        """Milliseconds left on each camera's lease (-2: no lease)."""
        if not camera_ids:
            return []
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for cid in camera_ids:
                pipe.pttl(self.keys.lease(cid))
            return [int(x) for x in pipe.execute()]

    def lease_owner(self, camera_id: str) -> str | None:
        with translate_errors():
            v = self.redis.get(self.keys.lease(camera_id))
        return _text(v) if v else None

    def heartbeat_worker(self, worker_id: str, ttl_s: float, info: dict[str, Any]) -> Heartbeat:
        """Mark this worker alive for `ttl_s`; returns the live workers, how many cameras each holds, and
        whether this worker was still marked alive (False on its first heartbeat, and after its liveness
        expired: Redis was down or lost its data, or the worker stalled)."""
        t = now_ms()
        with translate_errors():
            pipe = self.redis.pipeline()
            pipe.set(self.keys.worker(worker_id), json.dumps(info), px=int(ttl_s * 1000), get=True)
            pipe.zadd(self.keys.workers, {worker_id: t + int(ttl_s * 1000)})
            pipe.zremrangebyscore(self.keys.workers, "-inf", t)
            pipe.zrange(self.keys.workers, 0, -1)
            replies = pipe.execute()
            ids = [_text(w) for w in replies[-1]]
            raws = self.redis.mget([self.keys.worker(w) for w in ids]) if ids else []
        loads: dict[str, int] = {}
        for wid, raw in zip(ids, raws, strict=True):
            if raw:
                try:
                    loads[wid] = int(json.loads(raw).get("cameras", 0))
                except (ValueError, TypeError):
                    loads[wid] = 0
        return Heartbeat(loads, was_alive=replies[0] is not None)

    def remove_worker(self, worker_id: str) -> None:
        with translate_errors():
            pipe = self.redis.pipeline()
            pipe.delete(self.keys.worker(worker_id))
            pipe.zrem(self.keys.workers, worker_id)
            pipe.execute()

    # --- releases, ledger, status --------------------------------------------------------------
    def append_release(
        self, camera_id: str, data: bytes, summary: dict[str, Any], *, ledger_state: dict[str, Any] | None,
        retention_releases: int, retention_s: float | None, worker_id: str, lease_ttl_s: float,
    ) -> str | None:
        """Store one release atomically (stream entry, latest, ledger); returns its stream entry id, or None
        when the camera no longer exists or another worker holds its lease.

        Once this returns, the release is acknowledged: with append-only persistence it survives a Redis
        restart.
        """
        fields: list[Any] = ["r", data]
        for k in SUMMARY_FIELDS:
            fields += [k, str(summary[k])]
        min_id = _oldest_kept_id(retention_s) if retention_s is not None else ""
        k = self.keys
        with translate_errors():
            res = self._append(
                keys=[k.camera(camera_id), k.releases(camera_id), k.latest(camera_id), k.ledger(camera_id),
                      k.lease(camera_id)],
                args=[retention_releases, min_id, json.dumps(ledger_state) if ledger_state is not None else "",
                      "", worker_id, int(lease_ttl_s * 1000),
                      max(1, int(retention_s * 1000)) if retention_s is not None else "", *fields])
        return _text(res) if res else None

    def trim_old_releases(self, camera_id: str, retention_s: float) -> None:
        """Drop releases older than retention_s (an idle camera's: appends trim the others)."""
        with translate_errors():
            self.redis.xtrim(self.keys.releases(camera_id), minid=_oldest_kept_id(retention_s))

    def save_ledger(self, camera_id: str, state: dict[str, Any], ttl_s: float) -> None:
        """Store a camera's ledger. It does not expire while the camera exists: a camera stopped for longer
        than its window and then given a longer one must still count the releases that window reaches back
        to. Once the camera is deleted, it expires after `ttl_s` (as `delete_camera` sets it)."""
        with translate_errors():
            self._save_ledger(keys=[self.keys.camera(camera_id), self.keys.ledger(camera_id)],
                              args=[json.dumps(state), max(1, int(ttl_s * 1000))])

    def load_ledger(self, camera_id: str) -> dict[str, Any] | None:
        with translate_errors():
            raw = self.redis.get(self.keys.ledger(camera_id))
        return json.loads(raw) if raw else None

    def set_status(self, camera_id: str, status: dict[str, Any], ttl_s: float) -> None:
        """Report a camera's status (ignored once the camera is deleted)."""
        with translate_errors():
            self._set_status(keys=[self.keys.camera(camera_id), self.keys.status(camera_id)],
                             args=[json.dumps(status), int(ttl_s * 1000)])

    def put_apikey(self, key_hash: str, doc: dict[str, Any], *, ttl_s: float | None = None) -> None:
        with translate_errors():
            self.redis.set(self.keys.apikey(key_hash), json.dumps(doc),
                           px=max(1, int(ttl_s * 1000)) if ttl_s is not None else None)

    def apikeys(self) -> dict[str, dict[str, Any]]:
        """Every stored API key: its SHA-256 -> its document (scope, name, created_s, expires_s)."""
        marker = self.keys.apikey("")
        with translate_errors():
            names = [_text(k) for k in self.redis.scan_iter(match=marker + "*", count=1000)]
            raws = self.redis.mget(names) if names else []
        return {name[len(marker):]: json.loads(raw) for name, raw in zip(names, raws, strict=True) if raw}

    def delete_apikey(self, key_hash: str) -> bool:
        with translate_errors():
            return bool(self.redis.delete(self.keys.apikey(key_hash)))


class AsyncStore:
    """Non-blocking store, for the API."""

    def __init__(self, url: str, *, prefix: str = "dpstream", socket_timeout_s: float = 2.0,
                 max_connections: int = 64) -> None:
        self.keys = Keys(prefix)
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            max_connections=max_connections,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        with translate_errors():
            return bool(await self.redis.ping())

    # --- cameras ------------------------------------------------------------------------------
    async def list_cameras(self) -> list[Camera]:
        with translate_errors():
            ids = sorted(_text(x) for x in await self.redis.smembers(self.keys.cameras))
            if not ids:
                return []
            raws = await self.redis.mget([self.keys.camera(i) for i in ids])
        cameras = []
        for cid, raw in zip(ids, raws, strict=True):
            if not raw:
                continue
            try:
                cameras.append(_camera_from_json(cid, raw))
            except StoredCameraUnreadable as err:  # one broken config must not hide the others
                log.warning("%s", err)
        return cameras

    async def get_camera(self, camera_id: str) -> Camera | None:
        """See SyncStore.get_camera."""
        with translate_errors():
            raw = await self.redis.get(self.keys.camera(camera_id))
        return _camera_from_json(camera_id, raw) if raw else None

    async def create_camera(self, camera: Camera) -> bool:
        """False when the id is taken."""
        with translate_errors():
            if not await self.redis.set(self.keys.camera(camera.id), camera.model_dump_json(), nx=True):
                return False
            pipe = self.redis.pipeline()
            pipe.sadd(self.keys.cameras, camera.id)
            pipe.publish(self.keys.config_channel,
                         json.dumps({"id": camera.id, "op": "put", "version": camera.version}))
            await pipe.execute()
        return True

    async def replace_camera(self, camera: Camera, expected_version: int) -> bool:
        """Write `camera` if the stored one still has `expected_version` (optimistic concurrency)."""
        key = self.keys.camera(camera.id)
        with translate_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if not raw or _camera_from_json(camera.id, raw).version != expected_version:
                        return False
                    pipe.multi()
                    pipe.set(key, camera.model_dump_json())
                    pipe.publish(self.keys.config_channel,
                                 json.dumps({"id": camera.id, "op": "put", "version": camera.version}))
                    await pipe.execute()
                except redis.WatchError:
                    return False
        return True

    async def delete_camera(self, camera_id: str, ledger_ttl_s: float) -> bool:
        with translate_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(*self.keys.per_camera(camera_id))
            pipe.srem(self.keys.cameras, camera_id)
            # the ledger outlives the camera by one window, so delete-and-recreate cannot reset the budget
            pipe.pexpire(self.keys.ledger(camera_id), max(1, int(ledger_ttl_s * 1000)))
            pipe.publish(self.keys.config_channel, json.dumps({"id": camera_id, "op": "delete", "version": 0}))
            res = await pipe.execute()
        return bool(res[0])

    # --- status, budget, releases --------------------------------------------------------------
    async def status(self, camera_id: str) -> CameraStatus:
        with translate_errors():
            raw, worker = await self.redis.mget(self.keys.status(camera_id), self.keys.lease(camera_id))
        return status_from_json(camera_id, raw, worker)

    async def statuses(self, camera_ids: list[str]) -> list[CameraStatus]:
        if not camera_ids:
            return []
        keys = [k for i in camera_ids for k in (self.keys.status(i), self.keys.lease(i))]
        with translate_errors():
            vals = await self.redis.mget(keys)
        return [status_from_json(i, vals[2 * n], vals[2 * n + 1]) for n, i in enumerate(camera_ids)]

    async def load_ledger(self, camera_id: str) -> dict[str, Any] | None:
        with translate_errors():
            raw = await self.redis.get(self.keys.ledger(camera_id))
        return json.loads(raw) if raw else None

    async def load_ledgers(self, camera_ids: list[str]) -> list[dict[str, Any] | None]:
        if not camera_ids:
            return []
        with translate_errors():
            raws = await self.redis.mget([self.keys.ledger(i) for i in camera_ids])
        return [json.loads(r) if r else None for r in raws]

    async def latest_bytes(self, camera_id: str) -> bytes | None:
        with translate_errors():
            return await self.redis.hget(self.keys.latest(camera_id), "r")

    async def latest(self, camera_id: str) -> tuple[ReleaseSummary, bytes] | None:
        with translate_errors():
            fields = await self.redis.hgetall(self.keys.latest(camera_id))
        if not fields:
            return None
        return summary_from_fields(fields[b"id"], fields), fields[b"r"]

    async def releases(self, camera_id: str, since: str | None, limit: int) -> list[ReleaseSummary]:
        start = f"({since}" if since else "-"
        with translate_errors():
            entries = await self.redis.xrange(self.keys.releases(camera_id), min=start, max="+", count=limit)
        return [summary_from_fields(eid, f) for eid, f in entries]

    async def release(self, camera_id: str, entry_id: str) -> bytes | None:
        with translate_errors():
            entries = await self.redis.xrange(self.keys.releases(camera_id), min=entry_id, max=entry_id,
                                              count=1)
        return entries[0][1][b"r"] if entries else None

    async def wait_releases(self, camera_id: str, last_id: str, block_ms: int) -> list[tuple[str, bytes]]:
        """Releases after `last_id` (`$`: only new ones), waiting up to `block_ms`."""
        with translate_errors():
            res = await self.redis.xread({self.keys.releases(camera_id): last_id}, count=4, block=block_ms)
        out: list[tuple[str, bytes]] = []
        for _stream, entries in res or []:
            out.extend((_text(eid), f[b"r"]) for eid, f in entries)
        return out

    # --- api keys and audits --------------------------------------------------------------------
    async def get_apikey(self, key_hash: str) -> dict[str, Any] | None:
        with translate_errors():
            raw = await self.redis.get(self.keys.apikey(key_hash))
        return json.loads(raw) if raw else None

    async def put_audit(self, audit_id: str, doc: dict[str, Any], ttl_s: float = 7 * 86_400) -> None:
        with translate_errors():
            await self.redis.set(self.keys.audit(audit_id), json.dumps(doc), px=int(ttl_s * 1000))

    async def get_audit(self, audit_id: str) -> dict[str, Any] | None:
        with translate_errors():
            raw = await self.redis.get(self.keys.audit(audit_id))
        return json.loads(raw) if raw else None
