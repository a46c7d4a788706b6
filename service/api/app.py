"""The app factory: receives its collaborators (settings, store) and mounts one router per resource."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from typing import Any

from fastapi import FastAPI

from service.api import audits, cameras, errors, health, releases
from service.audits import AuditRunner
from service.auth import Authenticator
from service.metrics import API_REQUEST_DURATION
from service.render import JpegCache, LatestCache
from service.settings import Settings
from service.store import AsyncStore

log = logging.getLogger("dpstream.api")

DESCRIPTION = """Differentially private pixelization of camera streams.

Every `/api/v1` route needs `Authorization: Bearer <token>`: read scope for GET, admin scope for changes.
Each camera states its guarantee as `(eps_window, m_pixels, window_s)`: any `window_s` seconds of its
releases are `eps_window`-differentially private for changes of up to `m_pixels` pixel positions.
"""


class RequestTimer:
    """Pure ASGI middleware timing every request by its route template (cheap on the hot path)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status_code = [500]

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_code[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            API_REQUEST_DURATION.labels(scope["method"], path, str(status_code[0])).observe(
                time.perf_counter() - t0)


def create_app(settings: Settings, store: AsyncStore | None = None) -> FastAPI:
    """The API over `store` (made from `settings.redis_url` when not given, and then closed with the app)."""
    own_store = store is None
    if store is None:
        if not settings.redis_url:
            raise ValueError("create_app needs a store or settings.redis_url")
        store = AsyncStore(settings.redis_url, prefix=settings.key_prefix)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # objects alive at startup (modules, the app, its routes) never become garbage: keep them out of the
        # collector's generations, so full collections stay short and do not stretch tail latency
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.audits.close()
            if own_store:
                await store.close()

    app = FastAPI(title="dpstream", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", openapi_url="/openapi.json")
    app.state.settings = settings
    app.state.store = store
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    app.state.authenticator = Authenticator(store, admin)
    app.state.jpegs = JpegCache()
    app.state.latest = LatestCache(settings.latest_cache_s)
    app.state.audits = AuditRunner(store)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(cameras.router)
    app.include_router(releases.router)
    app.include_router(audits.router)
    app.add_middleware(RequestTimer)
    return app
