"""The local RTSP server refuses sizes it cannot encode and forgets the media its clients left; rtspt:// and
rtspu:// URLs take the transport their scheme names."""

from __future__ import annotations

import threading

import pytest

from dp.errors import ConfigError
from streams.ingest import FrameSource, iter_frames
from streams.rtsp_server import LocalRtspServer
from streams.sources import TRANSPORTS, parse_source


@pytest.mark.parametrize(("width", "height"), [(321, 240), (320, 241), (0, 240)])
def test_a_test_pattern_of_a_size_x264_cannot_encode_is_refused(rtsp_server: LocalRtspServer, width, height):
    with pytest.raises(ConfigError, match="even"):
        rtsp_server.serve_test_pattern("/odd", width=width, height=height)
    handle = rtsp_server.serve_test_pattern("/cam", width=160, height=120)
    with pytest.raises(ConfigError, match="even"):
        handle.set_resolution(width, height)
    assert (handle.width, handle.height) == (160, 120)  # unchanged: later clients still get a stream
    frame = next(iter_frames(rtsp_server.url("/cam"), max_frames=1, first_frame_timeout_s=15))
    assert frame.array.shape[:2] == (120, 160)


def test_a_pattern_mount_forgets_each_media_its_last_client_left(rtsp_server: LocalRtspServer):
    handle = rtsp_server.serve_test_pattern("/cam", width=160, height=120)
    unprepared: list[threading.Event] = []

    def on_configure(_factory, media) -> None:  # connected after the mount's own handlers: runs after them
        done = threading.Event()
        unprepared.append(done)
        media.connect("unprepared", lambda _media: done.set())

    handle.factory.connect("media-configure", on_configure)
    for i in range(3):
        assert len(list(iter_frames(rtsp_server.url("/cam"), max_frames=2, first_frame_timeout_s=15))) == 2
        assert len(unprepared) == i + 1 and unprepared[i].wait(15), "the client left: its media is unprepared"
        assert handle._capsfilters == []
    handle.set_resolution(160, 128)  # with no client, only later ones get the size
    frame = next(iter_frames(rtsp_server.url("/cam"), max_frames=1, first_frame_timeout_s=15))
    assert frame.array.shape[:2] == (128, 160)


def test_rtspu_and_rtspt_urls_take_the_transport_their_scheme_names(rtsp_server: LocalRtspServer):
    assert parse_source(rtsp_server.url("/cam")).transport is None
    for scheme, transport, other in (("rtspu", "udp", "tcp"), ("rtspt", "tcp", "udp")):
        # a mount each: a client that comes while the previous one's shared media is torn down may get a 503
        rtsp_server.serve_test_pattern(f"/{scheme}", width=160, height=120)
        scheme_url = rtsp_server.url(f"/{scheme}").replace("rtsp://", f"{scheme}://", 1)
        assert parse_source(scheme_url).transport == transport
        source = FrameSource(scheme_url, transport=other)
        try:
            assert source.pipeline.get_by_name("src").get_property("protocols") == TRANSPORTS[transport]
        finally:
            source.stop()
        # the default transport='tcp' with rtspu:// had no protocol left, and failed on every retry
        frame = next(iter_frames(scheme_url, max_frames=1, transport=other, first_frame_timeout_s=15))
        assert frame.array.shape[:2] == (120, 160)
