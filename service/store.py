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
import uuid
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
# A camera's ledger in Redis never loses a spend that still counts. A state `a` covers a state `b` when it
# holds b's latest spend (as many spends at that time), or has dropped spends at least as late (b's then
# count for no window to come). Spend times never go back (dp.Ledger refuses it, and a worker taking a camera
# over charges no earlier than the last stored spend), so each state covers the states it grew from:
# * the incoming state covers the stored one: it is the same ledger, later: written;
# * only the stored one covers the incoming one: an older snapshot of it (a release that was still being
#   written when `save_state` stored the full ledger): not written, the stored ledger counts its spend;
# * neither: two ledgers spent apart. A worker that lost the camera while it could not reach Redis (its lease
#   expired, another worker claimed the camera, spent, and let it go) takes the free lease back with a
#   ledger that lacks the other's spends: what it releases from it would overspend the window.
_LEDGER_ORDER_LUA = """
local function ledger_doc(raw)
  if not raw or raw == '' then return nil end
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' then return doc end
  return nil
end
local function spends_at(spends, t)
  local n = 0
  for i = #spends, 1, -1 do
    local s = tonumber(spends[i][1])
    if s == nil or s < t then break end
    if s == t then n = n + 1 end
  end
  return n
end
local function covers_doc(a, b)
  local spends = b['spends']
  if type(spends) ~= 'table' or #spends == 0 then return true end
  local t = tonumber(spends[#spends][1])
  if t == nil then return true end
  if type(a['spends']) == 'table' and spends_at(a['spends'], t) >= spends_at(spends, t) then return true end
  local dropped = a['latest_dropped']
  return type(dropped) == 'number' and dropped >= t
end
-- The same, read off the text as store.py writes it (json.dumps of dp.Ledger.to_dict), without decoding it:
-- two decodes cost more than the rest of an append (about 60 us each for 150 spends, and growing with
-- them). "spends" holds [time, "cost"] pairs in time order and "latest_dropped" comes last; Python writes a
-- float one way only, so the spends at time t are the occurrences of '[' .. t .. ', "'. nil for a text of
-- any other shape (a state of another version): the caller decodes it then.
local function last_spend_text(raw)
  if string.find(raw, '"spends": [], "latest_dropped": ', 1, true) then
    if string.match(raw, '"latest_dropped": [^,}]+}$') then return false end  -- no spend
    return nil
  end
  return string.match(raw, '^.*%[([^%[%],"]+), "[^"]*"%]%], "latest_dropped": [^,}]+}$')
end
local function count_text(raw, needle)
  local n, i = 0, 1
  while true do
    local _, e = string.find(raw, needle, i, true)
    if not e then return n end
    n, i = n + 1, e + 1
  end
end
local function covers_text(a, b)
  local t, ta = last_spend_text(b), last_spend_text(a)
  if t == nil or ta == nil then return nil end
  if t == false then return true end
  local needle = '[' .. t .. ', "'
  if ta and count_text(a, needle) >= count_text(b, needle) then return true end
  local dropped = tonumber(string.match(a, '"latest_dropped": ([^,}]+)}$'))
  return dropped ~= nil and dropped >= tonumber(t)
end
-- Does ledger text `a` cover ledger text `b`? nil when `b` is no ledger (nothing to keep), false when only
-- `a` is none.
local function covers(a, b)
  local fast = covers_text(a, b)
  if fast ~= nil then return fast end
  local da, db = ledger_doc(a), ledger_doc(b)
  if not db then return nil end
  return da ~= nil and covers_doc(da, db)
end
"""
# Store one release atomically (exact MAXLEN: one entry trimmed per entry added, so retention is exact; exact
# MINID, computed from the new entry's id, so that retention_s is exact and measured by Redis's clock, not the
# worker's), only while the camera exists (a release still in flight when the camera is deleted must not
# re-create its keys) and only by the lease holder (releases a worker buffered while Redis was down are
# dropped if another worker took the camera meanwhile: one writer per camera, one consistent ledger). A lease
# that expired while Redis was down is taken back, unless the release is older than the stored ledger (its
# write was still under way when the worker stored its full ledger and handed the camera back). The ledger
# does not expire while its camera exists (see save_ledger), and never loses a spend (see _LEDGER_ORDER_LUA):
# a release whose ledger diverged from the stored one is refused, and the lease is left to expire under a
# `stale:<worker>` value that the worker cannot renew or take, so that it lets the camera go; whoever claims
# it next starts from the stored ledger.
#
# Idempotent: a release whose reply was lost (the connection dropped after Redis ran the script) is sent
# again by redis-py and by the publisher; its release id, kept in `latest`, makes the second call return the
# first call's entry id instead of storing the release twice. The publisher stores one release at a time, so
# only the latest one can be retried. Keys of the wrong type are refused before anything is written (a
# script is not rolled back when a command in it fails). KEYS: camera, stream, latest, ledger, lease. ARGV:
# maxlen, release id, ledger json ("" for none), (unused), worker id, lease ttl ms, retention ms ("" for
# none), then field/value pairs.
_APPEND_LUA = _LEDGER_ORDER_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local want = {'stream', 'hash', 'string'}
for i = 2, 4 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want[i - 1] then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want[i - 1])
  end
