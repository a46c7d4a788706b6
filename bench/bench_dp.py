"""CPU benchmark of one release, against the classical DP-Pix loop and the non-private alternatives.

On 720p, 1080p and 4K RGB frames (a camera-like synthetic scene; noise generation included), times:

* dpstream `Pixelizer.release` in fixed b=16, previous (adaptive, free) and private (adaptive, paid) modes,
  with and without `Release.reconstruct()` (the full-resolution privatized image), on the same scene as
  an I420 frame with `color="yuv420"`, and as an RGB release of that I420 frame (`i420=`, the path of RGB
  cameras and of the video command);
* the classical DP-Pix of Fan 2018 (`dp.baseline.dp_pix`: a sequential loop over cells), the same
  mechanism vectorised in numpy (float Laplace noise, *not* private-grade: a speed reference only), and
  OpenCV's non-private pixelization (INTER_AREA down, INTER_NEAREST up), also after its I420 to RGB
  conversion;
* a frame copy, the floor.

Prints ratios in one run. `python bench/bench_dp.py [--repeat N] [--sizes 720p,1080p,4K] [--json OUT]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dp import Pixelizer, PixelizeSpec  # noqa: E402
from dp.baseline import dp_pix  # noqa: E402

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "4K": (2160, 3840)}


def scene(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth lighting, flat regions, edges, a textured patch and sensor noise: camera-like statistics."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 90 + 60 * np.sin(xx / 300.0)[..., None] * np.cos(yy / 200.0)[..., None] * np.array([1, 0.8, 0.6])
    for _ in range(40):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(20, height // 4), rng.integers(20, width // 4)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    q = (slice(0, height // 3), slice(0, width // 3))
    img[q] += 40 * ((yy[q][..., None] // 3 + xx[q][..., None] // 3) % 2)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def numpy_dp_pix(frame: np.ndarray, b: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Vectorised fixed-grid DP-Pix with float Laplace noise (the usual numpy implementation)."""
    h, w, c = frame.shape
    hp, wp = -(-h // b) * b, -(-w // b) * b
    pad = np.zeros((hp, wp, c), np.float64)
    pad[:h, :w] = frame
    counts = np.zeros((hp, wp), np.float64)
    counts[:h, :w] = 1
    sums = pad.reshape(hp // b, b, wp // b, b, c).sum(axis=(1, 3))
    n = counts.reshape(hp // b, b, wp // b, b).sum(axis=(1, 3))[..., None]
    means = np.clip(np.rint((sums + rng.laplace(0, scale, sums.shape)) / n), 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(means, b, axis=0), b, axis=1)[:h, :w]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--sizes", default="720p,1080p,4K")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import cv2
    import numba

    rng = np.random.default_rng()  # scene content only; every release draws its own OS-random key
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "opencv": cv2.__version__, "date": time.strftime("%Y-%m-%d")}
    print(info)
    rows = []
    for name in args.sizes.split(","):
        h, w = SIZES[name]
        frame = scene(h, w, rng)
        fixed = PixelizeSpec(eps_pix=1.0, m_pixels=16, cell_size=16)
        specs = {
            "fixed b=16": fixed,
            "previous": PixelizeSpec(eps_pix=1.0, m_pixels=16, layout="previous"),
            "private": PixelizeSpec(eps_pix=0.9, m_pixels=16, layout="private", eps_layout=0.1),
        }
        t = {}
        for label, spec in specs.items():
            px = Pixelizer(spec, backend="cpu")
            px.release(frame)
            t[label] = best_ms(lambda px=px: px.release(frame), args.repeat)
            t[label + " +image"] = best_ms(lambda px=px: px.release(frame).reconstruct(), args.repeat)
        # the decoder's I420 released as it is (color="yuv420"): the same scene, converted once outside the timing
        i420 = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
        for label, spec in specs.items():
            px = Pixelizer(spec.replace(color="yuv420"), backend="cpu")
            px.release(i420)
            t[label + " (yuv420 frame)"] = best_ms(lambda px=px: px.release(i420), args.repeat)
        # RGB releases of that I420 frame (i420=, what RGB cameras and the video command run): the RGB picture
        # is made (private layout) or summed as it is converted (the others) inside the timing
        for label, spec in specs.items():
            px = Pixelizer(spec, backend="cpu")
            px.release(i420, i420="bt601")
            t[label + " (I420 frame, RGB)"] = best_ms(lambda px=px: px.release(i420, i420="bt601"), args.repeat)
        t["classical DP-Pix loop"] = best_ms(lambda: dp_pix(frame, fixed), max(1, args.repeat // 5))
        scale = float(fixed.noise_scale)
        t["numpy DP-Pix (float noise)"] = best_ms(lambda: numpy_dp_pix(frame, 16, scale, rng), args.repeat)
        small = (w // 16, h // 16)
        t["OpenCV pixelize (non-private)"] = best_ms(
            lambda: cv2.resize(cv2.resize(frame, small, interpolation=cv2.INTER_AREA), (w, h),
                               interpolation=cv2.INTER_NEAREST), args.repeat)
        t["OpenCV I420 to RGB + pixelize"] = best_ms(
            lambda: cv2.resize(cv2.resize(cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420), small,
                                          interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_NEAREST),
            args.repeat)
        t["frame copy"] = best_ms(lambda: frame.copy(), args.repeat)
        base, cv = t["classical DP-Pix loop"], t["OpenCV pixelize (non-private)"]
        print(f"\n{name} ({w}x{h} RGB), median of {args.repeat}")
        print(f"  {'':34s} {'ms':>9s} {'x classical':>12s} {'x OpenCV':>9s}")
        for label, ms in t.items():
            print(f"  {label:34s} {ms:9.2f} {base / ms:12.1f} {cv / ms:9.2f}")
            rows.append({"size": name, "what": label, "ms": ms, "x_classical": base / ms, "x_opencv": cv / ms})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
