"""Ingest and the camera worker against misbehaving cameras on loopback: real servers, no mocks."""

from __future__ import annotations

import gi
import pytest

from dp import PixelizeSpec
from streams.gst import GstRtspServer
from streams.ingest import FrameSource
from streams.sources import parse_source
from streams.testing import wait_for
from streams.worker import CameraWorker, HealthState

gi.require_version("GstRtsp", "1.0")
from gi.repository import GstRtsp  # noqa: E402

SPEC = PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="fixed", cell_size=16)


def serve_tcp_only(server, mount: str) -> None:
    """A camera that refuses RTP over UDP (461 Unsupported transport), as one behind a UDP-blocking firewall."""
    factory = GstRtspServer.RTSPMediaFactory.new()
    factory.set_launch(
        "( videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 ! "
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay0 pt=96 "
        "config-interval=-1 )"
    )
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    server.server.get_mount_points().add_factory(mount, factory)


def test_udp_camera_that_refuses_udp_falls_back_to_tcp_and_streams(rtsp_server, workers):
    serve_tcp_only(rtsp_server, "/tcponly")
    worker = CameraWorker("lobby", rtsp_server.url("/tcponly"), SPEC, ledger=None, transport="udp",
                          connect_timeout_s=5.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.STREAMING, 20), worker.health
    assert wait_for(lambda: worker.stats.frames_ingested > 5, 10)


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://admin:s3cr3tpw@127.0.0.1:554/live?token=tok3n99",
        "rtsp://127.0.0.1:554/user=admin&password=s3cr3tpw&channel=1",
    ],
)
def test_source_spec_repr_never_shows_credentials(url):
    for spec in (parse_source(url), FrameSource(url).spec):
        assert "s3cr3tpw" not in repr(spec) and "tok3n99" not in repr(spec)
        assert "admin" not in repr(spec)
        assert spec.location == url  # the pipeline still gets the real URL


def test_camera_without_a_video_stream_is_failed_saying_so_not_as_a_codec_problem(rtsp_server, workers):
    factory = GstRtspServer.RTSPMediaFactory.new()
    factory.set_launch("( audiotestsrc is-live=true ! audioconvert ! rtpL16pay name=pay0 )")
    factory.set_shared(True)
    rtsp_server.server.get_mount_points().add_factory("/audio", factory)
    worker = CameraWorker("lobby", rtsp_server.url("/audio"), SPEC, ledger=None, failed_retry_s=60.0)
    workers.append(worker)
    worker.start()
    assert wait_for(lambda: worker.health.state is HealthState.FAILED, 20), worker.health
    assert worker.health.reason.startswith("no video stream over the allowed transport")
    assert worker.stats.reconnects == 1  # failed_retry_s, not the reconnect backoff
