"""`POST /api/v1/audits` starts an empirical audit of the mechanism; `GET /api/v1/audits/{id}` reads it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status

from service.api.deps import AUTH_ERRORS, _err, require_admin, require_read
from service.audits import AuditsBusy, attacks_available, public_view
from service.models import Audit, AuditRequest

router = APIRouter(prefix="/api/v1/audits", tags=["audits"])


@router.post("", status_code=202, response_model=Audit, dependencies=[Depends(require_admin)],
             responses={**AUTH_ERRORS, 422: {"description": "Invalid audit request."},
                        503: _err("Audits cannot run here (attacks not installed, or too many running), "
                                  "or the store is unreachable.")})
async def start_audit(body: AuditRequest, request: Request) -> Audit:
    """Start an empirical DP audit of the mechanism (`python -m attacks mechanism`); poll its id."""
    if not attacks_available():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "audits unavailable: this install has no attacks package (the container image "
                            "leaves it out); run audits on a machine set up with scripts/setup, with "
                            "`dpstream audit mechanism ...` or this API")
    try:
        doc = await request.app.state.audits.start(body)
    except AuditsBusy as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "30"}) from None
    return Audit.model_validate(public_view(doc))


@router.get("/{audit_id}", response_model=Audit, dependencies=[Depends(require_read)],
            responses={**AUTH_ERRORS, 404: _err("No such audit (or it expired).")})
async def get_audit(audit_id: Annotated[str, Path(pattern=r"^aud-[0-9a-f]{12}$")], request: Request) -> Audit:
    """An audit's state and, when done, its JSON report and verdict. An audit whose API process stopped
    before it finished reads as failed."""
    doc = await request.app.state.audits.read(audit_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no audit {audit_id}")
    return Audit.model_validate(public_view(doc))
