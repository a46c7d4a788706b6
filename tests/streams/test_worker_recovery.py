"""How a CameraWorker recovers: backoff that never overflows nor resets too soon, a supervisor that outlives
its own errors, media time that goes on across a file's loops, a slow release that is not a stalled source,
and a camera whose every frame dp rejects. Real GStreamer pipelines, RTSP servers on loopback and dp: no
mocks (the only stand-ins are the injected random sources of the backoff's jitter)."""

from __future__ import annotations

import logging
import math
import random
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from dp import Ledger, PixelizeSpec
from streams import make_test_clip
from streams.rtsp_server import LocalRtspServer
from streams.testing import free_port, wait_for
from streams.worker import CameraWorker, HealthState, _MediaTimeline, reconnect_delay_s
from tests.streams.test_camera_worker import SPEC, Collect, HealthLog


class RecordingRng(random.Random):
    """The backoff's jitter source, seeded; keeps the ceiling of every delay it was asked for."""

    def __init__(self) -> None:
        super().__init__(1234)
        self.ceilings: list[float] = []
        self.lock = threading.Lock()

    def uniform(self, a: float, b: float) -> float:
        with self.lock:
            self.ceilings.append(b)
        return super().uniform(a, b)

    def snapshot(self) -> list[float]:
        with self.lock:
            return list(self.ceilings)


class FailingOnceRng(random.Random):
    """A jitter source whose first draw raises: an error nobody expected, inside the supervisor's loop."""

    def __init__(self, message: str) -> None:
        super().__init__(1234)
        self.message = message
        self.raised = threading.Event()

    def uniform(self, a: float, b: float) -> float:
        if not self.raised.is_set():
            self.raised.set()
            raise RuntimeError(self.message)
        return super().uniform(a, b)


# --- backoff -----------------------------------------------------------------------------------------------

def test_reconnect_delay_doubles_up_to_its_ceiling_for_any_number_of_attempts():
    highest = lambda a, b: b  # noqa: E731 - the ceiling itself
    lowest = lambda a, b: a  # noqa: E731
    assert [reconnect_delay_s(n, 0.25, 2.0, highest) for n in range(0, 7)] == [0.25, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    # 2 ** 1024 as a float overflowed: the supervisor died after 1,025 failed attempts in a row
    for attempt in (1024, 1025, 1026, 5000, 10**9, 2**4096):
        assert reconnect_delay_s(attempt, 0.25, 2.0, highest) == 2.0
        assert reconnect_delay_s(attempt, 0.25, 2.0, lowest) == 1.0
        assert reconnect_delay_s(attempt, 1e-6, 1e-6, highest) == 1e-6
    assert reconnect_delay_s(10**9, 1e-300, 1e300, highest) == 1e300  # ~2,000 doublings, none overflowing
    assert reconnect_delay_s(10**9, 1e-300, math.inf, highest) == math.inf
    assert reconnect_delay_s(3, 5.0, 2.0, highest) == 2.0  # a base above the ceiling: the ceiling
    rng = random.Random(7)
    assert all(1.0 <= reconnect_delay_s(n, 0.25, 2.0, rng.uniform) <= 2.0 for n in range(4, 2000))


def test_supervisor_outlives_an_unexpected_error_and_streams_once_the_camera_is_back(workers, caplog):
    caplog.set_level(logging.INFO, logger="streams.worker")
    port = free_port()
    password = "pa55word-7"
    url = f"rtsp://viewer:{password}@127.0.0.1:{port}/cam"
    rng = FailingOnceRng(f"jitter source broke while retrying {url}")  # the message quotes the credentials
    health = HealthLog()
    worker = CameraWorker("lobby", url, SPEC, ledger=None, sinks=[], rng=rng, reconnect_backoff_s=0.05,
                          reconnect_backoff_max_s=0.5, stall_timeout_s=2.0, on_health_change=health)
    workers.append(worker)
    worker.start()
    assert rng.raised.wait(20)  # nobody listens: the first failed attempt asks for a delay, and that raises
    assert wait_for(lambda: worker.stats.reconnects >= 3, 15)  # and it goes on retrying
    supervisor = [t for t in threading.enumerate() if t.name == "dpstream-lobby-supervisor"]
    assert supervisor and supervisor[0].is_alive()
    internal = [reason for _, state, reason in health.states if "internal error" in reason]
    assert internal and "RuntimeError: jitter source broke" in internal[0]
    assert any("internal error" in r.getMessage() and "Traceback" in r.getMessage() for r in caplog.records)

    with LocalRtspServer(port=port, auth=("viewer", password)) as server:
        server.serve_test_pattern("/cam", width=160, height=120)
        assert wait_for(lambda: worker.health.state is HealthState.STREAMING, 15)
        worker.stop()
    assert password not in caplog.text and "viewer" not in caplog.text
    assert all(password not in reason for _, _, reason in health.states)


def test_camera_that_drops_soon_after_each_connect_backs_off_further_each_time(rtsp_server, tmp_path, workers):
    """A served file of a third of a second: the camera streams, ends, and does so again at every connect."""
    clip = make_test_clip(tmp_path / "short.mp4", 160, 120, frames=10, fps=30)
    rtsp_server.serve_file("/flap", str(clip))
    rng = RecordingRng()
    worker = CameraWorker("lobby", rtsp_server.url("/flap"), SPEC, ledger=None, sinks=[], rng=rng,
                          reconnect_backoff_s=0.05, reconnect_backoff_max_s=0.4, stall_timeout_s=2.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(rng.snapshot()) >= 6, 30)
    assert worker.stats.frames_ingested > 0  # it did stream each time (the file has frames)
    # every stream ended within backoff_reset_s (10 s): each retry waits longer, up to the maximum
    assert rng.snapshot()[:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]


def test_a_stream_that_lasted_backoff_reset_s_is_retried_from_the_shortest_backoff(rtsp_server, tmp_path,
                                                                                   workers):
    clip = make_test_clip(tmp_path / "long.mp4", 160, 120, frames=45, fps=30)  # 1.5 s each time
    rtsp_server.serve_file("/cam", str(clip))
    rng = RecordingRng()
    worker = CameraWorker("lobby", rtsp_server.url("/cam"), SPEC, ledger=None, sinks=[], rng=rng,
                          reconnect_backoff_s=0.05, reconnect_backoff_max_s=0.4, backoff_reset_s=0.5,
                          stall_timeout_s=2.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(rng.snapshot()) >= 3, 30)
    assert rng.snapshot()[:3] == [0.05, 0.05, 0.05]


# --- media time across loops -------------------------------------------------------------------------------

pipelines_of_media_times = st.lists(  # each pipeline: its frames' media times, as a decoder hands them over
    st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), min_size=1, max_size=20).map(sorted),
    min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(pipelines_of_media_times)
