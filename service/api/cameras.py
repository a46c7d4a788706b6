"""Cameras: CRUD with live configuration, status and budget."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from pydantic import ValidationError

from dp.errors import ConfigError
from service.api.deps import AUTH_ERRORS, NOT_FOUND, StoreDep, _err, require_admin, require_read
from service.budget import budget_of
from service.models import (
    PATCH_NULLABLE,
    SLUG_PATTERN,
    Budget,
    Camera,
    CameraCreate,
    CameraPatch,
    CameraStatus,
    camera_config_error,
    new_camera_id,
    new_incarnation,
)
from service.redaction import REDACTED, carries_redaction_mask, redact_text, redact_url
from service.store import StoredCameraUnreadable

log = logging.getLogger("dpstream.api")
router = APIRouter(prefix="/api/v1/cameras", tags=["cameras"])
CameraId = Annotated[str, Path(pattern=SLUG_PATTERN, description="Camera slug.")]
INVALID = {422: {"description": "Invalid configuration: `detail[].loc` names the field, `msg` the reason."}}


def check_source(source: str) -> None:
    """Let streams judge the URI (scheme, host, port, test pattern) before a worker tries it.

    Files are not checked here: they live on the worker's machine, which reports FAILED if one is missing.
    """
    if source.lower().startswith("file:"):
        return
    from streams.sources import parse_source

    parse_source(source)


def validated(camera: Camera) -> Camera:
    """Run dp's and streams' own validation; a refusal is a 422 naming the field."""
    try:
        camera.to_spec()
    except ConfigError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [camera_config_error(err)]) from None
    interval_s = 1 / camera.release_fps
    if camera.window_s < interval_s:  # releases come at least this far apart: each window would hold one
        msg = (f"window_s={camera.window_s:g} is shorter than one release interval (1 / release_fps = "
               f"{interval_s:g} s): every window would hold a single release, so eps_window would bound "
               f"nothing over time; use window_s >= {interval_s:g} s")
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            [{"loc": ["body", "window_s"], "msg": msg, "type": "value_error"}])
    try:
        check_source(camera.source)
    except ConfigError as err:
        detail = [{"loc": ["body", "source"], "msg": redact_text(str(err)), "type": "config_error"}]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from None
    return camera


def refuse_redacted_source(source: str, *, patch: bool) -> None:
    """A 422 for a source that still carries the mask of a redacted one (``rtsp://***@cam/live``,
    ``?password=***``): its credentials are lost, and storing it would make ``***`` the camera's password."""
    if not carries_redaction_mask(source):
        return
    keep = ("leave source out of the PATCH, or send it exactly as GET returned it, to keep the stored one"
            if patch else "a source returned by GET has its credentials masked")
    msg = (f"source {redact_url(source)!r} holds the redaction mask {REDACTED!r} as a user name, password or "
           f"parameter value: it is a copy of a redacted URL. Send the full URL with its credentials; {keep}")
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                        [{"loc": ["body", "source"], "msg": msg, "type": "value_error"}])


async def existing(store: StoreDep, camera_id: str) -> Camera:
    cam = await store.get_camera(camera_id)
    if cam is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"camera {camera_id!r} does not exist")
    return cam


@router.post("", status_code=201, response_model=Camera, dependencies=[Depends(require_admin)],
             responses={**AUTH_ERRORS, **INVALID, 409: _err("A camera with this id exists.")})
async def create_camera(body: CameraCreate, store: StoreDep) -> Camera:
    """Add a camera. A worker picks it up within one heartbeat."""
    refuse_redacted_source(body.source, patch=False)
    cam = validated(Camera.model_validate({**body.model_dump(), "id": body.id or new_camera_id(), "version": 1,
                                           "incarnation": new_incarnation()}))
    if not await store.create_camera(cam):
        raise HTTPException(status.HTTP_409_CONFLICT, f"camera {cam.id!r} exists; PATCH it or pick another id")
    log.info("camera created camera_id=%s layout=%s eps_pix=%s", cam.id, cam.layout, cam.eps_pix)
    return cam.public()


@router.get("", response_model=list[Camera], dependencies=[Depends(require_read)], responses=AUTH_ERRORS)
async def list_cameras(store: StoreDep) -> list[Camera]:
    return [c.public() for c in await store.list_cameras()]


@router.get("/{camera_id}", response_model=Camera, dependencies=[Depends(require_read)],
            responses={**AUTH_ERRORS, **NOT_FOUND})
