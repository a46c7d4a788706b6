"""Benchmark of streams/: decode ceiling vs the full worker path, and cameras per node.

    .venv/bin/python bench/bench_streams.py                  # both parts, 720p and 1080p (about 6 min)
    .venv/bin/python bench/bench_streams.py --part throughput --resolutions 720p
    .venv/bin/python bench/bench_streams.py --json bench/out/streams.json

Part 1, throughput, on one H.264 clip per resolution (the same file for every row):

* ``decode`` : ``filesrc ! qtdemux ! h264parse ! avdec_h264 ! fakesink`` (decoder's native I420)
* ``decode_rgb`` : the same plus ``videoconvert`` to RGB, to fakesink: the decode-only ceiling of our path
* ``ingest`` : :func:`streams.iter_frames` (decode, RGB, into numpy)
* ``ingest_i420`` : :func:`streams.iter_frames` with ``pixel_format="i420"`` (the YUV cameras' ingest alone:
  read-only views of the decoder's buffers, no release), compared with ``decode``
* ``release_only`` : ``Pixelizer.release`` alone on decoded frames, one Numba thread (as in the worker)
* ``full`` : :class:`streams.worker.CameraWorker` with ``queue_policy="block"``, ``realtime=False``: ingest
  (an RGB camera takes the decoder's I420 and dp converts it to RGB itself), ``Pixelizer.release``
  (fixed 16 px cells), ledger check, a store callback (``Release.to_bytes`` into a
  bounded buffer: the Redis payload without the network) and the re-stream sink (a
  :class:`streams.restream.PrivateMount`, no viewer: releases are kept, nothing is encoded)
* ``full+viewer`` : the same with one RTSP viewer on the private mount (reconstruct + x264 per frame)
* ``full yuv`` (and ``+ viewer``): the same with ``color="yuv420"``: the decoder's I420 frames are released
  as they are, with no colour conversion anywhere; compared with ``decode``
* ``full yuv previous``, ``full previous``: YUV and RGB with the service's default camera layout
  (``previous``: adaptive cells chosen from the previous release, no privacy cost); RGB + previous is what a
  camera created with the service's defaults runs

Part 2, capacity: a server process serves the clip over RTSP (no re-encoding); N workers ingest it as N
cameras in real time (30 fps), each releasing every frame with the same sinks as ``full``. N grows until
a camera drops a frame or releases less than 95% of its release rate; once with every frame released
(``--release-fps 30``) and once at 5 releases per second (the rate gate skips the rest). Reports, per N, drops, fps and capture-to-release latency
(p50/p99 over all cameras; capture = when the frame's packets reached this host).

Clips: videotestsrc ``smpte`` scrolling horizontally (every macro-block changes), x264 ``veryfast``, CBR at
2.5 Mbit/s (720p) and 5 Mbit/s (1080p), one key frame per second, no B-frames (like most IP cameras: B-frames
add reordering delay at the decoder); cached in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dp import Ledger, Pixelizer, PixelizeSpec  # noqa: E402
from streams import EncoderSettings, iter_frames, make_test_clip  # noqa: E402
from streams.frame import pixel_format_for  # noqa: E402
from streams.gst import Gst, ensure_init, parse_pipeline, shutdown_pipeline  # noqa: E402
from streams.rtsp_server import LocalRtspServer  # noqa: E402
from streams.testing import ServerProcess, free_port, wait_for  # noqa: E402
from streams.worker import CameraWorker, HealthState  # noqa: E402

OUT = REPO / "bench" / "out"
RESOLUTIONS = {"720p": (1280, 720, 2500), "1080p": (1920, 1080, 5000)}
SPEC = PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="fixed", cell_size=16)
SPEC_YUV = SPEC.replace(color="yuv420")  # the decoder's I420 as it is: no colour conversion at all
# the service's camera default: the adaptive layout read from the previous release (no privacy cost)
SPEC_YUV_PREVIOUS = PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="previous", color="yuv420")
SPEC_PREVIOUS = SPEC_YUV_PREVIOUS.replace(color="rgb")  # a camera created with the service's defaults


WORKER_OPTIONS: dict = {}  # extra CameraWorker arguments for every worker of a run (--release-nice)


def clip_for(name: str, frames: int) -> Path:
    width, height, kbps = RESOLUTIONS[name]
    path = OUT / f"smpte_{name}_{frames}f_{kbps}k_nob.mp4"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tmp = path.with_suffix(".tmp.mp4")
        make_test_clip(
            tmp, width, height, frames=frames, fps=30, pattern="smpte",
            encoder=EncoderSettings(speed_preset="veryfast", tune="zerolatency", bitrate_kbps=kbps, quality=None, key_int_max=30),
        )  # fmt: skip
        tmp.rename(path)
        print(f"  made {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def _cpu_s() -> float:
    """CPU seconds used so far by this process, every thread (GStreamer's included)."""
    t = os.times()
    return t.user + t.system


def gst_fps(description: str, location: Path, frames: int, cpu: dict | None = None) -> float:
    """Run a pipeline ``filesrc name=src ! ...`` to EOS; frames per second of wall time (CPU ms per frame
    into ``cpu["ms_per_frame"]`` when given)."""
    ensure_init()
    pipeline = parse_pipeline(description)
    pipeline.get_by_name("src").set_property("location", str(location))
    t0, c0 = time.perf_counter(), _cpu_s()
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(600 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    elapsed, used = time.perf_counter() - t0, _cpu_s() - c0
    shutdown_pipeline(pipeline)
    if msg is None or msg.type != Gst.MessageType.EOS:
        raise RuntimeError(f"pipeline failed: {description}")
    if cpu is not None:
        cpu["ms_per_frame"] = 1e3 * used / frames
    return frames / elapsed


def decode_ceiling(clip: Path, frames: int, tail: str) -> dict:
    """Decode-only fps with libav's own thread count and with the one the full path uses for files
    (streams.ingest: one more than the cores); the ceiling is the faster of the two."""
    threads = (os.cpu_count() or 1) + 1
    out: dict = {}
    for key, opts in (("auto", ""), (f"threads_{threads}", f" max-threads={threads}")):
        cpu: dict = {}
        out[key] = gst_fps(f"filesrc name=src ! qtdemux ! h264parse ! avdec_h264{opts} ! {tail}", clip, frames, cpu)
        out[f"{key}_cpu_ms"] = cpu["ms_per_frame"]
    out["best"] = max(out["auto"], out[f"threads_{threads}"])
    return out


class StoreCallback:
    """Serialises each fresh release as the Redis store would (payload only, no network)."""

    def __init__(self) -> None:
        self.buffer: deque[bytes] = deque(maxlen=64)
        self.last = None

    def __call__(self, release) -> None:
        if release is self.last:  # a repeat is already stored
            return
        self.last = release
        self.buffer.append(release.to_bytes())


def _load_kernels(spec) -> None:
    """Load dp's kernels for `spec` before a timed run, on frames as the worker gets them (read-only, and I420
    for RGB specs too: dp converts them): Numba loads each one from its cache on first use (about 0.3 s) and
    compiles it on a fresh checkout (seconds), which would otherwise land inside the timing."""
    i420 = "bt709" if pixel_format_for(spec.color, spec.channels) == "auto" else None
    shape = (48, 32) if spec.color == "yuv420" or i420 else (32, 32, spec.channels)
    scratch = np.zeros(shape, np.uint8)
    scratch.flags.writeable = False
    px = Pixelizer(spec, backend="cpu")
    for _ in range(2):  # the second release takes an adaptive layout's path from the first
        px.release(scratch, i420=i420).to_bytes()


def run_full_path(clip: Path, frames: int, *, viewer: bool, spec=SPEC) -> dict:
    _load_kernels(spec)
    with LocalRtspServer(port=0) as server:
        private = server.serve_private("bench", encoder=EncoderSettings(key_int_max=30))
        viewer_proc = None
        if viewer:
            # A viewer that receives and depayloads but does not decode: it stands for a remote client.
            viewer_proc = subprocess.Popen(
                ["gst-launch-1.0", "-q", "rtspsrc", f"location={server.url('/bench/private')}", "protocols=tcp",
                 "!", "rtph264depay", "!", "fakesink", "sync=false"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        store = StoreCallback()
        worker = CameraWorker(
            "bench", str(clip), spec, ledger=Ledger(eps_window=1e4, window_s=10.0), sinks=[store, private],
            queue_policy="block", realtime=False, queue_size=4, convert_threads=2, **WORKER_OPTIONS,
        )  # fmt: skip
        try:
            if viewer:
                # the first releases go to an empty mount until the viewer connects: start only once it is in
                worker.start()
                if not wait_for(lambda: private.clients > 0, 20):
                    raise RuntimeError("viewer did not connect")
                base_released, t0 = worker.stats.frames_released, time.perf_counter()
            else:
                t0, c0 = time.perf_counter(), _cpu_s()
                worker.start()
                base_released = 0
            target = base_released + frames if viewer else frames
            if not wait_for(lambda: worker.stats.frames_released >= target, 600, 0.005):
                raise RuntimeError("full path did not finish")
            elapsed = time.perf_counter() - t0
            cpu_ms = None if viewer else 1e3 * (_cpu_s() - c0) / frames
            stats = worker.stats
        finally:
            worker.stop()
            if viewer_proc is not None:
                viewer_proc.terminate()
                viewer_proc.wait(10)
    return {
        "fps": frames / elapsed,
        "cpu_ms_per_frame": cpu_ms,
        "dropped": stats.frames_dropped,
        "pushed_to_viewer": private.frames_pushed,
        "releases_seen_by_mount": private.releases_seen,
    }


def throughput(name: str, frames: int) -> dict:
    clip = clip_for(name, frames)
    row: dict = {"resolution": name, "frames": frames}
    row["decode"] = decode_ceiling(clip, frames, "fakesink sync=false")
    row["decode_fps"] = row["decode"]["best"]
    row["decode_rgb"] = decode_ceiling(
        clip, frames, "videoconvert n-threads=2 ! video/x-raw,format=RGB ! fakesink sync=false"
    )
    row["decode_rgb_fps"] = row["decode_rgb"]["best"]
    t0 = time.perf_counter()
    kept = []
    for frame in iter_frames(clip):
        if len(kept) < 30:  # keep a few for the release-only row; holding all would measure page faults
            kept.append(frame.array)
    row["ingest_fps"] = frames / (time.perf_counter() - t0)
    # the YUV cameras' ingest alone (the decoder's I420 as read-only views, no release): what the full path
    # costs beyond decoding before dp does anything
    t0, c0 = time.perf_counter(), _cpu_s()
    n = sum(1 for _ in iter_frames(clip, pixel_format="i420"))
    row["ingest_i420_fps"], row["ingest_i420_cpu_ms"] = n / (time.perf_counter() - t0), 1e3 * (_cpu_s() - c0) / n
    row["ingest_i420_vs_decode"] = row["ingest_i420_fps"] / row["decode_fps"]
    px = Pixelizer(SPEC)
    timing: dict = {}

    def release_only() -> None:
        # the worker's configuration: a non-main thread with one Numba thread (CameraWorker dp_threads=1)
        import numba

        numba.set_num_threads(1)
        px.release(kept[0])  # compile
        t0 = time.perf_counter()
        for i in range(frames):
            px.release(kept[i % len(kept)])
        timing["fps"] = frames / (time.perf_counter() - t0)

    runner = threading.Thread(target=release_only)
    runner.start()
    runner.join()
    row["release_only_fps"] = timing["fps"]
    full = run_full_path(clip, frames, viewer=False)
    row["full_fps"], row["full_dropped"] = full["fps"], full["dropped"]
    viewed = run_full_path(clip, frames, viewer=True)
    row["full_viewer_fps"] = viewed["fps"]
    row["viewer_frames_per_release"] = viewed["pushed_to_viewer"] / max(viewed["releases_seen_by_mount"], 1)
    row["full_vs_decode_rgb"] = row["full_fps"] / row["decode_rgb_fps"]
    row["full_vs_decode"] = row["full_fps"] / row["decode_fps"]
    yuv = run_full_path(clip, frames, viewer=False, spec=SPEC_YUV)
    row["full_yuv_fps"], row["full_yuv_dropped"] = yuv["fps"], yuv["dropped"]
    row["full_yuv_cpu_ms"], row["full_cpu_ms"] = yuv["cpu_ms_per_frame"], full["cpu_ms_per_frame"]
    row["full_yuv_vs_decode"] = row["full_yuv_fps"] / row["decode_fps"]
    row["full_yuv_viewer_fps"] = run_full_path(clip, frames, viewer=True, spec=SPEC_YUV)["fps"]
    prev = run_full_path(clip, frames, viewer=False, spec=SPEC_YUV_PREVIOUS)
    row["full_yuv_previous_fps"], row["full_yuv_previous_cpu_ms"] = prev["fps"], prev["cpu_ms_per_frame"]
    row["full_yuv_previous_vs_decode"] = prev["fps"] / row["decode_fps"]
    prev_rgb = run_full_path(clip, frames, viewer=False, spec=SPEC_PREVIOUS)
    row["full_previous_fps"], row["full_previous_cpu_ms"] = prev_rgb["fps"], prev_rgb["cpu_ms_per_frame"]
    row["full_previous_vs_decode"] = prev_rgb["fps"] / row["decode_fps"]
    return row


def capacity_step(url: str, n: int, measure_s: float, release_fps: float, spec=SPEC) -> dict:
    stores = [StoreCallback() for _ in range(n)]
    with LocalRtspServer(port=0) as server:
        mounts = [server.serve_private(f"cam{i}") for i in range(n)]
        workers = [
            CameraWorker(f"cam{i}", url, spec, ledger=Ledger(eps_window=1e4, window_s=10.0), release_fps=release_fps,
                         sinks=[stores[i], mounts[i]], queue_size=4, convert_threads=1, stall_timeout_s=5.0,
                         **WORKER_OPTIONS)
            for i in range(n)
        ]  # fmt: skip
        try:
            for w in workers:
                w.start()
            ok = wait_for(lambda: all(w.health.state is HealthState.STREAMING for w in workers), 30)
            not_streaming = sorted({f"{w.health.state.value}: {w.health.reason}" for w in workers
                                    if w.health.state is not HealthState.STREAMING})  # fmt: skip
            time.sleep(2.0)  # let every decoder reach a key frame and settle
            before = [w.stats for w in workers]
            time.sleep(measure_s)
            after = [w.stats for w in workers]
            latencies: list[float] = []
            for w, a, b in zip(workers, after, before, strict=True):
                fresh = a.frames_released - b.frames_released  # the samples of the measurement window
                latencies += w.latency_samples_s()[-fresh:] if fresh > 0 else []
        finally:
            for w in workers:
                w.stop()
    dropped = sum(a.frames_dropped - b.frames_dropped for a, b in zip(after, before, strict=True))
    released = [
        (a.frames_released - b.frames_released) / measure_s for a, b in zip(after, before, strict=True)
    ]
    reconnects = sum(a.reconnects - b.reconnects for a, b in zip(after, before, strict=True))
    skipped = sum(a.frames_skipped - b.frames_skipped for a, b in zip(after, before, strict=True))
    ingest = [(a.frames_ingested - b.frames_ingested) / measure_s for a, b in zip(after, before, strict=True)]
    latencies.sort()

    def pct(p: float) -> float | None:
        return (
            latencies[min(len(latencies) - 1, math.ceil(p * len(latencies)) - 1)] * 1000
            if latencies
            else None
        )

    return {
        "cameras": n,
        "release_fps": release_fps,
        "all_streaming": ok,
        "not_streaming": not_streaming,
        "dropped": dropped,
        "reconnects": reconnects,
        "min_ingest_fps": min(ingest),
        "skipped_by_rate_gate": skipped,
        "min_release_fps": min(released),
        "mean_release_fps": sum(released) / n,
        "latency_p50_ms": pct(0.50),
        "latency_p99_ms": pct(0.99),
        "latency_max_ms": latencies[-1] * 1000 if latencies else None,
    }


def capacity(
    name: str, frames: int, measure_s: float, max_cameras: int, release_fps: float, min_cameras: int = 1,
    spec=SPEC,
) -> list[dict]:
    clip = clip_for(name, frames)
    rows = []
    for n in range(min_cameras, max_cameras + 1):
        server = ServerProcess(free_port(), "--mount", "/cam", "--file", str(clip), cwd=str(REPO))
        url = server.start()
        try:
            row = capacity_step(url, n, measure_s, release_fps, spec)
        finally:
            server.stop()
        row["resolution"] = name
        row["color"] = spec.color
        rows.append(row)
        print("  ", json.dumps(row), flush=True)
        wanted = min(release_fps, 30.0)
        sustained = row["all_streaming"] and row["dropped"] == 0 and row["min_release_fps"] >= 0.95 * wanted
        if not sustained:
            break
    return rows


def markdown(results: dict) -> str:
    """The tables for docs/benchmarks.md."""
    env = results["environment"]
    lines = [
        f"{env['cpus']} CPUs, GStreamer {env['gstreamer']}, Python {env['python']}; "
        f"1-min load average {env['loadavg_1m_at_start']:.1f} at start, {env.get('loadavg_1m_at_end', float('nan')):.1f} at end.",
        "",
    ]
    if results["throughput"]:
        lines += [
            "| clip | decode (I420) | decode to RGB | iter_frames | iter_frames I420 (share of decode) | Pixelizer.release only | full path RGB | RGB / decode | RGB / decode-RGB | RGB + 1 viewer | full path YUV | YUV / decode | YUV + 1 viewer | full path YUV, previous layout | YUV previous / decode | full path RGB, previous (service default) | RGB previous / decode |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        nan = float("nan")
        for r in results["throughput"]:
            lines.append(
                f"| {r['resolution']} | {r['decode_fps']:.0f} | {r['decode_rgb_fps']:.0f} | {r['ingest_fps']:.0f} | "
                f"{r.get('ingest_i420_fps', nan):.0f} ({r.get('ingest_i420_vs_decode', nan):.0%}) | "
                f"{r['release_only_fps']:.0f} | {r['full_fps']:.0f} | {r.get('full_vs_decode', nan):.0%} | "
                f"{r['full_vs_decode_rgb']:.0%} | "
                f"{r['full_viewer_fps']:.0f} | {r.get('full_yuv_fps', nan):.0f} | "
                f"{r.get('full_yuv_vs_decode', nan):.0%} | {r.get('full_yuv_viewer_fps', nan):.0f} | "
                f"{r.get('full_yuv_previous_fps', nan):.0f} | {r.get('full_yuv_previous_vs_decode', nan):.0%} | "
                f"{r.get('full_previous_fps', nan):.0f} | {r.get('full_previous_vs_decode', nan):.0%} |"
            )
        lines += [
            "",
            "CPU per frame (ms, all threads of the process; decode-only with libav's own thread count / with the "
            "full path's):",
            "",
            "| clip | decode (I420) | iter_frames I420 | full path YUV | full path YUV, previous | decode to RGB | full path RGB | full path RGB, previous |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["throughput"]:
            d, drgb = r.get("decode", {}), r.get("decode_rgb", {})
            n = next((k for k in d if k.startswith("threads_") and not k.endswith("_cpu_ms")), None)
            if n is None:
                continue
            lines.append(
                f"| {r['resolution']} | {d['auto_cpu_ms']:.2f} / {d[n + '_cpu_ms']:.2f} | "
                f"{r.get('ingest_i420_cpu_ms', nan):.2f} | {r['full_yuv_cpu_ms']:.2f} | "
                f"{r.get('full_yuv_previous_cpu_ms', nan):.2f} | "
                f"{drgb['auto_cpu_ms']:.2f} / {drgb[n + '_cpu_ms']:.2f} | {r['full_cpu_ms']:.2f} | "
                f"{r.get('full_previous_cpu_ms', nan):.2f} |"
            )
        lines.append("")
    if results["capacity"]:
        lines += [
            "| clip | frames | release rate | cameras | dropped | min release fps | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["capacity"]:
            rate = "every frame" if math.isinf(r["release_fps"]) else f"{r['release_fps']:g}/s"

            def ms(v):
                return "-" if v is None else f"{v:.0f}"

            lines.append(
                f"| {r['resolution']} | {r.get('color', 'rgb')} | {rate} | {r['cameras']} | {r['dropped']} | {r['min_release_fps']:.1f} | "
                f"{ms(r['latency_p50_ms'])} | {ms(r['latency_p99_ms'])} | {ms(r['latency_max_ms'])} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["throughput", "capacity", "all"], default="all")
    parser.add_argument("--resolutions", nargs="+", default=["720p", "1080p"], choices=list(RESOLUTIONS))
    parser.add_argument("--frames", type=int, default=300, help="clip length for the throughput part")
    parser.add_argument("--measure-s", type=float, default=8.0, help="measurement window per capacity step")
    parser.add_argument("--max-cameras", type=int, default=8)
    parser.add_argument("--min-cameras", type=int, default=1)
    parser.add_argument(
        "--release-fps",
        type=float,
        nargs="+",
        default=[math.inf, 5.0],
        help="capacity runs, one per release rate",
    )
    parser.add_argument("--color", nargs="+", default=["rgb", "yuv420"], choices=["rgb", "yuv420"],
                        help="capacity runs: RGB frames, the decoder's I420, or both")
    parser.add_argument("--release-nice", type=int, default=None,
                        help="CameraWorker release_nice for every worker (default: the worker's own)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--markdown", type=Path, help="render an earlier --json file as tables and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0

    if args.release_nice is not None:
        WORKER_OPTIONS["release_nice"] = args.release_nice
    env = {
        "release_nice": args.release_nice,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],  # other processes on the node skew every number
        "python": platform.python_version(),
        "gstreamer": ".".join(map(str, (ensure_init(), Gst.version())[1][:3])),
        "machine": platform.machine(),
    }
    print("environment:", json.dumps(env), flush=True)
    results: dict = {"environment": env, "throughput": [], "capacity": []}
    if args.part in ("throughput", "all"):
        print("throughput (fps over the same clip):", flush=True)
        for name in args.resolutions:
            row = throughput(name, args.frames)
            results["throughput"].append(row)
            print(
                "  ",
                json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    if args.part in ("capacity", "all"):
        print("capacity (30 fps cameras over RTSP):", flush=True)
        # the capacity clip must outlast warm-up and measurement for the largest step
        cap_frames = int(30 * (args.measure_s + 12))
        for color in args.color:
            for release_fps in args.release_fps:
                for name in args.resolutions:
                    results["capacity"] += capacity(
                        name, cap_frames, args.measure_s, args.max_cameras, release_fps, args.min_cameras,
                        SPEC.replace(color=color),
                    )
    env["loadavg_1m_at_end"] = os.getloadavg()[0]
    print("load average at the end (1 min):", env["loadavg_1m_at_end"], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
