"""Render a face photo as it would appear in a camera frame, with realistic variation.

A rendering is a square image of `face_px * CONTEXT` pixels with the face box (side `face_px`) in the
middle: the face at the size it has in the frame, with the surroundings the mechanism also sees.
Augmentation varies what changes between two sightings of a person: where the box lands (crop jitter),
distance (scale), light (brightness and contrast), head roll (small rotation) and compression (JPEG
quality). It is data generation, not privacy noise, so it may use a seeded generator.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from attacks.dlib_model import Box
from attacks.faceset import FacePhoto

# The rendering is CONTEXT face-box sides wide.
CONTEXT = 2.0


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random variation; `NONE` renders the photo as it is."""

    jitter_frac: float = 0.08  # box centre moves by up to this fraction of the box side
    scale_frac: float = 0.10  # box side changes by up to this fraction
    rotation_deg: float = 8.0
    brightness_frac: float = 0.25
    contrast_frac: float = 0.20
    jpeg_quality: tuple[int, int] = (40, 95)


NONE = Augmentation(0.0, 0.0, 0.0, 0.0, 0.0, (100, 100))
DEFAULT = Augmentation()


@dataclass(frozen=True)
class Rendering:
    identity: str
    photo: str
    pixels: np.ndarray  # HxWx3 uint8
    box: Box


def render_box(face_px: int) -> Box:
    size = rendering_size(face_px)
    lo = (size - face_px) / 2
    return (lo, lo, lo + face_px, lo + face_px)


def rendering_size(face_px: int) -> int:
    return round(face_px * CONTEXT)


def grey_surround(pixels: np.ndarray, box: Box, margin: float = 0.15) -> np.ndarray:
    """Everything outside the face box (grown by `margin` of its side) set to mid-grey: the face without the
    background, clothes and shoulders of its photo, so an attacker cannot match the photo instead of the
    face."""
    left, top, right, bottom = box
    grow = margin * (right - left)
    out = np.full_like(pixels, 128)
    y0, y1 = max(0, round(top - grow)), round(bottom + grow)
    x0, x1 = max(0, round(left - grow)), round(right + grow)
    out[y0:y1, x0:x1] = pixels[y0:y1, x0:x1]
    return out


def render(photo: FacePhoto, face_px: int, rng: np.random.Generator, aug: Augmentation = DEFAULT,
           surround: str = "photo") -> Rendering:
    left, top, right, bottom = photo.box
    side = max(right - left, bottom - top)
    size = rendering_size(face_px)
    # First shrink the photo with a proper low-pass filter to about the target scale (an affine warp alone
    # would alias), then apply the small random warp.
    nominal = side / face_px
    src = Image.fromarray(photo.pixels)
    if nominal > 1.0:
        w, h = src.size
        src = src.resize((max(1, round(w / nominal)), max(1, round(h / nominal))), Image.Resampling.LANCZOS)
        scale0 = 1.0 / nominal
    else:
        scale0 = 1.0
    # source pixels per output pixel, and where the output centre falls in the (shrunk) source
    s = nominal * scale0 * (1.0 + rng.uniform(-aug.scale_frac, aug.scale_frac))
    cx = ((left + right) / 2 + rng.uniform(-aug.jitter_frac, aug.jitter_frac) * side) * scale0
    cy = ((top + bottom) / 2 + rng.uniform(-aug.jitter_frac, aug.jitter_frac) * side) * scale0
    theta = math.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg))
    a, b = s * math.cos(theta), -s * math.sin(theta)
    d, e = s * math.sin(theta), s * math.cos(theta)
    c = cx - a * size / 2 - b * size / 2
    f = cy - d * size / 2 - e * size / 2
    out = src.transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BICUBIC)
    if aug.brightness_frac:
        out = ImageEnhance.Brightness(out).enhance(1.0 + rng.uniform(-aug.brightness_frac, aug.brightness_frac))
    if aug.contrast_frac:
        out = ImageEnhance.Contrast(out).enhance(1.0 + rng.uniform(-aug.contrast_frac, aug.contrast_frac))
    lo_q, hi_q = aug.jpeg_quality
    if lo_q < 100:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(rng.integers(lo_q, hi_q + 1)))
        buf.seek(0)
        out = Image.open(buf).convert("RGB")
    pixels = np.asarray(out, dtype=np.uint8)
    if surround == "grey":
        pixels = grey_surround(pixels, render_box(face_px))
    return Rendering(photo.identity, photo.name, pixels, render_box(face_px))
