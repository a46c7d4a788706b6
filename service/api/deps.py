"""FastAPI dependencies: the store, the authenticator and the scope checks."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Authenticator, Scope, scope_allows
from service.models import ErrorOut
from service.store import AsyncStore

bearer = HTTPBearer(auto_error=False, description="An API key (`dpstream token create`) or the admin token.")


def get_store(request: Request) -> AsyncStore:
    return request.app.state.store


StoreDep = Annotated[AsyncStore, Depends(get_store)]


def _require(needed: Scope):
    async def check(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Scope:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        auth: Authenticator = request.app.state.authenticator
        granted = await auth.scope_of(creds.credentials)
        if granted is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked token",
                                headers={"WWW-Authenticate": "Bearer"})
        if not scope_allows(granted, needed):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this route needs the {needed} scope")
        return granted

    return check


require_read = _require("read")
require_admin = _require("admin")


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("Missing or unknown bearer token."),
    403: _err("The token's scope does not allow this route."),
    503: _err("The Redis store is unreachable."),
}
NOT_FOUND = {404: _err("No such camera (or release).")}
