"""Exception handlers: dpstream errors become HTTP answers with a message that says what to do."""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dp.errors import StoreUnavailable
from service.api.deps import bearer, require_admin, require_read
from service.metrics import REDIS_ERRORS
from service.store import StoredCameraUnreadable, StoreRefused

log = logging.getLogger("dpstream.api")


def _store_unavailable(exc: StoreUnavailable) -> JSONResponse:
    REDIS_ERRORS.labels("api").inc()
    log.warning("store unavailable: %s", exc)
    # where Redis is and what failed is for the log: this answer also goes to callers whose token could not
    # be checked (the store is what checks it), as /readyz's does
    if isinstance(exc, StoreRefused):
        detail = "the Redis store refused the command (a key holds the wrong type); the API's log names it"
    else:
        detail = "the Redis store is unreachable; retry (the API's log says why)"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


async def _auth_refusal(request: Request) -> JSONResponse | None:
    """The 401/403 (or 503) the route's scope check gives this request, or None when it passes or the route
    needs no token. FastAPI reads and parses a JSON body before it runs the route's dependencies: a body it
    cannot parse must not answer a caller without a token with anything but the 401 every other request
    gets."""
    deps = [d.dependency for d in getattr(request.scope.get("route"), "dependencies", ())]
    check = require_admin if require_admin in deps else require_read if require_read in deps else None
    if check is None:
        return None
    try:
        await check(request, await bearer(request))
    except HTTPException as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    except StoreUnavailable as exc:
        return _store_unavailable(exc)
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused = await _auth_refusal(request)
        if refused is not None:
            return refused
        # FastAPI's own handler echoes each offending value ("input"): a camera URL with its password, or a
        # NaN that JSON cannot carry (a 500 instead of this 422). Where and why is what a client needs.
        detail = [{"type": e.get("type", ""), "loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "error parsing the body", raised before the scope check
            refused = await _auth_refusal(request)
            if refused is not None:
                return refused
        return await http_exception_handler(request, exc)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable_handler(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        return _store_unavailable(exc)

    @app.exception_handler(StoredCameraUnreadable)
    async def _unreadable_camera(_request: Request, exc: StoredCameraUnreadable) -> JSONResponse:
        # the server's own data is broken: a 500 that says which camera and field, and how to get out of it
        # (no traceback: pydantic's text would quote the source with its password)
        log.warning("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)
