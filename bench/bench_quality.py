"""Quality of adaptive layouts against every fixed cell size at the same total budget (PSNR, dB).

For each (eps, m_pixels): fixed 4/8/16/32 px cells with eps_pix = eps; `previous` (free) with eps_pix = eps;
`private` with eps_layout = 0.1 eps and eps_pix = 0.9 eps. Every number is the mean over `--frames` releases
(previous mode after two warm-up releases). Images: Grace Hopper's portrait (shipped with matplotlib) and a
camera-like synthetic 1080p scene. Writes a table and, with --plot, a PNG.

`--color yuv420` releases the images' I420 (`dp.rgb_to_i420`, what a decoder delivers) and measures the
reconstructed RGB picture against the RGB image, so the two colour modes' tables compare directly.

    python bench/bench_quality.py [--frames 4] [--color rgb|yuv420] [--plot docs/img/adaptive_quality.png]
        [--json OUT] [--settings 1:16,0.25:64]   # eps:m pairs instead of the default sweep
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dp import Pixelizer, PixelizeSpec, rgb_to_i420  # noqa: E402

SETTINGS = [(16.0, 1), (4.0, 1), (1.0, 1), (4.0, 4), (1.0, 4), (4.0, 16), (1.0, 16), (0.25, 16)]


def images() -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from PIL import Image

    from bench.bench_dp import scene

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = np.asarray(im.convert("RGB"))
    return {"portrait 512x600": hopper, "scene 1920x1080": scene(1080, 1920, np.random.default_rng())}


def psnr(spec: PixelizeSpec, img: np.ndarray, frames: int) -> float:
    px = Pixelizer(spec, backend="cpu")
    frame = rgb_to_i420(img) if spec.color == "yuv420" else img
    px.release(frame)
    px.release(frame)
    mse = np.mean([np.mean((px.release(frame).reconstruct().astype(np.float64) - img) ** 2) for _ in range(frames)])
    return float(10 * np.log10(255.0**2 / mse))


def parse_settings(text: str) -> list[tuple[float, int]]:
    """'1:16,0.25:64' -> [(1.0, 16), (0.25, 64)]."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        out = [(float(eps), int(m)) for eps, m in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give eps:m_pixels pairs such as 1:16,0.25:64") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one eps:m_pixels pair")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--color", choices=("rgb", "yuv420"), default="rgb")
    ap.add_argument("--settings", type=parse_settings, default=SETTINGS,
                    help="comma-separated eps:m_pixels pairs, e.g. 1:16,0.25:64 (default: the built-in sweep)")
    args = ap.parse_args()
    color = args.color
    results = []
    for name, img in images().items():
        print(f"\n{name}: PSNR dB (higher is better)")
        print(f"  {'eps':>5s} {'m':>3s} " + " ".join(f"{'fixed ' + str(b):>9s}" for b in (4, 8, 16, 32))
              + f" {'previous':>9s} {'private':>9s} {'prev - best fixed':>18s}")
        for eps, m in args.settings:
            fixed = {b: psnr(PixelizeSpec(eps_pix=eps, m_pixels=m, cell_size=b, color=color), img, args.frames)
                     for b in (4, 8, 16, 32)}
            prev = psnr(PixelizeSpec(eps_pix=eps, m_pixels=m, layout="previous", color=color), img, args.frames)
            priv = psnr(PixelizeSpec(eps_pix=0.9 * eps, eps_layout=0.1 * eps, m_pixels=m, layout="private",
                                     color=color), img, args.frames)
            best = max(fixed.values())
            print(f"  {eps:5g} {m:3d} " + " ".join(f"{v:9.2f}" for v in fixed.values())
                  + f" {prev:9.2f} {priv:9.2f} {prev - best:+18.2f}")
            results.append({"image": name, "color": color, "eps": eps, "m_pixels": m, "fixed": fixed,
                            "previous": prev, "private": priv})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(dict.fromkeys(r["image"] for r in results))
        fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 4.5), sharey=True)
        for ax, name in zip(np.atleast_1d(axes), names, strict=True):
            rows = [r for r in results if r["image"] == name]
            x = np.arange(len(rows))
            for b, marker in zip((4, 8, 16, 32), "v^<>", strict=True):
                ax.plot(x, [r["fixed"][b] for r in rows], marker=marker, ls=":", color="grey", alpha=0.5 + b / 64,
                        label=f"fixed {b} px")
            ax.plot(x, [r["previous"] for r in rows], "o-", color="C0", lw=2, label="previous (adaptive, free)")
            ax.plot(x, [r["private"] for r in rows], "s-", color="C3", label="private (10% of eps on layout)")
            ax.set_xticks(x, [f"eps={r['eps']:g}\nm={r['m_pixels']}" for r in rows], fontsize=8)
            ax.set_title(name)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("PSNR (dB), higher is better")
        np.atleast_1d(axes)[0].legend(fontsize=8)
        fig.suptitle("Adaptive layouts against every fixed cell size, same total budget per frame"
                     + (" (I420 releases, seen as RGB)" if color == "yuv420" else ""))
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
