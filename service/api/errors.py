"""Exception handlers: dpstream errors become HTTP answers with a message that says what to do."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dp.errors import StoreUnavailable
from service.metrics import REDIS_ERRORS

log = logging.getLogger("dpstream.api")


def install(app: FastAPI) -> None:
    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        REDIS_ERRORS.labels("api").inc()
        log.warning("store unavailable: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})
