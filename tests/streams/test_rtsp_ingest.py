"""iter_frames on real RTSP: a local GstRtspServer on 127.0.0.1, TCP and UDP, and the ways it can fail."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dp.errors import ConfigError, IngestError
from streams import iter_frames
from streams.rtsp_server import LocalRtspServer
from streams.testing import free_port


def test_rtsp_over_tcp_yields_moving_frames_with_wall_clock_capture_times(rtsp_server):
    rtsp_server.serve_test_pattern("/cam", width=320, height=240, fps=30)
    before = time.time()
    frames = list(iter_frames(rtsp_server.url("/cam"), max_frames=10, transport="tcp"))
    after = time.time()
    assert [f.index for f in frames] == list(range(10))
    assert all(f.array.shape == (240, 320, 3) for f in frames)
    assert not np.array_equal(frames[0].array, frames[-1].array)  # the ball moves
    assert all(before - 1.0 <= f.timestamp_s <= after for f in frames)
    assert [f.timestamp_s for f in frames] == sorted(f.timestamp_s for f in frames)


def test_rtsp_over_udp_yields_frames(rtsp_server):
    rtsp_server.serve_test_pattern("/cam", width=160, height=120)
    frames = list(iter_frames(rtsp_server.url("/cam"), max_frames=5, transport="udp"))
    assert len(frames) == 5 and frames[0].array.shape == (120, 160, 3)


def test_a_cameras_audio_stream_is_never_set_up(rtsp_server):
    """The camera lists an AAC stream before its video: only the video is requested and decoded."""
    from streams.ingest import FrameSource

    rtsp_server.serve_test_pattern("/cam", width=160, height=120, audio=True)
    source = FrameSource(rtsp_server.url("/cam"))
    try:
        source.start()
        frame = source.pull(10.0)
        assert frame is not None and frame.array.shape == (120, 160, 3)
        pads = source.pipeline.get_by_name("src").srcpads  # rtspsrc: one pad per stream it set up
        assert [p.get_current_caps().get_structure(0).get_string("media") for p in pads] == ["video"]
    finally:
        source.stop()


def test_rtsp_duration_limits_wall_time(rtsp_server):
    rtsp_server.serve_test_pattern("/cam", width=160, height=120, fps=30)
    start = time.monotonic()
    frames = list(iter_frames(rtsp_server.url("/cam"), duration_s=1.0))
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 6.0
    assert 10 <= len(frames) <= 31  # at most one second of 30 fps after the first frame arrived


def test_unknown_mount_is_an_ingest_error_naming_the_cause(rtsp_server):
    rtsp_server.serve_test_pattern("/cam")
    with pytest.raises(IngestError, match="not found"):
        list(iter_frames(rtsp_server.url("/other"), max_frames=1))


def test_closed_port_is_an_ingest_error():
    with pytest.raises(IngestError, match="cannot connect"):
        list(iter_frames(f"rtsp://127.0.0.1:{free_port()}/cam", max_frames=1))


@pytest.mark.parametrize(
    "url", ["rtsp://", "rtsp://:554/x", "rtsp://cam:99999/x", "rtsp://cam:0/x", "rtsp://a b/x"]
)
def test_malformed_rtsp_url_is_a_config_error_before_any_connection(url):
    with pytest.raises(ConfigError, match="RTSP|port"):
        list(iter_frames(url, max_frames=1))


def test_refused_credentials_fail_without_leaking_them():
    with LocalRtspServer(port=0, auth=("admin", "correct-horse")) as server:
        server.serve_test_pattern("/cam")
        assert (
            len(list(iter_frames(server.url("/cam", user="admin", password="correct-horse"), max_frames=2)))
            == 2
        )
        with pytest.raises(IngestError) as info:
            list(iter_frames(server.url("/cam", user="admin", password="hunter2-wrong"), max_frames=1))
    message = str(info.value)
    assert "credentials refused" in message
    assert "hunter2-wrong" not in message and "admin" not in message and "rtsp://***@127.0.0.1" in message


def test_served_file_starts_from_its_beginning_for_every_client(rtsp_server, tmp_path):
    """serve_file (shared=False): a client that connects while another plays still gets the file from its
    first frame (its own pipeline), and five clients connecting at once all stream."""
    import threading

    from streams import make_test_clip

    clip = make_test_clip(tmp_path / "ball.mp4", 160, 120, frames=60, fps=30, pattern="smpte")
    rtsp_server.serve_file("/file", str(clip))
    url = rtsp_server.url("/file")
    playing = iter_frames(url, max_frames=60)
    first = [next(playing) for _ in range(20)]  # ~0.7 s into the 2 s file, still connected
    late = list(iter_frames(url, max_frames=3))
    playing.close()
    assert np.array_equal(late[0].array, first[0].array)
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(len(list(iter_frames(url, max_frames=5)))))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counts == [5] * 5
