"""Bearer-token auth: read scope for GET, admin scope for changes.

API keys are random (`dps_` + 256 bits) and stored only as their SHA-256, so a Redis dump gives no usable
key. A presented key is hashed and looked up by its hash; the admin token from the settings is compared in
constant time. A short in-process cache keeps the hot read path (latest release) off an extra Redis round
trip; revoking a key therefore takes up to `cache_ttl_s` to apply.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Literal

from service.store import AsyncStore, SyncStore

Scope = Literal["read", "admin"]
TOKEN_PREFIX = "dps_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(store: SyncStore, scope: Scope, *, name: str = "") -> str:
    """Make a new API key with `scope`, store its hash, and return the key (shown once, never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    store.put_apikey(hash_token(token), {"scope": scope, "name": name, "created_s": time.time()})
    return token


def scope_allows(granted: Scope, needed: Scope) -> bool:
    return granted == "admin" or needed == "read"


class Authenticator:
    """Maps a bearer token to its scope, or None."""

    def __init__(self, store: AsyncStore, admin_token: str | None, *, cache_ttl_s: float = 2.0) -> None:
        self._store = store
        self._admin_hash = hash_token(admin_token).encode() if admin_token else None
        self._cache: dict[str, tuple[Scope | None, float]] = {}
        self._cache_ttl_s = cache_ttl_s

    async def scope_of(self, token: str) -> Scope | None:
        if not token or len(token) > 512:
            return None
        digest = hash_token(token)
        # compare fixed-length digests in constant time: no timing signal about the admin token
        if self._admin_hash is not None and hmac.compare_digest(digest.encode(), self._admin_hash):
            return "admin"
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        doc = await self._store.get_apikey(digest)
        scope: Scope | None = doc.get("scope") if doc and doc.get("scope") in ("read", "admin") else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (scope, now + self._cache_ttl_s)
        return scope
