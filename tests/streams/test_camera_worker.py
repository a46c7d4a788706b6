"""CameraWorker against real RTSP servers on loopback and the real dp.Pixelizer: no mocks."""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import numpy as np
import pytest

from dp import Ledger, PixelizeSpec, Release
from dp.errors import ConfigError
from streams.rtsp_server import LocalRtspServer
from streams.testing import dpstream_threads, free_port, wait_for
from streams.worker import CameraWorker, HealthState

SPEC = PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="fixed", cell_size=16)


class Collect:
    """A sink that keeps what it receives (releases are privatized: safe to keep)."""

    def __init__(self) -> None:
        self.releases: list[Release] = []
        self.lock = threading.Lock()

    def __call__(self, release: Release) -> None:
        with self.lock:
            self.releases.append(release)

    def __len__(self) -> int:
        with self.lock:
            return len(self.releases)

    def snapshot(self) -> list[Release]:
        with self.lock:
            return list(self.releases)


class HealthLog:
    def __init__(self) -> None:
        self.states: list[tuple[float, HealthState, str]] = []

    def __call__(self, _old, new) -> None:
        self.states.append((time.monotonic(), new.state, new.reason))

    def seen(self, state: HealthState) -> bool:
        return any(s == state for _, s, _ in self.states)


def make_worker(url: str, sinks, **kwargs) -> CameraWorker:
    kwargs.setdefault("ledger", None)
    kwargs.setdefault("stall_timeout_s", 2.0)
    return CameraWorker("lobby", url, kwargs.pop("spec", SPEC), sinks=sinks, **kwargs)


def test_happy_path_from_rtsp_server_into_releases(rtsp_server, workers):
    rtsp_server.serve_test_pattern("/cam", width=320, height=240, fps=30)
    sink, health = Collect(), HealthLog()
    worker = make_worker(rtsp_server.url("/cam"), [sink], on_health_change=health)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 20, 15)
    assert worker.health.state is HealthState.STREAMING
    assert health.states[0][1] is HealthState.STARTING
    releases = sink.snapshot()
    assert all(r.camera_id == "lobby" and (r.height, r.width, r.channels) == (240, 320, 3) for r in releases)
    indices = [r.frame_index for r in releases]
    assert indices == sorted(set(indices))  # each frame released once, in order
    assert all(abs(time.time() - r.timestamp_s) < 30 for r in releases)
    stats = worker.stats
    assert stats.frames_released >= 20 and stats.frames_ingested >= stats.frames_released
    assert stats.width == 320 and stats.height == 240 and stats.reconnects == 0
    assert stats.latency_p99_s is not None and stats.latency_p99_s < 1.0


@pytest.mark.parametrize("nice", [10, 0])
def test_release_nice_lowers_only_the_release_threads_priority(nice, workers):
    """release_nice lowers the release thread's priority (Linux nice, per thread), and only that thread's
    (0, the default, leaves it alone)."""
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    sink = Collect()
    worker = make_worker("test:ball?width=64&height=48&fps=30&live=1", [sink], release_nice=nice)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 3, 15)
    by_name = {t.name: t.native_id for t in threading.enumerate() if t.name.startswith("dpstream-lobby-")}
    assert os.getpriority(os.PRIO_PROCESS, by_name["dpstream-lobby-release"]) == min(base + nice, 19)
    assert os.getpriority(os.PRIO_PROCESS, by_name["dpstream-lobby-supervisor"]) == base
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_release_nice_is_checked():
    for bad in (-1, 20, 2.5):
        with pytest.raises(ConfigError, match="release_nice"):
            make_worker("test:ball", [], release_nice=bad)


def test_yuv420_camera_releases_the_decoders_i420_frames(rtsp_server, workers):
    """color='yuv420': the pipeline hands over I420 untouched and releases carry Y, U, V means of the
    scene (a white ball on black: luma spans dark to bright, chroma stays near neutral 128)."""
    rtsp_server.serve_test_pattern("/cam", width=320, height=240, fps=30)
    sink = Collect()
    spec = PixelizeSpec(eps_pix=1000.0, m_pixels=1, cell_size=16, color="yuv420")
    worker = make_worker(rtsp_server.url("/cam"), [sink], spec=spec)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 5, 15)
    rel = sink.snapshot()[-1]
    assert rel.color == "yuv420" and (rel.height, rel.width) == (240, 320)
    luma, u, v = rel.means[0::3].astype(int), rel.means[1::3].astype(int), rel.means[2::3].astype(int)
    assert luma.min() < 40 and luma.max() > 100
    assert abs(np.median(u) - 128) < 10 and abs(np.median(v) - 128) < 10
    with pytest.raises(ConfigError, match="color"):
        worker.update_config(spec=PixelizeSpec(eps_pix=1.0, cell_size=16))  # RGB needs another pipeline


