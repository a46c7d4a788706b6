"""Where a camera's CPU goes, thread by thread: decode-only against the full worker path on one clip.

    .venv/bin/python bench/bench_threads.py 720p             # decode-only, then YUV with the previous layout
    .venv/bin/python bench/bench_threads.py 1080p --spec rgb-previous --frames 600

Reads each thread's CPU time from /proc/self/task before and after one run of bench_streams' decode-only
pipeline (libav's own thread count and the full path's) and of its full path (CameraWorker, block policy,
store and re-stream sinks), and prints ms of CPU per frame per thread name, the total, and how many of the
cores were busy on average (CPU seconds over wall seconds). GStreamer threads carry their element's name
(libav's frame threads inherit their creator's); Python threads the worker's thread names. Linux only.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_streams as B  # noqa: E402

SPECS = {"yuv-previous": B.SPEC_YUV_PREVIOUS, "rgb-previous": B.SPEC_PREVIOUS, "yuv-fixed": B.SPEC_YUV,
         "rgb-fixed": B.SPEC}


def _ticks() -> dict[str, tuple[str, int]]:
    """tid -> (name, utime + stime in clock ticks) for every live thread of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def per_thread(run, frames: int) -> tuple[dict[str, float], float]:
    """Run `run()`; CPU ms per frame by thread name (threads that ended during the run included), and
    the wall time. A sampler thread keeps the last reading of every thread, so short-lived ones count."""
    names: dict[str, str] = {}  # native id -> Python thread name
    original = threading.Thread.run

    def named_run(self):
        names[str(threading.get_native_id())] = self.name
        return original(self)

    seen: dict[str, tuple[str, int]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(_ticks())
            time.sleep(0.02)

    threading.Thread.run = named_run
    before = _ticks()
    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        run()
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        threading.Thread.run = original
    seen.update(_ticks())
    hz = os.sysconf("SC_CLK_TCK")
    by_name: collections.Counter[str] = collections.Counter()
    for tid, (name, ticks) in seen.items():
        label = names.get(tid, name)
        if label == "bench-sampler":
            continue
        by_name[label] += (ticks - before.get(tid, (name, 0))[1]) * 1e3 / hz / frames
    return dict(by_name), wall


def report(title: str, ms: dict[str, float], wall: float, frames: int) -> None:
    total = sum(ms.values())
    print(f"{title}: {frames / wall:.0f} fps, {total:.2f} ms of CPU per frame, {total * frames / 1e3 / wall:.2f} cores busy")
    for name, v in sorted(ms.items(), key=lambda kv: -kv[1]):
        if v >= 0.005:
            print(f"    {name:32s} {v:6.3f} ms/frame")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("resolution", choices=list(B.RESOLUTIONS))
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--spec", choices=list(SPECS), default="yuv-previous")
    args = parser.parse_args()
    clip = B.clip_for(args.resolution, args.frames)
    spec = SPECS[args.spec]
    B._load_kernels(spec)
    threads = (os.cpu_count() or 1) + 1
    for label, opts in (("decode-only, libav's threads", ""), (f"decode-only, max-threads={threads}",
                                                                f" max-threads={threads}")):
        ms, wall = per_thread(lambda opts=opts: B.gst_fps(
            f"filesrc name=src ! qtdemux ! h264parse ! avdec_h264{opts} ! fakesink sync=false", clip, args.frames),
            args.frames)
        report(label, ms, wall, args.frames)
    ms, wall = per_thread(lambda: B.run_full_path(clip, args.frames, viewer=False, spec=spec), args.frames)
    report(f"full path, {args.spec}", ms, wall, args.frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
