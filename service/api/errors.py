"""Exception handlers: dpstream errors become HTTP answers with a message that says what to do."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dp.errors import StoreUnavailable
from service.metrics import REDIS_ERRORS
from service.store import StoredCameraUnreadable

log = logging.getLogger("dpstream.api")


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each offending value ("input"): a camera URL with its password, or a
        # NaN that JSON cannot carry (a 500 instead of this 422). Where and why is what a client needs.
        detail = [{"type": e.get("type", ""), "loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        REDIS_ERRORS.labels("api").inc()
        log.warning("store unavailable: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StoredCameraUnreadable)
    async def _unreadable_camera(_request: Request, exc: StoredCameraUnreadable) -> JSONResponse:
        # the server's own data is broken: a 500 that says which camera and field, and how to get out of it
        # (no traceback: pydantic's text would quote the source with its password)
        log.warning("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)
