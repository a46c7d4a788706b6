"""Face sets: one folder per identity, photos inside, a face box per photo.

Two ways in:
* `build_packaged_faceset(cache_dir)`: the faces found in the photos that ship inside public packages
  (attacks/sources.py). Faces are grouped into identities by their dlib descriptors (the same person in
  several photos becomes one identity), cropped with a wide margin and cached as PNGs under
  `cache_dir/faces-v1/<identity>/` with a `faces.json` manifest of the boxes.
* `load_faceset(directory)`: an operator's own photos, one folder per identity; a photo's face box is the
  largest face dlib finds, or the whole image when it finds none (tight crops).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from attacks.dlib_model import Box, DlibFaces
from attacks.errors import AuditError
from attacks.sources import iter_source_photos

log = logging.getLogger(__name__)

FACESET_VERSION = "faces-v1"
MANIFEST = "faces.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm"}
# Two faces whose dlib descriptors are closer than this are one person (dlib's own rule is 0.6).
SAME_PERSON_DISTANCE = 0.5
# Cached crops: the face box is scaled to this side and the crop keeps CROP_CONTEXT box sides around it.
CACHED_BOX_PX = 160
CROP_CONTEXT = 3.0
MIN_FACE_PX = 40
# HOG detector score below which a packaged "face" is dropped: a badge in face-api's sample1 scores 0.13,
# the weakest real face 0.26.
MIN_DETECTION_SCORE = 0.2


@dataclass(frozen=True)
class FacePhoto:
    identity: str
    name: str
    pixels: np.ndarray  # HxWx3 uint8 RGB
    box: Box  # (left, top, right, bottom)


@dataclass(frozen=True)
class FaceSet:
    photos: tuple[FacePhoto, ...]

    @property
    def identities(self) -> list[str]:
        return sorted({p.identity for p in self.photos})

    def by_identity(self) -> dict[str, list[FacePhoto]]:
        out: dict[str, list[FacePhoto]] = {i: [] for i in self.identities}
        for p in self.photos:
            out[p.identity].append(p)
        return out

    def subset(self, n_identities: int) -> FaceSet:
        keep = set(self.identities[:n_identities])
        return FaceSet(tuple(p for p in self.photos if p.identity in keep))


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _crop_around(pixels: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
    """A square crop of CROP_CONTEXT box sides around the face (black outside the photo), scaled so the box
    side is CACHED_BOX_PX."""
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half = side * CROP_CONTEXT / 2
    region = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    out_px = round(CACHED_BOX_PX * CROP_CONTEXT)
    crop = Image.fromarray(pixels).crop(region).resize((out_px, out_px), Image.Resampling.LANCZOS)
    lo = (out_px - CACHED_BOX_PX) / 2
    return np.asarray(crop), (lo, lo, lo + CACHED_BOX_PX, lo + CACHED_BOX_PX)


def faceset_dir(cache_dir: Path) -> Path:
    return cache_dir / FACESET_VERSION


def build_packaged_faceset(cache_dir: Path, faces: DlibFaces | None = None) -> Path:
    """Find, group and cache the packaged faces; returns the face-set directory (reused when present)."""
    out_dir = faceset_dir(cache_dir)
    if (out_dir / MANIFEST).exists():
        return out_dir
    faces = faces or DlibFaces()
    found: list[tuple[str, np.ndarray, Box, np.ndarray]] = []
    for photo in iter_source_photos(cache_dir):
        # small photos (an aligned 112 px face) need the detector to look at 2x
        upsample = 2 if max(photo.pixels.shape[:2]) < 400 else 1
        boxes = [b for b in faces.detect(photo.pixels, upsample=upsample, min_score=MIN_DETECTION_SCORE) if b[2] - b[0] >= MIN_FACE_PX]
        for j, box in enumerate(boxes):
            descriptor = faces.describe(photo.pixels, box)
            crop, crop_box = _crop_around(photo.pixels, box)
            found.append((f"{photo.origin}#{j}", crop, crop_box, descriptor))
    if not found:
        raise AuditError("no face found in the packaged photos")
    # Greedy grouping: a face joins the first identity holding a face closer than SAME_PERSON_DISTANCE.
    groups: list[list[int]] = []
    for i, (_, _, _, d) in enumerate(found):
        for g in groups:
            if min(np.linalg.norm(found[k][3] - d) for k in g) < SAME_PERSON_DISTANCE:
                g.append(i)
                break
        else:
            groups.append([i])
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, list[dict]] = {}
    for n, g in enumerate(groups):
        identity = f"id{n:02d}"
        (tmp_dir / identity).mkdir(exist_ok=True)
        manifest[identity] = []
        for k in g:
            origin, crop, box, _ = found[k]
            fname = origin.replace(":", "_").replace("#", "_").replace(".", "_") + ".png"
            Image.fromarray(crop).save(tmp_dir / identity / fname)
            manifest[identity].append({"file": fname, "origin": origin, "box": list(box)})
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    tmp_dir.rename(out_dir)
    log.info("cached %d faces of %d identities in %s", len(found), len(groups), out_dir)
    return out_dir


def load_faceset(directory: Path, faces: DlibFaces | None = None, *, min_photos: int = 1) -> FaceSet:
    """Read one folder per identity. Boxes come from `faces.json` when present, else from the detector
    (largest face), else the whole image."""
    directory = Path(directory)
    if not directory.exists():
        raise AuditError(f"face directory {directory} does not exist")
    if not directory.is_dir():
        raise AuditError(f"face directory {directory} is not a directory: give a folder with one folder of "
                         "photos per identity")
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    photos: list[FacePhoto] = []
    for ident_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        readable = []
        for f in sorted(p for p in ident_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                readable.append((f, _read_rgb(f)))
            except (OSError, Image.DecompressionBombError) as exc:
                # an operator's folder may hold a broken or mislabelled file: one bad photo costs that photo
                log.warning("%s is not a readable image (%s): skipped", f, exc)
        if len(readable) < min_photos:
            log.warning("identity %s has %d readable photos (< %d): skipped", ident_dir.name, len(readable),
                        min_photos)
            continue
        boxes = {e["file"]: tuple(e["box"]) for e in manifest.get(ident_dir.name, [])}
        for f, pixels in readable:
            box = boxes.get(f.name)
            if box is None:
                faces = faces or DlibFaces()
                upsample = 2 if max(pixels.shape[:2]) < 400 else 1
                found = faces.detect(pixels, upsample=upsample)
                h, w = pixels.shape[:2]
                box = found[0] if found else (0.0, 0.0, float(w), float(h))
            photos.append(FacePhoto(identity=ident_dir.name, name=f.name, pixels=pixels, box=box))
    if len({p.identity for p in photos}) < 2:
        raise AuditError(
            f"{directory} needs at least two identity folders with {min_photos}+ photos each"
        )
    return FaceSet(tuple(photos))
