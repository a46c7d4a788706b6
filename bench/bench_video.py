"""The video command against `deface` (face-detection blur, PyPI) on the same 1080p H.264 file.

Both decode the same clip, anonymize every frame and encode H.264 with the same x264 settings
(preset ultrafast, constant quantizer 23, no tune). dpstream runs in RGB and with --yuv (the decoder's
I420 released as it is). deface must be installed in its own venv (it pulls a second,
non-headless OpenCV):

    python3 -m venv /tmp/deface-venv && /tmp/deface-venv/bin/pip install deface onnxruntime
    python bench/bench_video.py --deface /tmp/deface-venv/bin/deface [--frames 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deface", default=shutil.which("deface") or "/tmp/deface-venv/bin/deface")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from streams.files import make_test_clip

    dpstream = os.path.join(os.path.dirname(sys.executable), "dpstream")
    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, "clip.mp4")
        # a scrolling pattern changes every macro-block of every frame, like real footage
        make_test_clip(clip, args.width, args.height, args.frames, 30, pattern="smpte")
        rows = {}
        # Numba compiles a kernel once per install (then loads it from its cache): do that before timing
        for extra in ([], ["--yuv"], ["--layout", "fixed"], ["--layout", "fixed", "--yuv"]):
            run_timed([dpstream, "pixelize", clip, os.path.join(tmp, "warm.mp4"), "--frames", "3", *extra])
        for label, extra in (("dpstream previous", []), ("dpstream previous --yuv", ["--yuv"]),
                             ("dpstream fixed b=16", ["--layout", "fixed"]),
                             ("dpstream fixed b=16 --yuv", ["--layout", "fixed", "--yuv"])):
            rows[label] = run_timed([dpstream, "pixelize", clip, os.path.join(tmp, "dp.mp4"), "--quality", "23",
                                     *extra])
        ffmpeg = json.dumps({"codec": "libx264", "ffmpeg_params": ["-preset", "ultrafast", "-qp", "23"]})
        if os.path.exists(args.deface):
            rows["deface (defaults)"] = run_timed([args.deface, clip, "-o", os.path.join(tmp, "d1.mp4"),
                                                   "--ffmpeg-config", ffmpeg])
            rows["deface --scale 640x360"] = run_timed([args.deface, clip, "-o", os.path.join(tmp, "d2.mp4"),
                                                        "--scale", "640x360", "--ffmpeg-config", ffmpeg])
        decode = [sys.executable, "-c",
                  "import sys; from streams.files import iter_frames\n"
                  "for _ in iter_frames(sys.argv[1]): pass", clip]
        rows["decode only (GStreamer)"] = run_timed(decode)
    print(f"{args.frames} frames {args.width}x{args.height} H.264, x264 ultrafast qp 23, whole command wall time")
    ref = rows.get("deface (defaults)")
    for label, s in rows.items():
        ratio = f"{ref / s:8.1f}x deface" if ref else ""
        print(f"  {label:26s} {s:7.2f} s {args.frames / s:7.1f} fps {ratio}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"frames": args.frames, "seconds": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