async def get_camera(camera_id: CameraId, store: StoreDep) -> Camera:
    return (await existing(store, camera_id)).public()


@router.patch("/{camera_id}", response_model=Camera, dependencies=[Depends(require_admin)],
              responses={**AUTH_ERRORS, **NOT_FOUND, **INVALID,
                         409: _err("The camera changed since the `version` given, or concurrently: GET it "
                                   "again and reapply the change.")})
async def patch_camera(camera_id: CameraId, body: CameraPatch, store: StoreDep) -> Camera:  # type: ignore[valid-type]
    """Change settings live: the owning worker applies them at its next release. With `version`, only if
    nobody changed the camera since that version. A PATCH that changes nothing writes nothing."""
    current = await existing(store, camera_id)
    changes = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    # null is a value only where the camera can hold one; elsewhere it means "unchanged" (CameraPatch says so)
    changes = {k: v for k, v in changes.items() if v is not None or k in PATCH_NULLABLE}
    if "id" in changes and changes.pop("id") != camera_id:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
            "loc": ["body", "id"], "type": "value_error",
            "msg": f"the id of camera {camera_id!r} never changes; leave id out (create a camera to get another)"}])
    if "version" in changes and (based_on := changes.pop("version")) != current.version:
        raise HTTPException(status.HTTP_409_CONFLICT, f"camera {camera_id!r} is at version {current.version}, not "
                            f"{based_on}: someone changed it since; GET it again and reapply the change")
    if "incarnation" in changes and changes.pop("incarnation") != current.incarnation:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
            "loc": ["body", "incarnation"], "type": "value_error",
            "msg": "incarnation is set when a camera is created and never changes; leave it out"}])
    if changes.get("source") == current.public().source:
        del changes["source"]  # a GET-then-PATCH round trip sends the redacted source back: keep the real one
    elif "source" in changes:  # an edited copy of the redacted source would store '***' as its credentials
        refuse_redacted_source(changes["source"], patch=True)
    merged = {**current.model_dump(), **changes, "version": current.version + 1}
    try:
        cam = Camera.model_validate(merged)
    except ValidationError as err:
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from None
    validated(cam)
    if cam.model_dump(exclude={"version"}) == current.model_dump(exclude={"version"}):
        return current.public()  # nothing changes: no write, no new version, no reload in the worker
    if not await store.replace_camera(cam, current.version):
        raise HTTPException(status.HTTP_409_CONFLICT, f"camera {camera_id!r} changed meanwhile; retry")
    log.info("camera updated camera_id=%s version=%s fields=%s", cam.id, cam.version, sorted(changes))
    return cam.public()


@router.delete("/{camera_id}", status_code=204, response_class=Response,
               dependencies=[Depends(require_admin)], responses={**AUTH_ERRORS, **NOT_FOUND})
async def delete_camera(camera_id: CameraId, store: StoreDep) -> Response:
    """Remove a camera and its releases. Its ledger outlives it by at least one window (two windows or 60 s,
    the longer, once the worker that ran it has stopped it)."""
    try:
        window_s = (await existing(store, camera_id)).window_s
    except StoredCameraUnreadable:  # the way out of a broken config: its ledger tells the window
        window_s = float((await store.load_ledger(camera_id) or {}).get("window_s") or 0.0)
    await store.delete_camera(camera_id, ledger_ttl_s=window_s)
    log.info("camera deleted camera_id=%s", camera_id)
    return Response(status_code=204)


@router.get("/{camera_id}/status", response_model=CameraStatus, dependencies=[Depends(require_read)],
            responses={**AUTH_ERRORS, **NOT_FOUND})
async def camera_status(camera_id: CameraId, store: StoreDep) -> CameraStatus:
    """Health state, frame rates, drops, the last (redacted) error and the owning worker."""
    cam = await existing(store, camera_id)
    st = await store.status(camera_id)
    if not cam.enabled and st.state == "UNASSIGNED":
        st = st.model_copy(update={"state": "DISABLED"})
    return st


@router.get("/{camera_id}/budget", response_model=Budget, dependencies=[Depends(require_read)],
            responses={**AUTH_ERRORS, **NOT_FOUND})
async def camera_budget(camera_id: CameraId, store: StoreDep) -> Budget:
    """Epsilon spent in the current window, what is left, and the guarantee (eps_window, m_pixels, window_s)."""
    cam = await existing(store, camera_id)
    return budget_of(cam, await store.load_ledger(camera_id), time.time())
