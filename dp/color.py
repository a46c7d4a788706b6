"""RGB frames as the planar YUV 4:2:0 (I420) that `PixelizeSpec(color="yuv420")` releases.

Cameras deliver I420 already (streams/ hands it over as it is); this is for RGB sources, and for measuring
a yuv420 release against the RGB picture it came from.
"""

from __future__ import annotations

import numpy as np

from dp.errors import FrameError


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 RGB frame (H, W even) as one (3H/2) x W I420 array: Y rows, then U and V (H/2 x W/2
    each), BT.601 limited range with the integer rule `Release.reconstruct_i420` uses, chroma the rounded
    mean of each 2x2 block."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise FrameError(f"rgb_to_i420 needs an HxWx3 uint8 frame, got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    if h == 0 or w == 0 or h % 2 or w % 2:
        raise FrameError(f"rgb_to_i420 needs an even, non-empty frame size, got {h}x{w}")
    r, g, b = (arr[..., i].astype(np.int32) for i in range(3))
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128

    def quarter(p: np.ndarray) -> np.ndarray:
        return (p.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)) + 2) >> 2

    out = np.empty((h * 3 // 2, w), dtype=np.uint8)
    out[:h] = y
    chroma = out[h:].reshape(h, w // 2)
    chroma[: h // 2] = quarter(u)
    chroma[h // 2:] = quarter(v)
    return out
