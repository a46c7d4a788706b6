"""`POST /api/v1/audits` starts an empirical audit of the mechanism; `GET /api/v1/audits/{id}` reads it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status

from service.api.deps import AUTH_ERRORS, StoreDep, _err, require_admin, require_read
from service.audits import attacks_available
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
                            "audits unavailable: the attacks package is not installed in this environment "
                            "(install dpstream[audit])")
    runner = request.app.state.audits
    if runner.busy:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "audits busy; retry when one finishes",
                            headers={"Retry-After": "30"})
    return Audit.model_validate(await runner.start(body))


@router.get("/{audit_id}", response_model=Audit, dependencies=[Depends(require_read)],
            responses={**AUTH_ERRORS, 404: _err("No such audit (or it expired).")})
async def get_audit(audit_id: Annotated[str, Path(pattern=r"^aud-[0-9a-f]{12}$")], store: StoreDep) -> Audit:
    """An audit's state and, when done, its JSON report."""
    doc = await store.get_audit(audit_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no audit {audit_id}")
    return Audit.model_validate(doc)
