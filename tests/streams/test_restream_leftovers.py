"""What the re-stream review left (streams/restream.py, streams/rtsp_server.py): dot camera ids, a client that
comes before the first release, two threads serving one camera, the port of a port-0 server before start, a
bracketed public host, and a constant bitrate at a low release rate. Real servers on loopback, real clients."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from dp import Pixelizer, PixelizeSpec, Release
from dp.errors import ConfigError
from streams import EncoderSettings, iter_frames
from streams.rtsp_server import LocalRtspServer
from streams.testing import dpstream_threads, free_port, wait_for
from tests.streams.test_restream_audit import ENC, RtspClient, Viewer, release_of

# eps large and m=1: the release is the frame's cell means, so a decoded frame is compared with it directly
GREY = PixelizeSpec(eps_pix=1000.0, m_pixels=1, channels=1, layout="fixed", cell_size=16)


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("camera_id", [".", ".."])
def test_dot_camera_ids_are_refused(rtsp_server, camera_id):
    """'.' and '..' matched the camera-id pattern: mounts /./private and /../private, which a client's URL
    resolution turns into /private or the server root."""
    with pytest.raises(ConfigError, match=r"not \. or \.\."):
        rtsp_server.serve_private(camera_id)
    with pytest.raises(ConfigError, match=r"not \. or \.\."):
        rtsp_server.serve_test_pattern(f"/{camera_id}/cam")
    rtsp_server.serve_private("a.b")  # a dot inside a name is still a name


def test_a_client_before_the_first_release_is_answered_503_at_the_stated_bound(rtsp_server):
    """It waited for GstRtspServer's own 20 s prepare timeout; now it waits first_release_wait_s, and the mount
    still serves the clients that come after the first release."""
    private = rtsp_server.serve_private("late", keepalive_s=0.2, encoder=ENC, first_release_wait_s=1.5)
    url = rtsp_server.url("/late/private")
    early = RtspClient(url, rtsp_server.port)
    try:
        start = time.monotonic()
        status = early.request("DESCRIBE", None, "Accept: application/sdp")
        waited_s = time.monotonic() - start
    finally:
        early.close()
    assert status.endswith("503 Service Unavailable")
    assert 1.5 <= waited_s < 10.0, f"answered after {waited_s:.1f} s (bound 1.5 s, GstRtspServer's own: 20 s)"
    assert wait_for(lambda: private.clients == 0, 10), "the refused client's media is still there"
    private(release_of(60))
    frames = list(iter_frames(url, max_frames=2, first_frame_timeout_s=30))
    assert abs(float(np.mean(frames[-1].array)) - 60) < 4


@pytest.mark.parametrize("wait_s", [0, 20, -1])
def test_a_first_release_wait_the_server_cannot_keep_is_refused(rtsp_server, wait_s):
    with pytest.raises(ConfigError, match="first_release_wait_s"):
        rtsp_server.serve_private("bound", first_release_wait_s=wait_s)


def test_two_threads_serving_one_camera_get_one_mount(rtsp_server):
    """The check and the add were two steps: both threads made a mount, the second replaced the first on the
    server, and the first caller's sink (and its thread) served nobody."""
    n = 8
    barrier = threading.Barrier(n)
    got: list = [None] * n

    def serve(i: int) -> None:
        barrier.wait(10)
        got[i] = rtsp_server.serve_private("race", encoder=ENC)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert all(mount is got[0] for mount in got), f"{len({id(m) for m in got})} mounts for one camera"
    assert [t.name for t in dpstream_threads()].count("dpstream-private-race") == 1


def test_the_port_and_url_of_a_server_are_right_before_start():
    """Port 0 gave rtsp://127.0.0.1:0/... until start(), and a fixed port gave :0 too."""
    server = LocalRtspServer(port=0)
    try:
        assert server.port > 0
        assert server.url("/a/private") == f"rtsp://127.0.0.1:{server.port}/a/private"
        port = server.port
        private = server.serve_private("a", keepalive_s=0.2, encoder=ENC)
        private(release_of(60))
        server.start()
        assert server.port == port == server.server.get_bound_port()
        frames = list(iter_frames(server.url("/a/private"), max_frames=2, first_frame_timeout_s=30))
        assert abs(float(np.mean(frames[-1].array)) - 60) < 4
    finally:
        server.stop()
    assert wait_for(lambda: refuses_connections(port), 10)
    fixed = free_port()
    unstarted = LocalRtspServer(port=fixed)
    assert unstarted.url("/b/private") == f"rtsp://127.0.0.1:{fixed}/b/private"
    unstarted.stop()  # never started: the port is free again
    assert refuses_connections(fixed)