def test_server_killed_and_restarted_streams_again_within_five_seconds(server_process, workers):
    port = free_port()
    server = server_process(port, "--mount", "/cam", "--width", "160", "--height", "120")
    url = server.start()
    sink, health = Collect(), HealthLog()
    worker = make_worker(url, [sink], on_health_change=health)  # default backoff: at most 2 s between tries
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.STREAMING and len(sink) > 5, 20)

    server.kill()  # SIGKILL: no RTSP teardown, like a camera losing power
    assert wait_for(lambda: worker.health.state in (HealthState.RECONNECTING, HealthState.STALLED), 10)
    time.sleep(1.5)  # stay down long enough for several failed retries
    assert worker.health.state in (HealthState.RECONNECTING, HealthState.STALLED)
    released_while_down = len(sink)

    restarted = server_process(port, "--mount", "/cam", "--width", "160", "--height", "120")
    restarted.start()
    back_at = time.monotonic()
    assert wait_for(lambda: worker.health.state is HealthState.STREAMING, 5.0)
    assert time.monotonic() - back_at <= 5.0
    assert wait_for(lambda: len(sink) > released_while_down + 5, 10)
    assert worker.stats.reconnects >= 1
    assert health.seen(HealthState.RECONNECTING)


def test_closed_port_keeps_reconnecting_with_a_redacted_reason(workers):
    health = HealthLog()
    worker = make_worker(
        f"rtsp://viewer:pa55word@127.0.0.1:{free_port()}/cam",
        [],
        on_health_change=health,
        reconnect_backoff_max_s=0.5,
    )
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.stats.reconnects >= 3, 15)
    assert worker.health.state is HealthState.RECONNECTING
    assert "cannot connect" in worker.health.reason
    assert all("pa55word" not in reason and "viewer" not in reason for _, _, reason in health.states)
    assert "viewer" not in repr(worker) and "pa55word" not in worker.source_display


def test_malformed_url_fails_at_once_without_retrying(workers):
    worker = make_worker("rtsp://user:secret@:554/cam", [])
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 5)
    assert "malformed" in worker.health.reason and "secret" not in worker.health.reason
    time.sleep(0.3)
    assert worker.stats.reconnects == 0 and worker.stats.frames_ingested == 0


def test_host_that_refuses_credentials_is_failed_with_a_redacted_reason(workers):
    with LocalRtspServer(port=0, auth=("admin", "right-password")) as server:
        server.serve_test_pattern("/cam")
        worker = make_worker(server.url("/cam", user="admin", password="wrong-password"), [])
        workers.append(worker)
        worker.start()
        assert wait_for(lambda: worker.health.state is HealthState.FAILED, 10)
        reason = worker.health.reason
        worker.stop()
    assert "credentials refused" in reason
    assert "wrong-password" not in reason and "admin" not in reason


def test_stream_that_changes_resolution_is_released_at_the_new_size(rtsp_server, workers):
    pattern = rtsp_server.serve_test_pattern("/cam", width=320, height=240)
    sink = Collect()
    worker = make_worker(rtsp_server.url("/cam"), [sink])
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 5, 15)
    pattern.set_resolution(160, 128)
    assert wait_for(lambda: any(r.width == 160 for r in sink.snapshot()), 10)
    assert wait_for(lambda: sink.snapshot()[-1].width == 160, 5)
    last = sink.snapshot()[-1]
    assert (last.height, last.width) == (128, 160) and last.reconstruct().shape == (128, 160, 3)
    assert worker.health.state is HealthState.STREAMING and worker.stats.reconnects == 0


def test_release_rate_gate_limits_fresh_releases(rtsp_server, workers):
    rtsp_server.serve_test_pattern("/cam", width=160, height=120, fps=30)
    sink = Collect()
    worker = make_worker(rtsp_server.url("/cam"), [sink], release_fps=5.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 1, 15)
    first = sink.snapshot()[0].timestamp_s
    assert wait_for(lambda: sink.snapshot()[-1].timestamp_s - first >= 3.0, 10)
    in_window = [r for r in sink.snapshot() if r.timestamp_s - first < 3.0]
    # 5 per second of capture time: 15 in 3 s, give or take one at each edge
    assert 14 <= len(in_window) <= 16
    assert worker.stats.frames_skipped > 0


def test_overspending_frame_repeats_the_last_release(rtsp_server, workers):
    rtsp_server.serve_test_pattern("/cam", width=160, height=120, fps=30)
    sink = Collect()
    ledger = Ledger(eps_window=3.0, window_s=60.0)  # room for exactly 3 releases of eps_frame = 1
    worker = make_worker(rtsp_server.url("/cam"), [sink], ledger=ledger)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 10, 15)
    releases = sink.snapshot()
    fresh = {id(r) for r in releases}
    assert len(fresh) == 3  # only three distinct releases ever existed
    assert all(r is releases[2] for r in releases[3:])  # afterwards the third one, repeated as is
    assert worker.stats.frames_released == 3 and worker.stats.frames_repeated >= 7
    assert ledger.spent(time.time()) == pytest.approx(3.0)


