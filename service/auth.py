"""Bearer-token auth: read scope for GET, admin scope for changes.

API keys are random (`dps_` + 256 bits) and stored only as their SHA-256, so a Redis dump gives no usable
key. A presented key is hashed and looked up by its hash; the admin token from the settings is compared in
constant time. A short in-process cache keeps the hot read path (latest release) off an extra Redis round
trip; revoking a key (`dpstream token revoke`) or its expiry (`token create --ttl`) therefore takes up to
`cache_ttl_s` to apply.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from typing import Literal

from dp.errors import ConfigError
from service.store import AsyncStore, SyncStore

Scope = Literal["read", "admin"]
TOKEN_PREFIX = "dps_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


KEY_ID_CHARS = 12  # a key's public id: the first hex digits of its SHA-256 (it gives nothing of the key)


def key_id(key_hash: str) -> str:
    return key_hash[:KEY_ID_CHARS]


def create_token(store: SyncStore, scope: Scope, *, name: str = "", ttl_s: float | None = None) -> str:
    """Make a new API key with `scope`, store its hash, and return the key (shown once, never stored). With
    `ttl_s` it stops working that many seconds from now (Redis deletes it)."""
    if ttl_s is not None and not (ttl_s > 0 and math.isfinite(ttl_s)):
        raise ConfigError(f"ttl_s={ttl_s!r} must be a positive number of seconds")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    doc = {"scope": scope, "name": name, "created_s": now}
    if ttl_s is not None:
        doc["expires_s"] = now + ttl_s
    store.put_apikey(hash_token(token), doc, ttl_s=ttl_s)
    return token


def list_tokens(store: SyncStore) -> list[dict]:
    """The stored keys, oldest first: id, scope, name, created_s, expires_s (None: never). No key itself."""
    rows = [{"id": key_id(h), "scope": d.get("scope"), "name": d.get("name", ""), "created_s": d.get("created_s"),
             "expires_s": d.get("expires_s")} for h, d in store.apikeys().items()]
    return sorted(rows, key=lambda r: (r["created_s"] or 0.0, r["id"]))


def revoke_token(store: SyncStore, token_or_id: str) -> dict:
    """Delete one key, named by the key itself or by its id (or a prefix of the id of at least 6 digits that
    only one key has); returns its listing. Takes effect within the API's cache time (2 s)."""
    keys = store.apikeys()
    if token_or_id.startswith(TOKEN_PREFIX):
        matches = [h for h in keys if h == hash_token(token_or_id)]
    elif len(token_or_id) >= 6 and all(c in "0123456789abcdef" for c in token_or_id.lower()):
        matches = [h for h in keys if h.startswith(token_or_id.lower())]
    else:
        raise ConfigError(f"{token_or_id[:16]!r} is neither a key (dps_...) nor a key id (6 to "
                          f"{KEY_ID_CHARS} hex digits, from `dpstream token list`)")
    if not matches:
        raise ConfigError("no such key (it may have expired or been revoked already); see `dpstream token list`")
    if len(matches) > 1:
        raise ConfigError(f"{token_or_id!r} is the start of {len(matches)} key ids; give more digits")
    doc = keys[matches[0]]
    store.delete_apikey(matches[0])
    return {"id": key_id(matches[0]), "scope": doc.get("scope"), "name": doc.get("name", "")}


def replace_tokens_named(store: SyncStore, scope: Scope, name: str) -> str:
    """Revoke every key called `name`, then create one: `dpstream up` keeps one key of its own, not one more
    per start."""
    for h, doc in store.apikeys().items():
        if doc.get("name") == name:
            store.delete_apikey(h)
    return create_token(store, scope, name=name)


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
        until = now + self._cache_ttl_s
        expires_s = doc.get("expires_s") if doc else None
        if scope is not None and isinstance(expires_s, (int, float)):
            left_s = expires_s - time.time()  # Redis deletes it then too; this keeps the cache from outliving it
            if left_s <= 0:
                scope = None
            else:
                until = min(until, now + left_s)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (scope, until)
        return scope
