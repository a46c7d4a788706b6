"""The app factory: receives its collaborators (settings, store) and mounts one router per resource."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException

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


# the methods a request is labelled with; any other is "other". The method comes from the caller, before any
# token is checked: with uvicorn's h11 parser (no httptools) any token is a method, and each one a new series
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
            method = scope["method"] if scope["method"] in METHOD_LABELS else "other"
            API_REQUEST_DURATION.labels(method, path, str(status_code[0])).observe(
                time.perf_counter() - t0)


MAX_BODY_BYTES = 2 << 20  # the largest camera (a 65,536-block layout map) is about 330 kB of JSON


class BodyLimit:
    """Pure ASGI middleware refusing request bodies over `max_bytes` with a 413.

    FastAPI reads and parses a JSON body before it checks the bearer token, so without a bound anyone who
    reaches the port could make the API hold and parse a body of any size. A declared Content-Length over
    the bound is refused before a byte is read; a chunked body is counted as it arrives.
    """

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1  # the HTTP server refuses these itself
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0

        async def receive_counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside the route's body read: FastAPI passes an HTTPException on as it is
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, receive_counted, send)

    def _detail(self) -> str:
        return f"request body over {self.max_bytes} bytes"

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": self._detail()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


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
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestTimer)
    return app