def test_a_bracketed_public_host_is_bracketed_once():
    """public_host='[::1]' (as a URL writes it) gave rtsp://[[::1]]:<port>/..."""
    server = LocalRtspServer(port=0, public_host="[::1]")
    try:
        assert server.public_url("/a/private") == f"rtsp://[::1]:{server.port}/a/private"
        server.public_host = "::1"
        assert server.public_url("/a/private") == f"rtsp://[::1]:{server.port}/a/private"
    finally:
        server.stop()


def random_cells(index: int, size: tuple[int, int] = (240, 320)) -> Release:
    """A grey release of random 16 px cells: each one new detail, which H.264 must spend bits on."""
    cells = np.random.default_rng(index).integers(0, 256, (size[0] // 16, size[1] // 16), dtype=np.uint8)
    frame = np.repeat(np.repeat(cells, 16, 0), 16, 1)
    return Pixelizer(GREY, backend="cpu").release(frame, camera_id="cbr", frame_index=index)


def test_a_constant_bitrate_goes_to_the_releases_at_a_low_release_rate(rtsp_server):
    """x264's rate control took every camera for 30 fps (the nominal caps rate): at 1 release a second each
    frame got 1/30 of bitrate_kbps, and 200 kbit/s of 320x240 detail decoded about 5 levels off (0.1 at the
    release rate)."""
    encoder = EncoderSettings(bitrate_kbps=200, quality=None, key_int_max=60)
    private = rtsp_server.serve_private("cbr", encoder=encoder, keepalive_s=60.0, release_fps=1.0)
    private(random_cells(0))
    viewer = Viewer(rtsp_server.url("/cbr/private"), lambda frame: frame.array[..., 0].astype(int), channels=1,
                    first_frame_timeout_s=30, stall_timeout_s=30)
    frames, errors = viewer.frames, viewer.errors
    try:
        assert wait_for(lambda: bool(frames) or bool(errors), 30) and not errors, errors
        for index in range(1, 7):  # one push each (the keepalive is 60 s): each decoded frame is one release
            release = random_cells(index)
            seen = len(frames)
            private(release)
            assert wait_for(lambda seen=seen: len(frames) > seen or bool(errors), 15) and not errors, errors
        want = release.reconstruct()[..., 0].astype(int)
        off = float(np.abs(frames[-1] - want).mean())
        assert off < 1.5, f"decoded frame {off:.1f} levels off its release at 200 kbit/s and 1 release/s"
    finally:
        stopped = viewer.stop(wake=lambda: private(random_cells(99)))
    assert stopped


def test_removing_a_mount_answers_a_client_that_waits_for_its_first_release(rtsp_server):
    """The mount's thread answers such a client; once the camera was removed no thread was left to, and the
    client hung until GstRtspServer's 20 s."""
    private = rtsp_server.serve_private("bye", encoder=ENC, first_release_wait_s=15.0)
    client = RtspClient(rtsp_server.url("/bye/private"), rtsp_server.port)
    answer: list[tuple[str, float]] = []

    def describe() -> None:
        answer.append((client.request("DESCRIBE", None, "Accept: application/sdp"), time.monotonic()))

    thread = threading.Thread(target=describe, daemon=True)
    try:
        thread.start()
        assert wait_for(lambda: private.clients == 1, 15)
        removed = time.monotonic()
        rtsp_server.remove("/bye/private")
        thread.join(20)
        assert answer, "no answer to DESCRIBE"
        status, when = answer[0]
        assert status.endswith("503 Service Unavailable")
        assert when - removed < 10.0, f"answered {when - removed:.1f} s after the removal (bound 15 s)"
    finally:
        client.close()
        thread.join(20)


@pytest.mark.parametrize("started", [True, False])
def test_a_stopped_server_refuses_a_new_private_mount(started):
    """serve_private after stop() made a mount (and its encoder thread) that stop() had already passed, so
    nothing ever closed it."""
    server = LocalRtspServer(port=0)
    if started:
        server.start()
    kept = server.serve_private("kept", encoder=ENC)
    server.stop()
    with pytest.raises(ConfigError, match="was stopped"):
        server.serve_private("late", encoder=ENC)
    assert kept.clients == 0
    mine = {"dpstream-private-kept", "dpstream-private-late"}
    assert wait_for(lambda: not mine & {t.name for t in dpstream_threads()}, 10), [t.name for t in dpstream_threads()]
