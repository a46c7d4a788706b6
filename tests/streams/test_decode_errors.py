"""Corrupt H.264 sources through the real decoder: what the worker makes of a broken file and a broken camera.

The clips are real MP4s from ``make_test_clip`` with bytes garbled, zeroed or cut off on disk; the decoder,
demuxer and worker are the real ones. A camera's errors pass, so they are retried with backoff however often
they recur; a file fails the same way every time, so after a few attempts it is FAILED and retried slowly.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dp import PixelizeSpec
from streams import iter_frames, make_test_clip
from streams.testing import wait_for
from streams.worker import CameraWorker, HealthState

SPEC = PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="fixed", cell_size=16)
FRAMES = 45  # 1.5 s at 30 fps


class Health:
    """on_health_change: every state the worker went through, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: list[tuple[HealthState, str]] = []

    def __call__(self, _old, new) -> None:
        with self.lock:
            self.states.append((new.state, new.reason))

    def seen(self, state: HealthState) -> bool:
        with self.lock:
            return any(s is state for s, _ in self.states)


def _boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Top-level MP4 boxes: type -> (payload start, payload end)."""
    boxes, pos = {}, 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos: pos + 8])
        boxes[kind] = (pos + 8, pos + size)
        pos += size
    return boxes


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    # smpte scrolls, so every frame carries real picture data (the ball on black compresses to nothing)
    path = make_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 160, 120, frames=FRAMES, fps=30,
                          pattern="smpte")
    return Path(path).read_bytes()


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _worker(path: str, health: Health, **kwargs) -> CameraWorker:
    kwargs.setdefault("failed_retry_s", 60.0)
    # short, so that an attempt that lost its error (see test_truncated_files.py) fails the time bound below
    kwargs.setdefault("connect_timeout_s", 2.0)
    return CameraWorker("archive", path, SPEC, ledger=None, on_health_change=health, **kwargs)


def test_garbage_in_the_middle_of_a_file_is_concealed_and_the_file_keeps_playing_and_looping(
        clip, tmp_path, workers):
    data = bytearray(clip)
    start, end = _boxes(clip)[b"mdat"]
    middle = (start + end) // 2
    data[middle: middle + 4000] = random.Random(7).randbytes(4000)
    bad = _write(tmp_path, "garbled.mp4", bytes(data))
    clean = [np.array(f.array) for f in iter_frames(_write(tmp_path, "clean.mp4", clip))]
    garbled = [np.array(f.array) for f in iter_frames(bad)]
    assert len(clean) == FRAMES and garbled
    # the garbage hit the video: the decoder dropped frames, or concealed what it could not decode
    assert len(garbled) < FRAMES or any(not np.array_equal(a, b) for a, b in zip(clean, garbled, strict=True))

    health, released = Health(), []
    worker = _worker(bad, health, sinks=[released.append])
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(released) > 2 * FRAMES, 20), worker.health  # played past its end twice
    assert worker.health.state is HealthState.STREAMING
    assert not health.seen(HealthState.RECONNECTING) and not health.seen(HealthState.FAILED), health.states


@pytest.mark.parametrize(
    ("name", "corrupt", "causes"),
    [
        # every picture zeroed: the decoder gets H.264 it can never decode (a DECODE stream error)
        ("undecodable", lambda data, mdat: data[: mdat[0]] + bytes(mdat[1] - mdat[0]) + data[mdat[1]:],
         ("No valid frames decoded",)),
        # a recording cut off before its index (moov) was written: nothing to demux (a DEMUX stream error)
        ("truncated", lambda data, mdat: data[: (mdat[0] + mdat[1]) // 2], ("no playable streams",)),
    ],
    ids=["undecodable", "truncated"],
)
def test_file_that_never_decodes_is_failed_after_a_few_attempts_with_the_decoders_reason(
        clip, tmp_path, workers, name, corrupt, causes):
    bad = _write(tmp_path, f"{name}.mp4", corrupt(clip, _boxes(clip)[b"mdat"]))
    health = Health()
    worker = _worker(bad, health)
    workers.append(worker)
    started = time.monotonic()
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 20), health.states
    assert time.monotonic() - started < 15  # three attempts with backoff, not the 30 s of a FAILED retry
    reason = worker.health.reason
    assert "the file cannot be played" in reason and any(cause in reason for cause in causes), reason
    assert worker.stats.reconnects == 3 and worker.stats.frames_ingested == 0
    assert health.seen(HealthState.RECONNECTING)  # the first failures were retried, with backoff


def test_file_that_ends_before_its_first_frame_is_failed_instead_of_looping_at_once(clip, tmp_path, workers):
    data = bytearray(clip)
    moov = data.index(b"moov")
    stco = data.index(b"stco", moov)  # chunk offsets: point every chunk past the end of the file
    (count,) = struct.unpack(">I", data[stco + 8: stco + 12])
    for k in range(count):
        data[stco + 12 + 4 * k: stco + 16 + 4 * k] = struct.pack(">I", 0x7FFFFF00)
    bad = _write(tmp_path, "nowhere.mp4", bytes(data))
    assert sum(1 for _ in iter_frames(bad)) == 0  # a clean end of stream, without a frame or an error

    health = Health()
    worker = _worker(bad, health)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 20), (health.states, worker.stats)
    assert "ended before its first frame" in worker.health.reason
    assert worker.stats.reconnects == 3 and worker.stats.frames_ingested == 0


def test_camera_sending_undecodable_video_keeps_reconnecting_and_is_never_failed(clip, tmp_path, rtsp_server,
                                                                                   workers):
    start, end = _boxes(clip)[b"mdat"]
    bad = _write(tmp_path, "undecodable.mp4", clip[:start] + bytes(end - start) + clip[end:])
    rtsp_server.serve_file("/cam", bad)
    health = Health()
    worker = CameraWorker("door", rtsp_server.url("/cam"), SPEC, ledger=None, on_health_change=health,
                          connect_timeout_s=1.0, reconnect_backoff_max_s=0.5, failed_retry_s=60.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.stats.reconnects >= 4, 20), health.states  # more than a file gets
    assert worker.health.state is HealthState.RECONNECTING
    assert not health.seen(HealthState.FAILED), health.states
    assert worker.stats.frames_ingested == 0
