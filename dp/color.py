"""Between a decoder's planar YUV 4:2:0 (I420) and RGB.

`i420_to_rgb` is the RGB picture an RGB spec releases from a decoder's I420 frame (`Pixelizer.release(frame,
i420=colorimetry)`: cameras and video files are ingested that way), with the exact integer rule of the
stream's colour matrix (the CPU release sums that picture without making it: kernels_cpu's
release_means_rgb_from_i420). `rgb_to_i420` goes the other way, for RGB sources given to a yuv420 spec and for
measuring a yuv420 release against the RGB picture it came from.
"""

from __future__ import annotations

import numpy as np

from dp.errors import ConfigError, FrameError

# (Kr, Kb) of the Y'CbCr matrices a decoder may report (GStreamer's GstVideoColorMatrix names)
YUV_MATRICES: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
}


def yuv_to_rgb_coefficients(colorimetry: str) -> np.ndarray:
    """The integer Y'CbCr -> RGB rule for `colorimetry` ("bt709", "bt601", "bt2020", "smpte240m", "fcc";
    a "-full" suffix for full range, else video range 16..235): int32 (y_offset, cy, cr_r, cb_g, cr_g, cb_b)
    in 1/256 units, for R = (cy (Y - y_offset) + cr_r V' + 128) >> 8, G = (cy (Y - y_offset) - cb_g U'
    - cr_g V' + 128) >> 8, B = (cy (Y - y_offset) + cb_b U' + 128) >> 8, with U' = U - 128, V' = V - 128,
    clipped to 0..255. Video-range BT.601 gives 298, 409, 100, 208, 516: the rule `Release.reconstruct`
    uses for yuv420 releases."""
    name, _, rng = str(colorimetry).partition("-")
    if name not in YUV_MATRICES or rng not in ("", "full"):
        raise ConfigError(
            f"colorimetry {colorimetry!r} is unknown; use one of {', '.join(YUV_MATRICES)}, optionally with '-full'"
        )
    kr, kb = YUV_MATRICES[name]
    kg = 1.0 - kr - kb
    full = rng == "full"
    y_scale, c_scale = (1.0, 1.0) if full else (255.0 / 219.0, 255.0 / 224.0)
    coef = [
        0 if full else 16,
        y_scale,
        2 * (1 - kr) * c_scale,
        2 * (1 - kb) * kb / kg * c_scale,
        2 * (1 - kr) * kr / kg * c_scale,
        2 * (1 - kb) * c_scale,
    ]
    return np.array([coef[0]] + [round(256 * v) for v in coef[1:]], dtype=np.int32)


def i420_to_rgb(frame: np.ndarray, colorimetry: str) -> np.ndarray:
    """The RGB picture (H x W x 3 uint8) of an I420 frame ((3H/2) x W, H and W even), each pixel with the
    chroma of its 2x2 block and `colorimetry`'s integer rule (yuv_to_rgb_coefficients). This is the picture
    `Pixelizer.release(frame, i420=colorimetry)` releases."""
    from dp.kernels_cpu import i420_to_rgb as kernel

    arr = checked_i420(frame)
    h, w = arr.shape[0] * 2 // 3, arr.shape[1]
    out = np.empty((h, w, 3), dtype=np.uint8)
    kernel(arr, h, w, yuv_to_rgb_coefficients(colorimetry), out)
    return out


def checked_i420(frame) -> np.ndarray:
    """`frame` as a C-contiguous (3H/2) x W uint8 I420 array, H and W even; FrameError otherwise."""
    arr = np.asarray(frame)
    rows = arr.shape[0] if arr.ndim == 2 else 0
    if arr.dtype != np.uint8 or arr.ndim != 2 or rows < 3 or rows % 3 or (rows * 2 // 3) % 2 or arr.shape[1] % 2 \
            or arr.shape[1] < 2:
        raise FrameError(
            f"frame is {arr.dtype} {arr.shape}; an I420 frame is uint8 of shape (3H/2, W) with H and W even "
            "(Y rows, then U and V)"
        )
    return np.ascontiguousarray(arr)


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