def test_frames_dp_refuses_are_counted_with_their_reason_and_spend_no_budget(workers):
    # a layout map of one macro-block cannot serve 160x120 frames (5x4 blocks): dp refuses every frame
    spec = PixelizeSpec(eps_pix=1.0, layout="map", layout_map=[[16]])
    ledger = Ledger(eps_window=3.0, window_s=60.0)
    sink = Collect()
    worker = make_worker("test:ball?width=160&height=120&fps=30", [sink], spec=spec, ledger=ledger)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.stats.release_errors >= 10, 15)
    stats = worker.stats
    assert stats.frames_released == 0 and len(sink) == 0
    assert "layout_map has shape" in stats.last_release_error
    assert ledger.remaining(time.time()) == 3.0  # every spend given back: none of them released anything
    assert stats.frames_repeated == 0  # the budget never ran out


def test_config_change_takes_effect_at_the_next_frame_without_restart(rtsp_server, workers):
    rtsp_server.serve_test_pattern("/cam", width=320, height=240, fps=30)
    sink = Collect()
    ledger = Ledger(eps_window=1e4, window_s=60.0)  # room for every frame until it is reconfigured below
    worker = make_worker(rtsp_server.url("/cam"), [sink], ledger=ledger)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 3, 15)
    coarse = SPEC.replace(cell_size=32, eps_pix=2.0)
    worker.update_config(spec=coarse, release_fps=10.0)
    mark = len(sink)
    assert wait_for(lambda: len(sink) >= mark + 5, 10)
    after = sink.snapshot()[mark + 1 :]
    assert all(r.block_size == 32 and r.eps_pix == 2.0 for r in after)
    assert worker.stats.reconnects == 0 and worker.spec is coarse
    # the ledger is not swapped (a fresh one would forget the window's spends): it is reconfigured in place,
    # and a budget the window's spends already exceed turns every later frame into a repeat
    with pytest.raises(TypeError):
        worker.update_config(ledger=Ledger(eps_window=1.0, window_s=60.0))
    ledger.reconfigure(eps_window=1.0, window_s=60.0)
    assert wait_for(lambda: worker.stats.frames_repeated >= 3, 10)


def test_invalid_config_change_is_refused_and_changes_nothing(rtsp_server, workers):
    worker = make_worker("test:ball", [])
    workers.append(worker)
    with pytest.raises(ConfigError):
        worker.update_config(release_fps=0)
    with pytest.raises(ConfigError):
        worker.update_config(spec=SPEC.replace(channels=1))
    with pytest.raises(ConfigError):
        worker.update_config(spec={"eps_pix": 1.0})


def test_slow_sink_makes_the_queue_drop_oldest_frames_and_count_them(rtsp_server, workers):
    rtsp_server.serve_test_pattern("/cam", width=160, height=120, fps=30)
    sink = Collect()

    def slow_sink(release: Release) -> None:
        time.sleep(0.2)  # back-pressure: 5 releases per second against 30 frames per second

    worker = make_worker(rtsp_server.url("/cam"), [sink, slow_sink], queue_size=2)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.stats.frames_dropped >= 20, 15)
    stats = worker.stats
    assert stats.frames_dropped + stats.frames_released + stats.queue_depth <= stats.frames_ingested + 1
    indices = [r.frame_index for r in sink.snapshot()]
    assert indices == sorted(indices) and any(b - a > 1 for a, b in zip(indices, indices[1:], strict=False))


def test_failing_sink_is_counted_and_other_sinks_still_get_every_release(rtsp_server, workers):
    rtsp_server.serve_test_pattern("/cam", width=160, height=120)
    sink = Collect()

    def broken(release: Release) -> None:
        raise RuntimeError("store down")

    worker = make_worker(rtsp_server.url("/cam"), [broken, sink])
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 5, 15)
    assert worker.stats.sink_errors >= 5
    assert worker.health.state is HealthState.STREAMING


def test_stop_is_idempotent_and_leaves_no_thread_or_pipeline(rtsp_server):
    rtsp_server.serve_test_pattern("/cam", width=160, height=120)
    sink = Collect()
    worker = make_worker(rtsp_server.url("/cam"), [sink])
    worker.start()
    assert wait_for(lambda: len(sink) >= 3, 15)
    assert len(dpstream_threads()) >= 2
    worker.stop()
    worker.stop()
    assert worker.health.state is HealthState.DISABLED
    assert not [t for t in dpstream_threads() if "lobby" in t.name]
    count = len(sink)
    time.sleep(0.3)
    assert len(sink) == count  # nothing is released after stop
    with pytest.raises(ConfigError):
        worker.start()


