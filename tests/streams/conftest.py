"""Fixtures for streams tests: real GStreamer RTSP servers on 127.0.0.1 (in process and as a subprocess)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.rtsp_server import LocalRtspServer
from streams.testing import ServerProcess
from streams.worker import CameraWorker

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def compiled_dp() -> None:
    """Compile dp's kernels once, before any test's deadline starts (a cold Numba cache takes tens of s).

    Workers warm up on their own too (health STARTING until then); this keeps the deadlines in the tests
    about streaming, not about compiling.
    """
    import numpy as np

    from dp import Pixelizer, PixelizeSpec

    frame = np.zeros((40, 40, 3), np.uint8)
    frame.flags.writeable = False  # the signature of decoded frames
    Pixelizer(PixelizeSpec(eps_pix=1.0, channels=3, cell_size=16)).release(frame).reconstruct()


@pytest.fixture
def rtsp_server() -> Iterator[LocalRtspServer]:
    server = LocalRtspServer(port=0).start()
    yield server
    server.stop()


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """Factory of RTSP server child processes; every one is stopped at teardown."""
    made: list[ServerProcess] = []

    def make(port: int, *args: str) -> ServerProcess:
        proc = ServerProcess(port, *args, cwd=str(REPO_ROOT))
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()


@pytest.fixture
def workers() -> Iterator[list[CameraWorker]]:
    """Append each CameraWorker a test starts: every one is stopped afterwards, even when the test fails."""
    made: list[CameraWorker] = []
    yield made
    for worker in made:
        worker.stop()
