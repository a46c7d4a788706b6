"""GPU check (run where a CUDA GPU is present; imports only dp, numpy and numba-cuda).

1. CPU and CUDA releases are byte-identical for a fixed key on 1080p and 4K frames, every layout mode and
   both CUDA kernels (tiled and generic).
2. Frame-resident kernel time at 1080p and 4K, against the measured device-to-device copy bandwidth
   (both counted as bytes read plus bytes written).
3. Whole `Pixelizer.release` of a device-resident frame (kernel, small transfers, layout choice).
4. The candidate kernels of bench/cuda_candidates.py on the same frames, layouts and key: identical means
   first, then each one's device time against the kernel it would replace.

    python bench/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not hasattr(np, "row_stack"):  # numba-cuda <= 0.2x still names np.row_stack, gone in numpy 2.5
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402

from dp import Pixelizer, PixelizeSpec  # noqa: E402
from dp import kernels_cuda as kc  # noqa: E402
from dp.layout import Grid  # noqa: E402
from dp.noise import key_words, laplace_tables  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_candidates as cc  # noqa: E402


def scene(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A camera-like frame: smooth lighting, edges, textured patches and sensor noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 90 + 60 * np.sin(xx / 300.0)[..., None] * np.cos(yy / 200.0)[..., None] * np.array([1, 0.8, 0.6])
    for _ in range(40):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(2, max(3, height // 4)), rng.integers(2, max(3, width // 4))
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    img[: height // 3, : width // 3] += 40 * ((yy[: height // 3, : width // 3, None] // 3 + xx[: height // 3, : width // 3, None] // 3) % 2)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def specs(height: int = 1080, width: int = 1920) -> dict[str, PixelizeSpec]:
    return {
        "fixed-16": PixelizeSpec(eps_pix=1.0, m_pixels=16, cell_size=16),
        "fixed-7(generic)": PixelizeSpec(eps_pix=1.0, m_pixels=16, cell_size=7),
        "previous": PixelizeSpec(eps_pix=4.0, m_pixels=1, layout="previous"),
        "private": PixelizeSpec(eps_pix=3.6, m_pixels=1, layout="private", eps_layout=0.4),
        "map-16(generic)": PixelizeSpec(eps_pix=1.0, m_pixels=4, layout="map", block_size=16, cell_sizes=(4, 8, 16),
                                        layout_map=[[(4, 8, 16)[(i + j) % 3] for j in range(-(-width // 16))]
                                                    for i in range(-(-height // 16))]),
    }


def timed(fn, reps: int) -> float:
    """Median milliseconds of `fn` between CUDA events."""
    fn()
    cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = cuda.event(), cuda.event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def device_time_us(fn, reps: int) -> float | None:
    """Mean on-device duration of the kernels `fn` launches, from CUPTI through torch's profiler.

    Event timing around one numba launch also counts numba's host-side dispatch (tens of microseconds,
    longer than these kernels), so it is an upper bound only; the profiler sees the kernels themselves.
    """
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    fn()
    cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            cuda.synchronize()
    except (AssertionError, RuntimeError):  # no CUPTI here (CPU build of torch, simulator)
        return None
    total = 0.0
    for item in prof.key_averages():
        name = item.key.lower()
        if "memcpy" in name or "memset" in name:
            continue
        t = getattr(item, "device_time_total", None) or getattr(item, "cuda_time_total", 0.0)
        total += t
    return total / reps if total else None


def candidates(d: dict, d_frame, spec, tables, rel, reps: int) -> dict:
    """bench/cuda_candidates.py against the kernels in use, on the same frame, layout and key: the means
    must be identical to the CPU's release; then each kernel's device time, and the candidates' total."""
    height, width, channels = d_frame.shape
    d_guide = cuda.to_device(tables.guide)
    words = cc.as_words(d_frame)
    noise = cuda.device_array(d["noise"].shape[0], np.int64)
    out = cuda.device_array(d["out"].shape[0], np.uint8)

    def new_noise():
        cc.launch_noise_u32(d["key"], 1, tables, d["table"], d_guide, noise)

    def new_sums():
        cc.launch_words(words, height, width, channels, d["codes"], d["sizes"], spec.block_size, d["offsets"],
                        noise, out)

    def old_noise():
        kc.noise_kernel[-(-noise.shape[0] // kc.NOISE_THREADS), kc.NOISE_THREADS](
            d["key"], 1, tables.zero_threshold, d["table"], tables.n_digits, noise)

    def old_sums():
        g = (-(-width // kc.TILE), -(-height // kc.TILE))
        kc.release_kernel_tiled[g, (kc.TILE, kc.ROW_GROUPS)](
            d_frame, d["codes"], d["sizes"], spec.block_size, d["offsets"], noise, out)

    new_noise()
    new_sums()
    row = {"identical": bool(np.array_equal(out.copy_to_host(), rel.means))}
    for label, fn in (("noise_us", old_noise), ("noise_u32_us", new_noise), ("sums_tiled_us", old_sums),
                      ("sums_words_us", new_sums), ("candidates_total_us", lambda: (new_noise(), new_sums()))):
        row[label] = device_time_us(fn, reps) or timed(fn, reps) * 1e3
    return row


def copy_bandwidth_gbs(n: int) -> float:
    src = cuda.to_device(np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8))
    dst = cuda.device_array(n, dtype=np.uint8)
    ms = timed(lambda: dst.copy_to_device(src), 20)
    return 2 * n / (ms * 1e-3) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--small", action="store_true", help="tiny frames and few repeats: a dry run (simulator)")
    args = ap.parse_args()
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "simulator")
    info = {"device": name.decode() if isinstance(name, bytes) else str(name),
            "python": platform.python_version(), "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d")}
    import numba

    info["numba"] = numba.__version__
    print(info, flush=True)
    rng = np.random.default_rng(secrets.randbits(64))
    if args.small:
        frames = {"1080p": scene(40, 64, rng), "4K": scene(72, 100, rng)}
    else:
        frames = {"1080p": scene(1080, 1920, rng), "4K": scene(2160, 3840, rng)}
    reps = 2 if args.small else 100
    results: dict = {"info": info, "parity": {}, "kernel": [], "release": []}

    # 1. parity on real-size frames
    key = secrets.token_bytes(32)
    for res, frame in frames.items():
        for name, spec in specs(*frame.shape[:2]).items():
            cpu, gpu = Pixelizer(spec, backend="cpu"), Pixelizer(spec, backend="cuda")
            ok = True
            for i in range(2):
                f = frame if i == 0 else np.ascontiguousarray(np.roll(frame, 7 * i, axis=1))
                a = cpu.release(f, key=key, frame_index=i, timestamp_s=0.0)
                b = gpu.release(f, key=key, frame_index=i, timestamp_s=0.0)
                ok &= a.to_bytes() == b.to_bytes()
            results["parity"][f"{res} {name}"] = bool(ok)
            print(f"parity {res:6s} {name:18s} {'identical' if ok else 'DIFFERENT'}", flush=True)
        # the decoder's I420 (color="yuv420"): a made-up I420 frame of the same size
        h, w = frame.shape[0] - frame.shape[0] % 2, frame.shape[1] - frame.shape[1] % 2
        i420 = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
        for name in ("fixed-16", "previous", "private"):
            spec = specs(h, w)[name].replace(color="yuv420")
            cpu, gpu = Pixelizer(spec, backend="cpu"), Pixelizer(spec, backend="cuda")
            ok = all(cpu.release(i420, key=key, frame_index=i, timestamp_s=0.0).to_bytes()
                     == gpu.release(i420, key=key, frame_index=i, timestamp_s=0.0).to_bytes() for i in range(2))
            results["parity"][f"{res} yuv420 {name}"] = bool(ok)
            print(f"parity {res:6s} yuv420 {name:11s} {'identical' if ok else 'DIFFERENT'}", flush=True)
        # RGB releases of the same I420 frame (what RGB cameras ingest: i420=)
        for name in ("fixed-16", "previous"):
            spec = specs(h, w)[name]
            cpu, gpu = Pixelizer(spec, backend="cpu"), Pixelizer(spec, backend="cuda")
            ok = all(cpu.release(i420, key=key, frame_index=i, timestamp_s=0.0, i420="bt709").to_bytes()
                     == gpu.release(i420, key=key, frame_index=i, timestamp_s=0.0, i420="bt709").to_bytes()
                     for i in range(2))
            results["parity"][f"{res} rgb-from-i420 {name}"] = bool(ok)
            print(f"parity {res:6s} rgb<-i420 {name:9s} {'identical' if ok else 'DIFFERENT'}", flush=True)

    # 2. frame-resident kernel time vs copy bandwidth
    bw = copy_bandwidth_gbs(1 << 16 if args.small else 1 << 30)
    results["copy_GBps"] = bw
    print(f"device-to-device copy: {bw:.0f} GB/s (read + write)", flush=True)
    for res, frame in frames.items():
        d_frame = cuda.to_device(frame)
        for name in ("fixed-16", "previous", "private"):
            spec = specs()[name]
            px = Pixelizer(spec, backend="cpu")
            px.release(frame)
            rel = px.release(frame, key=key)  # a realistic adaptive layout; its means check the candidates
            grid = Grid(frame.shape[0], frame.shape[1], spec.block_size)
            sizes = np.asarray(spec.cell_sizes, dtype=np.int64)
            offsets, n_means = grid.cell_offsets(rel.layout, sizes, spec.channels)
            tables = laplace_tables(spec.noise_scale)
            d = dict(codes=cuda.to_device(rel.layout), sizes=cuda.to_device(sizes),
                     offsets=cuda.to_device(offsets), key=cuda.to_device(key_words(key)),
                     table=cuda.to_device(tables.digits), out=cuda.device_array(n_means, np.uint8))
            tiled = kc.tiled_path_applies(spec.block_size, sizes)

            d["noise"] = cuda.device_array(n_means, np.int64)

            def launch(d=d, spec=spec, tiled=tiled, tables=tables, d_frame=d_frame, n_means=n_means,
                       shape=rel.layout.shape):
                kc.noise_kernel[-(-n_means // kc.NOISE_THREADS), kc.NOISE_THREADS](
                    d["key"], 1, tables.zero_threshold, d["table"], tables.n_digits, d["noise"])
                if tiled:
                    g = (-(-d_frame.shape[1] // kc.TILE), -(-d_frame.shape[0] // kc.TILE))
                    kc.release_kernel_tiled[g, (kc.TILE, kc.ROW_GROUPS)](
                        d_frame, d["codes"], d["sizes"], spec.block_size, d["offsets"], d["noise"], d["out"])
                else:
                    n_by, n_bx = shape
                    kc.release_kernel[(n_bx, n_by), kc.THREADS](
                        d_frame, d["codes"], d["sizes"], spec.block_size, d["offsets"], d["noise"], d["out"])

            def noise_only(d=d, tables=tables, n_means=n_means):
                kc.noise_kernel[-(-n_means // kc.NOISE_THREADS), kc.NOISE_THREADS](
                    d["key"], 1, tables.zero_threshold, d["table"], tables.n_digits, d["noise"])

            ms_events = timed(launch, reps)
            us_device = device_time_us(launch, reps)
            ms = us_device / 1e3 if us_device else ms_events
            us_noise = device_time_us(noise_only, reps)
            moved = frame.nbytes + n_means
            gbs = moved / (ms * 1e-3) / 1e9
            row = {"res": res, "mode": name, "kernel_ms": ms, "event_ms_with_dispatch": ms_events,
                   "timed_by": "cupti" if us_device else "events", "noise_kernel_us": us_noise, "GBps": gbs, "fraction_of_copy": gbs / bw,
                   "n_means": int(n_means), "tiled": tiled}
            if name == "private":
                n_by, n_bx = grid.shape
                lt = laplace_tables(spec.layout_noise_scale)
                dl = cuda.to_device(lt.digits)
                cout = cuda.device_array(n_by * n_bx, np.int64)
                cnoise = cuda.device_array(n_by * n_bx, np.int64)

                def complexity(d=d, dl=dl, lt=lt, cout=cout, cnoise=cnoise, n_bx=n_bx, n_by=n_by, spec=spec,
                               d_frame=d_frame):
                    kc.noise_kernel[-(-n_by * n_bx // kc.NOISE_THREADS), kc.NOISE_THREADS](
                        d["key"], 2, lt.zero_threshold, dl, lt.n_digits, cnoise)
                    kc.complexity_kernel[(n_bx, n_by), (kc.TILE, kc.ROW_GROUPS)](d_frame, spec.block_size, spec.gradient_clip,
                                                                   cnoise, cout)

                us = device_time_us(complexity, reps)
                row["complexity_ms"] = us / 1e3 if us else timed(complexity, reps)
            if cc.words_path_applies(frame.shape, spec.block_size, sizes):
                row["candidates"] = candidates(d, d_frame, spec, tables, rel, reps)
            results["kernel"].append(row)
            print(f"kernel {res:6s} {name:9s} {ms * 1e3:8.1f} us ({row['timed_by']}; events+dispatch "
                  f"{ms_events * 1e3:.0f} us; noise alone {us_noise or float('nan'):.1f} us)  {gbs:7.0f} GB/s  "
                  f"{100 * gbs / bw:5.1f}% of copy"
                  + (f"  (+ complexity {row['complexity_ms'] * 1e3:.1f} us)" if "complexity_ms" in row else ""),
                  flush=True)
            if "candidates" in row:
                c = row["candidates"]
                c["fraction_of_copy"] = moved / (c["candidates_total_us"] * 1e-6) / 1e9 / bw
                print(f"  candidates {'identical' if c['identical'] else 'DIFFERENT'}: noise {c['noise_us']:.1f} -> "
                      f"{c['noise_u32_us']:.1f} us (u32), sums {c['sums_tiled_us']:.1f} -> {c['sums_words_us']:.1f} us "
                      f"(words); together {c['candidates_total_us']:.1f} us, {100 * c['fraction_of_copy']:.1f}% of copy",
                      flush=True)
            # 3. the whole release of a device-resident frame
            gpx = Pixelizer(spec, backend="cuda")
            gpx.release(d_frame)
            gpx.release(d_frame)
            t0 = time.perf_counter()
            for _ in range(min(reps, 30)):
                gpx.release(d_frame)
            wall = (time.perf_counter() - t0) / min(reps, 30) * 1e3
            # where the host time goes: the backend call alone (uploads of codes/offsets/sizes/key, two
            # launches, the means back to the host), the rest being Pixelizer's layout and Release on the CPU
            backend = gpx._backend
            t0 = time.perf_counter()
            for _ in range(min(reps, 30)):
                backend.release_means(d_frame, rel.layout, sizes, spec.block_size, offsets, n_means, key_words(key),
                                      tables)
            call = (time.perf_counter() - t0) / min(reps, 30) * 1e3
            results["release"].append({"res": res, "mode": name, "release_ms": wall, "backend_call_ms": call})
            print(f"release {res:6s} {name:9s} {wall:.2f} ms per frame (device frame, wall clock); backend call "
                  f"{call:.2f} ms of it", flush=True)
    with open(os.path.join(args.out, "gpu.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    ok = all(results["parity"].values()) and all(
        row["candidates"]["identical"] for row in results["kernel"] if "candidates" in row)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