def test_media_time_goes_on_across_pipelines_never_back_and_never_faster_than_the_video(pipelines):
    """What the rate gate and the ledger are handed: never earlier than before, and never further ahead than
    the video's own time went, plus at each restart the smallest frame interval seen (the ledger's windows
    must not end sooner than media time says)."""
    timeline = _MediaTimeline()
    placed, allowed = [], []  # each frame's time, and how far past the previous one it may be
    step = math.inf
    for frames in pipelines:
        token = object()
        for i, raw in enumerate(frames):
            if i and raw > frames[i - 1]:
                step = min(step, raw - frames[i - 1])
            placed.append(timeline.place(token, raw))
            went_on = raw - frames[i - 1] if i else 0.0  # a new pipeline's own time says nothing of the gap
            allowed.append(max(went_on, 0.0 if math.isinf(step) else step))
    gaps = [b - a for a, b in zip(placed, placed[1:], strict=False)]
    assert all(gap >= 0 for gap in gaps)
    slack = 1e-6  # float sums of media times and offsets
    assert all(gap <= limit + slack for gap, limit in zip(gaps, allowed[1:], strict=True)), (gaps, allowed)


def test_a_looping_file_in_media_time_keeps_its_release_rate_in_every_loop(tmp_path, workers):
    clip = make_test_clip(tmp_path / "clip.mp4", 160, 120, frames=60, fps=30)  # 2 s of media time per loop
    sink = Collect()
    worker = CameraWorker("lobby", str(clip), SPEC, ledger=None, sinks=[sink], release_fps=5.0, realtime=False,
                          queue_policy="block")
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.stats.frames_ingested >= 4 * 60, 60)
    worker.stop()
    assert worker.stats.frames_dropped == 0  # "block": frame k of loop n is frame index 60 n + k
    releases = [r for r in sink.snapshot() if r.frame_index < 4 * 60]
    per_loop = [sum(1 for r in releases if r.frame_index // 60 == n) for n in range(4)]
    assert all(9 <= count <= 11 for count in per_loop), per_loop  # 5 per second of media time, 2 s a loop
    stamps = [r.timestamp_s for r in releases]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    # one timeline, on at 5 per second across each loop's end (the gate lets a frame half an interval early)
    assert all(0.09 < gap < 0.34 for gap in gaps), gaps


def test_a_looping_file_in_media_time_is_budgeted_on_one_timeline_that_never_overspends(tmp_path, workers):
    clip = make_test_clip(tmp_path / "clip.mp4", 160, 120, frames=30, fps=30)  # 1 s of media time per loop
    sink = Collect()
    ledger = Ledger(eps_window=3.0, window_s=1.0)  # 3 releases of eps 1 in any closed 1 s window
    worker = CameraWorker("lobby", str(clip), SPEC, ledger=ledger, sinks=[sink], realtime=False,
                          queue_policy="block")
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.stats.frames_ingested >= 5 * 30, 60)
    worker.stop()
    fresh = list({id(r): r for r in sink.snapshot()}.values())  # a refused frame re-sends the last release
    stamps = [r.timestamp_s for r in fresh]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert len(fresh) >= 12, stamps  # about 3 per loop: the window moves on in every loop
    for i, t in enumerate(stamps):
        assert sum(1 for s in stamps[: i + 1] if t - s <= 1.0) <= 3, (t, stamps)
    assert worker.stats.frames_released == len(fresh)


# --- a slow release with a blocking queue --------------------------------------------------------------------

def test_a_slow_release_with_a_blocking_queue_is_not_taken_for_a_stalled_source(tmp_path, workers):
    clip = make_test_clip(tmp_path / "clip.mp4", 160, 120, frames=60, fps=30)
    sink, health = Collect(), HealthLog()

    def slow_store(release) -> None:
        if release.frame_index == 10:
            time.sleep(2.5)  # one slow store write, longer than a stall and the rebuild after it (2 x 1 s)

    worker = CameraWorker("lobby", str(clip), SPEC, ledger=None, sinks=[slow_store, sink], realtime=False,
                          queue_policy="block", queue_size=2, stall_timeout_s=1.0, on_health_change=health)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 60, 30)
    first_pass = sink.snapshot()[:60]
    assert [r.frame_index for r in first_pass] == list(range(60))
    stamps = [r.timestamp_s for r in first_pass]
    assert stamps == sorted(stamps)  # the file was not started again from its first frame
    assert not health.seen(HealthState.STALLED) and not health.seen(HealthState.RECONNECTING), health.states
    assert worker.stats.frames_dropped == 0


