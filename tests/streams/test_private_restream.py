"""The privatized re-stream: a GStreamer RTSP client reads /<camera>/private and sees the releases."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dp import Ledger, Pixelizer, PixelizeSpec, Release
from dp.errors import ConfigError, IngestError
from streams import EncoderSettings, iter_frames
from streams.testing import wait_for
from streams.worker import CameraWorker, HealthState

SPEC = PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="fixed", cell_size=16)


class Keep:
    def __init__(self) -> None:
        self.items: list[Release] = []
        self.lock = threading.Lock()

    def __call__(self, release: Release) -> None:
        with self.lock:
            self.items.append(release)

    def recent(self, n: int) -> list[Release]:
        with self.lock:
            return list(self.items[-n:])


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def watch(url: str, private, worker, n: int, timeout_s: float = 60.0) -> list:
    """n frames of a private mount, read by a GStreamer client; on failure, where the stream stood."""
    try:
        return list(iter_frames(url, max_frames=n, first_frame_timeout_s=timeout_s))
    except IngestError as exc:
        raise AssertionError(
            f"{exc}; mount: clients={private.clients} releases_seen={private.releases_seen} "
            f"frames_pushed={private.frames_pushed} push_failures={private.push_failures} ({private.last_push_result}); "
            f"worker: {worker.health.state.value} released={worker.stats.frames_released} "
            f"repeated={worker.stats.frames_repeated}"
        ) from exc


@pytest.fixture
def private_camera(rtsp_server):
    """A camera served by the local server, ingested by a worker that re-streams its releases."""
    pattern = rtsp_server.serve_test_pattern("/cam", width=320, height=240, fps=30)
    private = rtsp_server.serve_private("lobby", encoder=EncoderSettings(quality=8, key_int_max=30))
    keep = Keep()
    worker = CameraWorker(
        "lobby", rtsp_server.url("/cam"), SPEC, ledger=None, release_fps=10, sinks=[keep, private]
    )
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.STREAMING and len(keep.items) >= 3, 15)
    yield rtsp_server, pattern, private, keep, worker
    worker.stop()


def test_private_mount_frames_match_the_releases(private_camera):
    server, _pattern, private, keep, worker = private_camera
    frames = watch(server.url("/lobby/private"), private, worker, 15)
    assert len(frames) == 15 and private.frames_pushed >= 15
    candidates = [r.reconstruct() for r in keep.recent(60)]
    for frame in frames[-8:]:
        assert frame.array.shape == (240, 320, 3)
        errors = sorted(mad(frame.array, c) for c in candidates)
        # Each decoded frame is one release (H.264 loss of a level or two) and clearly not another one:
        # fresh noise makes two releases of the same scene differ by tens of levels per cell.
        assert errors[0] < 4.0
        assert errors[1] > 3 * errors[0] + 5


def test_private_mount_refuses_anything_but_a_release(private_camera):
    _server, _pattern, private, _keep, _worker = private_camera
    with pytest.raises(ConfigError, match="only accepts dp.Release"):
        private(np.zeros((240, 320, 3), np.uint8))


def test_private_mount_follows_a_resolution_change(private_camera):
    server, pattern, private, keep, worker = private_camera
    pattern.set_resolution(160, 128)
    assert wait_for(lambda: keep.recent(1)[0].width == 160, 10)
    frames = watch(server.url("/lobby/private"), private, worker, 3)
    assert frames[-1].array.shape == (128, 160, 3)


def test_nothing_is_encoded_while_nobody_watches(rtsp_server):
    private = rtsp_server.serve_private("idle")
    px = Pixelizer(SPEC, backend="cpu")
    frame = np.zeros((64, 64, 3), np.uint8)
    frame.flags.writeable = False  # like decoded frames (and the kernels compiled for them)
    for i in range(5):
        private(px.release(frame, camera_id="idle", frame_index=i))
    assert private.releases_seen == 5 and private.frames_pushed == 0 and private.clients == 0


def test_a_new_client_gets_the_last_release_even_when_releases_stopped(rtsp_server):
    """An exhausted budget stops fresh releases; the keepalive still serves the last one to late viewers."""
    rtsp_server.serve_test_pattern("/cam", width=160, height=128)
    private = rtsp_server.serve_private("quiet", keepalive_s=0.2, encoder=EncoderSettings(quality=8))
    keep = Keep()
    worker = CameraWorker(
        "quiet",
        rtsp_server.url("/cam"),
        SPEC,
        ledger=Ledger(eps_window=1.0, window_s=3600.0),
        sinks=[keep, private],
    )
    worker.start()
    try:
        assert wait_for(lambda: worker.stats.frames_repeated >= 5, 15)
        only = keep.items[0].reconstruct()
        frames = watch(rtsp_server.url("/quiet/private"), private, worker, 4)
        assert all(mad(f.array, only) < 4.0 for f in frames)
    finally:
        worker.stop()


def test_camera_ids_that_cannot_be_mount_paths_are_refused(rtsp_server):
    with pytest.raises(ConfigError):
        rtsp_server.serve_private("../etc")
    with pytest.raises(ConfigError):
        rtsp_server.serve_test_pattern("no-leading-slash")


def test_a_grey_release_of_odd_size_is_served_padded_to_even(rtsp_server):
    """Grey releases go out as GRAY8 rows padded to 4 bytes, at even size (last row and column repeated)."""
    rng = np.random.default_rng(5)
    cells = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    frame = np.repeat(np.repeat(cells, 8, 0), 8, 1)[:25, :33]  # 33 x 25: odd both ways
    rel = Pixelizer(PixelizeSpec(eps_pix=1000.0, m_pixels=1, channels=1, cell_size=8), backend="cpu").release(frame)
    private = rtsp_server.serve_private("grey", keepalive_s=0.1, encoder=EncoderSettings(quality=8))
    private(rel)
    frames = list(iter_frames(rtsp_server.url("/grey/private"), max_frames=3, channels=1, first_frame_timeout_s=30))
    got = frames[-1].array[..., 0].astype(int)
    want = np.pad(rel.reconstruct()[..., 0], ((0, 1), (0, 1)), mode="edge").astype(int)
    assert got.shape == (26, 34)
    assert np.abs(got - want).mean() < 4.0
