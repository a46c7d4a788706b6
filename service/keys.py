"""The Redis key schema, in one place. Every key starts with the deployment's prefix.

Per-camera keys carry the camera id as a hash tag (`{<id>}`), so they share one Redis Cluster slot and the
atomic release script can touch them together.

    {p}:cameras              set of camera ids
    {p}:camera:{<id>}        camera config (JSON, credentials included: only workers read it raw)
    {p}:config               pub/sub channel: {"id", "op": "put"|"delete", "version"}
    {p}:releases:{<id>}      Redis Stream of releases (fields r=release bytes + public summary fields), at
                             most retention_releases entries, none older than retention_s
    {p}:latest:{<id>}        hash: the latest release (r), its entry id and summary, and its release id
                             (rid: a random token that makes a retried write idempotent)
    {p}:ledger:{<id>}        the camera's privacy ledger (dp.Ledger.to_dict(), JSON); never replaced by an
                             older state
    {p}:lease:{<id>}         worker id holding the camera, with a TTL renewed by heartbeat; `stale:<wid>`
                             until it expires when that worker's ledger lacked another's spends (store.py)
    {p}:status:{<id>}        health and counters, as last reported by the owning worker (JSON)
    {p}:worker:{wid}         a live worker (JSON), with a TTL renewed by heartbeat
    {p}:workers              sorted set of workers, scored by when their liveness runs out (ms)
    {p}:apikey:{sha256}      an API key's scope (JSON); the key itself is never stored
    {p}:audit:{aid}          an audit's state and report (JSON)

Expiry: `releases` and `latest` expire retention_s after the camera's last release (no TTL when it has no
retention_s); the ledger has no TTL while its camera exists and outlives a deleted camera by its window
(the API's delete; a worker's save after it, max(2 windows, 60 s)); `lease` lives lease_ttl_s, `status`
three of them, `worker` its liveness TTL; API keys expire when created with a TTL, audits after 7 days; the
camera config and `cameras` never expire.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "dpstream"

    @property
    def cameras(self) -> str:
        return f"{self.prefix}:cameras"

    @property
    def config_channel(self) -> str:
        return f"{self.prefix}:config"

    def camera(self, camera_id: str) -> str:
        return f"{self.prefix}:camera:{{{camera_id}}}"

    def releases(self, camera_id: str) -> str:
        return f"{self.prefix}:releases:{{{camera_id}}}"

    def latest(self, camera_id: str) -> str:
        return f"{self.prefix}:latest:{{{camera_id}}}"

    def ledger(self, camera_id: str) -> str:
        return f"{self.prefix}:ledger:{{{camera_id}}}"

    def lease(self, camera_id: str) -> str:
        return f"{self.prefix}:lease:{{{camera_id}}}"

    def status(self, camera_id: str) -> str:
        return f"{self.prefix}:status:{{{camera_id}}}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        """Sorted set of live workers, scored by the Unix time (ms) their liveness runs out."""
        return f"{self.prefix}:workers"

    def apikey(self, key_hash: str) -> str:
        return f"{self.prefix}:apikey:{key_hash}"

    def audit(self, audit_id: str) -> str:
        return f"{self.prefix}:audit:{audit_id}"

    def per_camera(self, camera_id: str) -> tuple[str, ...]:
        """Every key that belongs to one camera (deleted with it)."""
        # the ledger is not in this list: it outlives the camera by one window (see store.delete_camera)
        return (self.camera(camera_id), self.releases(camera_id), self.latest(camera_id),
                self.status(camera_id), self.lease(camera_id))