def test_file_source_plays_in_real_time_and_loops(tmp_path, workers):
    from streams import make_test_clip

    clip = make_test_clip(tmp_path / "clip.mp4", 160, 120, frames=15, fps=30)
    sink = Collect()
    worker = make_worker(clip, [sink], release_fps=math.inf)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 25, 15)  # more frames than the clip holds: it looped
    stamps = [r.timestamp_s for r in sink.snapshot()]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 0.5  # real time, not as fast as possible
    assert worker.health.state is HealthState.STREAMING


def test_blocking_queue_releases_every_frame_of_a_file_without_drops(tmp_path, workers):
    from streams import make_test_clip

    clip = make_test_clip(tmp_path / "clip.mp4", 160, 120, frames=40, fps=30)
    sink = Collect()

    def slow_sink(release: Release) -> None:
        time.sleep(0.01)  # slower than decoding: "block" must hold the decoder back instead of dropping

    worker = make_worker(clip, [sink, slow_sink], queue_policy="block", realtime=False, queue_size=2)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: len(sink) >= 40, 20)
    assert worker.stats.frames_dropped == 0
    first_pass = [r.frame_index for r in sink.snapshot()[:40]]
    assert first_pass == list(range(40))
    stamps = [r.timestamp_s for r in sink.snapshot()[:40]]  # media time: 1/30 s apart, whatever the speed
    assert stamps[0] < 0.2 and np.diff(stamps) == pytest.approx(np.full(39, 1 / 30), abs=1e-3)


def test_source_in_an_unknown_format_is_failed_as_unsupported(tmp_path, workers):
    junk = tmp_path / "camera.mp4"
    junk.write_bytes(b"\x00\x01 definitely not a video container " * 500)
    worker = make_worker(str(junk), [], failed_retry_s=60.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 10)
    assert "unsupported codec or container" in worker.health.reason
    assert worker.stats.frames_ingested == 0


def test_yuv420_camera_on_an_odd_sized_stream_is_failed_saying_why(workers):
    spec = PixelizeSpec(eps_pix=1.0, layout="fixed", cell_size=16, color="yuv420")
    worker = make_worker("test:ball?width=65&height=47&fps=30", [], spec=spec, failed_retry_s=60.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 10)
    assert "65x47" in worker.health.reason and "odd size" in worker.health.reason
    assert worker.stats.frames_released == 0


def test_file_without_a_video_stream_is_failed_not_retried(tmp_path, workers):
    from streams.gst import Gst, parse_pipeline, shutdown_pipeline

    path = tmp_path / "audio.mp4"
    mux = parse_pipeline("audiotestsrc num-buffers=50 ! audioconvert ! avenc_aac ! mp4mux ! filesink name=sink")
    mux.get_by_name("sink").set_property("location", str(path))
    mux.set_state(Gst.State.PLAYING)
    assert mux.get_bus().timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.EOS) is not None
    shutdown_pipeline(mux)
    worker = make_worker(str(path), [], failed_retry_s=60.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 10)
    assert "unsupported codec or container: the file has no video stream" in worker.health.reason


def test_silent_server_is_stalled_then_reconnected_and_recovers(server_process, workers):
    """SIGSTOP keeps the TCP connection open but sends nothing: only the frame clock can notice."""
    import os
    import signal

    server = server_process(free_port(), "--mount", "/cam", "--width", "160", "--height", "120")
    url = server.start()
    health = HealthLog()
    worker = make_worker(url, [], on_health_change=health, stall_timeout_s=1.0, connect_timeout_s=2.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.STREAMING, 15)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: worker.health.state is HealthState.STALLED, 5)
        assert "no frame for" in worker.health.reason
        assert wait_for(lambda: worker.health.state is HealthState.RECONNECTING, 5)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert wait_for(lambda: worker.health.state is HealthState.STREAMING, 15)
    assert worker.stats.reconnects >= 1


def test_a_camera_that_stays_down_logs_its_retries_once_not_every_few_seconds(workers, caplog):
    caplog.set_level(logging.DEBUG, logger="streams.worker")
    worker = make_worker(f"rtsp://127.0.0.1:{free_port()}/cam", [], reconnect_backoff_s=0.01,
                         reconnect_backoff_max_s=0.02)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.stats.reconnects >= 15, 30)
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    info = [r for r in retries if r.levelno == logging.INFO]
    assert len(info) == 1 and "cannot connect" in info[0].getMessage(), [r.getMessage() for r in info]
    assert len(retries) - len(info) >= 10  # the rest at DEBUG, each still there for whoever asks