# --- frames dp rejects ---------------------------------------------------------------------------------------

def test_a_camera_whose_every_frame_is_rejected_is_failed_until_a_config_change_fits_its_frames(workers):
    # 160x120 frames hold 4x5 macro-blocks of 32 px: a map of one block fits none of them
    wrong = PixelizeSpec(eps_pix=1.0, layout="map", layout_map=[[16]])
    sink, health = Collect(), HealthLog()
    ledger = Ledger(eps_window=10.0, window_s=60.0)
    worker = CameraWorker("lobby", "test:ball?width=160&height=120&fps=30", wrong, ledger=ledger, sinks=[sink],
                          stall_timeout_s=1.0, on_health_change=health)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 15), health.states
    reason = worker.health.reason
    assert "rejected" in reason and "layout_map has shape (1, 1)" in reason and "4x5 macro-blocks" in reason
    assert len(sink) == 0 and ledger.remaining(time.time()) == 10.0  # nothing released, nothing spent
    ingested = worker.stats.frames_ingested
    assert wait_for(lambda: worker.stats.frames_ingested > ingested + 5, 10)  # the pipeline keeps running
    assert worker.health.state is HealthState.FAILED and worker.stats.reconnects == 0

    worker.update_config(spec=wrong.replace(layout_map=[[16] * 5] * 4))
    assert wait_for(lambda: worker.health.state is HealthState.STREAMING and len(sink) >= 3, 10), health.states
    assert worker.stats.reconnects == 0
    rejected = worker.stats.release_errors
    assert wait_for(lambda: len(sink) >= 10, 10)
    assert worker.stats.release_errors == rejected and worker.health.state is not HealthState.FAILED


def test_a_camera_whose_frames_are_all_released_is_never_failed_for_rejections(workers):
    """The control of the test above: the same camera with a map that fits streams, and stays STREAMING."""
    fits = PixelizeSpec(eps_pix=1.0, layout="map", layout_map=[[16] * 5] * 4)
    sink, health = Collect(), HealthLog()
    worker = CameraWorker("lobby", "test:ball?width=160&height=120&fps=30", fits, ledger=None, sinks=[sink],
                          stall_timeout_s=0.5, on_health_change=health)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 60, 20)  # two seconds of frames: four stall timeouts
    assert not health.seen(HealthState.FAILED) and worker.stats.release_errors == 0
