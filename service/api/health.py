"""`/healthz` (the process is up), `/readyz` (it can reach Redis) and `/metrics` (Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from dp.errors import StoreUnavailable
from service.api.deps import StoreDep
from service.metrics import REDIS_ERRORS, refresh_camera_gauges
from service.models import Health

log = logging.getLogger("dpstream.api")
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: answers while the process runs."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health,
            responses={503: {"model": Health, "description": "The Redis store is unreachable."}})
async def readyz(store: StoreDep, response: Response) -> Health:
    """Readiness: the API can reach Redis."""
    try:
        await store.ping()
    except StoreUnavailable as err:
        REDIS_ERRORS.labels("api").inc()
        log.warning("not ready: %s", err)  # where Redis is and what failed: for the log, not for anyone who asks
        response.status_code = 503
        return Health(status="unavailable", detail="the Redis store is unreachable")
    return Health(status="ok")


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}})
async def metrics(store: StoreDep) -> Response:
    """Prometheus metrics of this process, plus per-camera budget and health gauges read from Redis (while
    Redis is unreachable: the process's own metrics, with the failed reads counted, never a 503)."""
    try:
        await refresh_camera_gauges(store)
    except StoreUnavailable:
        REDIS_ERRORS.labels("api").inc()  # still serve the process's own metrics
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