end
-- stored already (by this worker, under its lease then: a worker that claimed the camera later loaded it)
local done = redis.call('HMGET', KEYS[3], 'rid', 'id')
if done[1] == ARGV[2] and done[2] then
  return done[2]
end
local owner = redis.call('GET', KEYS[5])
if owner ~= false and owner ~= ARGV[5] then
  return false
end
local incoming = ARGV[3] ~= '' and ARGV[3] or nil
local stored = redis.call('GET', KEYS[4])
local older = false
if incoming and stored and covers(incoming, stored) == false then
  if covers(stored, incoming) ~= true then
    redis.call('SET', KEYS[5], 'stale:' .. ARGV[5], 'PX', ARGV[6])
    return false
  end
  older = true
end
-- a free lease is taken back, but not for an older snapshot: this worker stored a newer state since
-- (save_state) and let the camera go; the release is stored, the lease stays free
if owner == false and not older then
  redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[6])
end
if incoming and not older then
  redis.call('SET', KEYS[4], ARGV[3])
end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], '*', unpack(fields))
if ARGV[7] ~= '' then
  local ms = tonumber(string.match(id, '^(%d+)'))
  local oldest = ms - tonumber(ARGV[7])
  if oldest > 0 then
    redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', oldest))
  end
end
fields[#fields + 1] = 'id'
fields[#fields + 1] = id
fields[#fields + 1] = 'rid'
fields[#fields + 1] = ARGV[2]
redis.call('HSET', KEYS[3], unpack(fields))
if ARGV[7] ~= '' then
  -- retention_s: once a camera stops releasing, its newest release (and so all of them) goes too
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
else
  -- no retention_s (any more): a TTL set while the camera had one must not delete its releases later
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
end
return id
"""
# A camera's ledger outlives it by `ttl` (delete_camera); while the camera exists it does not expire. A
# state that does not cover the stored one (see _LEDGER_ORDER_LUA) is not written. KEYS: camera, ledger.
# ARGV: ledger json, ttl ms. Returns 1 when written, 0 when not.
_LEDGER_LUA = _LEDGER_ORDER_LUA + """
local stored = redis.call('GET', KEYS[2])
if stored and covers(ARGV[1], stored) == false then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1])
else
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
return 1
"""
# Drop releases older than ARGV[1] ms by Redis's clock (the one stream ids are made of; a worker's clock may
# be off). KEYS: stream.
_TRIM_LUA = """
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
if oldest <= 0 then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', oldest))
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


class StoreRefused(StoreUnavailable):
    """Redis answered, and refused the command for the data it touches (a key of the camera holds the wrong
    type, written by hand or by a bug elsewhere): trying again cannot help until the key is repaired."""


def _store_error(err: Exception) -> StoreUnavailable:
    text = redact_text(str(err)) or type(err).__name__
    if isinstance(err, redis.ResponseError) and str(err).startswith("WRONGTYPE"):
        return StoreRefused(f"Redis store refused the command: {text}")
    if isinstance(err, redis.exceptions.NoPermissionError | redis.AuthenticationError):
        return StoreUnavailable(f"Redis store refused this client: {text} (the embedded Valkey of `dpstream up` "
                                "takes the password it keeps under DPSTREAM_DATA, readable by the account that "
                                "runs it alone: run as that account with its DPSTREAM_DATA, or set REDIS_URL)")
    return StoreUnavailable(f"Redis store unavailable: {text}")


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py errors into `StoreUnavailable` (`StoreRefused` for a key of the wrong type) at this
    edge."""
    try:
        yield
    except redis.RedisError as err:
        raise _store_error(err) from None
    except OSError as err:  # socket errors that escape redis-py's own classes
        raise _store_error(err) from None


def new_release_id() -> str:
    """A release's id for `append_release`: unique, and meaningless (no content of the release)."""
    return uuid.uuid4().hex


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
        self._trim = self.redis.register_script(_TRIM_LUA)
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
        release_id: str | None = None,
    ) -> str | None:
        """Store one release atomically (stream entry, latest, ledger); returns its stream entry id, or None
        when the camera no longer exists, another worker holds its lease, or `ledger_state` lacks spends of
        the stored ledger that still count (another worker ran the camera meanwhile: the lease is then left
        to expire under a value this worker cannot renew, so that it lets the camera go).

        Once this returns, the release is acknowledged: with append-only persistence it survives a Redis
        restart. Calling it again with the same `release_id` (after `StoreUnavailable`: the reply may have
        been lost after Redis stored the release) returns the same entry id and stores nothing twice, as long
        as no other release of the camera was stored in between. `StoreRefused` when one of the camera's keys
        holds the wrong type (nothing is written then).
        """
        fields: list[Any] = ["r", data]
        for k in SUMMARY_FIELDS:
            fields += [k, str(summary[k])]
        k = self.keys
        with translate_errors():
            res = self._append(
                keys=[k.camera(camera_id), k.releases(camera_id), k.latest(camera_id), k.ledger(camera_id),
                      k.lease(camera_id)],
                args=[retention_releases, release_id or new_release_id(),
                      json.dumps(ledger_state) if ledger_state is not None else "",
                      "", worker_id, int(lease_ttl_s * 1000),
                      max(1, int(retention_s * 1000)) if retention_s is not None else "", *fields])
        return _text(res) if res else None

    def trim_old_releases(self, camera_id: str, retention_s: float) -> None:
        """Drop releases older than retention_s (an idle camera's: appends trim the others). Exact, not
        approximate (a release older than retention_s is never kept), and by Redis's clock."""
        with translate_errors():
            self._trim(keys=[self.keys.releases(camera_id)], args=[max(1, int(retention_s * 1000))])

    def save_ledger(self, camera_id: str, state: dict[str, Any], ttl_s: float) -> bool:
        """Store a camera's ledger. It does not expire while the camera exists: a camera stopped for longer
        than its window and then given a longer one must still count the releases that window reaches back
        to. Once the camera is deleted, it expires after `ttl_s` (as `delete_camera` sets it). A state that
        lacks spends of the stored one that still count (an older snapshot, or another worker's ledger since:
        see `_LEDGER_ORDER_LUA`) is not written: False then."""
        with translate_errors():
            return bool(self._save_ledger(keys=[self.keys.camera(camera_id), self.keys.ledger(camera_id)],
                                          args=[json.dumps(state), max(1, int(ttl_s * 1000))]))

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
