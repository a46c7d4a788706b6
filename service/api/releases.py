"""Releases of a camera: the latest (bytes or JSON), a range, one by id, a JPEG and an MJPEG stream."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.cameras import CameraId, existing
from service.api.deps import AUTH_ERRORS, NOT_FOUND, StoreDep, require_read
from service.models import ENTRY_ID_PATTERN, ReleaseSummary

router = APIRouter(prefix="/api/v1/cameras", tags=["releases"], dependencies=[Depends(require_read)])
OCTET = "application/octet-stream"
EntryId = Annotated[str, Path(pattern=ENTRY_ID_PATTERN, description="Redis Stream entry id.")]
NO_RELEASE = {404: {"description": "No such camera, or no release yet."}}


def _octet(description: str) -> dict:
    return {200: {"content": {OCTET: {"schema": {"type": "string", "format": "binary"}}},
                  "description": description}}


@router.get("/{camera_id}/releases/latest", response_model=ReleaseSummary,
            responses={**_octet("Release bytes (`dp.Release.to_bytes()`), unless format=json."),
                       **AUTH_ERRORS, **NO_RELEASE})
async def latest_release(
    camera_id: CameraId, store: StoreDep, request: Request,
    format: Annotated[Literal["bytes", "json"], Query(description="bytes (default) or a JSON summary")] = "bytes",
):
    """The latest release: its bytes (`application/octet-stream`) or, with format=json, its summary."""
    if format == "bytes":
        data = await request.app.state.latest.get(camera_id, store.latest_bytes)
        if data is None:
            await existing(store, camera_id)
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"camera {camera_id!r} has no release yet")
        return Response(data, media_type=OCTET)
    hit = await store.latest(camera_id)
    if hit is None:
        await existing(store, camera_id)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"camera {camera_id!r} has no release yet")
    return hit[0]


@router.get("/{camera_id}/releases", response_model=list[ReleaseSummary],
            responses={**AUTH_ERRORS, **NOT_FOUND})
async def list_releases(
    camera_id: CameraId, store: StoreDep,
    since: Annotated[str | None, Query(pattern=ENTRY_ID_PATTERN, description="Only entries after this "
                                       "entry id.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many summaries.")] = 100,
) -> list[ReleaseSummary]:
    """Summaries of stored releases, oldest first; fetch bytes with /releases/{entry_id}."""
    await existing(store, camera_id)
    return await store.releases(camera_id, since, limit)


@router.get("/{camera_id}/releases/{entry_id}", response_class=Response,
            responses={**_octet("Release bytes."), **AUTH_ERRORS, **NO_RELEASE})
async def get_release(camera_id: CameraId, entry_id: EntryId, store: StoreDep) -> Response:
    """One stored release's bytes."""
    data = await store.release(camera_id, entry_id)
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no release {entry_id} for camera {camera_id!r}")
    return Response(data, media_type=OCTET)


@router.get("/{camera_id}/frame.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "The latest privatized frame."},
                       **AUTH_ERRORS, **NO_RELEASE})
async def latest_frame(camera_id: CameraId, store: StoreDep, request: Request) -> Response:
    """The latest release, reconstructed (cells filled with their noisy means) as JPEG."""
    hit = await store.latest(camera_id)
    if hit is None:
        await existing(store, camera_id)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"camera {camera_id!r} has no release yet")
    summary, data = hit
    jpeg = await run_in_threadpool(request.app.state.jpegs.get, camera_id, summary.entry_id, data)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


BOUNDARY = "dpstreamframe"
STREAM_REAUTH_S = 5.0  # how often an open stream checks that its key is still good (revoked, expired)


@router.get("/{camera_id}/stream.mjpeg", response_class=StreamingResponse,
            responses={200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}},
                             "description": "Releases as they arrive, as MJPEG."},
                       **AUTH_ERRORS, **NOT_FOUND})
async def mjpeg(
    camera_id: CameraId, store: StoreDep, request: Request,
    max_frames: Annotated[int | None, Query(ge=1, le=10_000_000, description="Stop after this many "
                                            "frames (default: until the client leaves).")] = None,
) -> StreamingResponse:
    """The camera's releases as an MJPEG stream, starting with the latest one."""
    await existing(store, camera_id)
    jpegs = request.app.state.jpegs
    auth = request.app.state.authenticator
    token = request.headers.get("authorization", "").partition(" ")[2].strip()  # require_read has checked it

    async def frames():
        sent = 0
        last_id = "$"
        checked_s = time.monotonic()
        hit = await store.latest(camera_id)
        pending: list[tuple[str, bytes]] = [(hit[0].entry_id, hit[1])] if hit else []
        if hit:
            last_id = hit[0].entry_id
        while max_frames is None or sent < max_frames:
            if time.monotonic() - checked_s >= STREAM_REAUTH_S:
                # a stream lasts as long as its viewer stays: its key must still be good, not only at connect
                try:
                    if await auth.scope_of(token) is None:
                        return
                except Exception:  # store down: end the stream, as below; the client reconnects
                    return
                checked_s = time.monotonic()
            if not pending:
                if await request.is_disconnected():
                    return
                try:
                    pending = await store.wait_releases(camera_id, last_id, block_ms=1000)
                except Exception:  # store down or camera deleted: end the stream, the client reconnects
                    return
                if not pending:
                    await asyncio.sleep(0)
                    continue
            entry_id, data = pending.pop(0)
            last_id = entry_id
            jpeg = await run_in_threadpool(jpegs.get, camera_id, entry_id, data)
            yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                   .encode() + jpeg + b"\r\n")
            sent += 1

    return StreamingResponse(frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")
