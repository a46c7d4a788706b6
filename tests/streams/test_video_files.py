"""Video in (iter_frames) and out (H264Mp4Writer, make_test_clip) on real GStreamer pipelines."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dp import Pixelizer, PixelizeSpec
from dp.errors import ConfigError, IngestError
from streams import EncoderSettings, H264Mp4Writer, iter_frames, make_test_clip
from streams.gst import Gst
from streams.ingest import FrameSource


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return make_test_clip(tmp_path_factory.mktemp("clip") / "ball.mp4", 320, 240, frames=30, fps=30)


def test_file_yields_every_frame_as_read_only_rgb(clip):
    frames = list(iter_frames(clip))
    assert len(frames) == 30
    assert [f.index for f in frames] == list(range(30))
    for f in frames:
        assert f.array.shape == (240, 320, 3) and f.array.dtype == np.uint8
        assert not f.array.flags.writeable
    stamps = [f.timestamp_s for f in frames]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] == pytest.approx(29 / 30, abs=1e-3)


def test_i420_frames_are_the_decoders_planes_as_they_are(clip):
    """pixel_format='i420': (3H/2) x W read-only frames; their luma is what a grey pipeline delivers."""
    yuv = list(iter_frames(clip, max_frames=3, pixel_format="i420"))
    grey = list(iter_frames(clip, max_frames=3, channels=1))
    for f, g in zip(yuv, grey, strict=True):
        assert f.array.shape == (360, 320) and not f.array.flags.writeable
        assert (f.height, f.width, f.channels, f.pixel_format) == (240, 320, 3, "i420")
        assert np.array_equal(f.gray(), g.array)
    odd = list(iter_frames("test:ball?width=162&height=122", max_frames=1, pixel_format="i420"))[0]
    assert odd.array.shape == (183, 162)  # chroma rows padded to 4 bytes by GStreamer, packed here
    with pytest.raises(ConfigError, match="i420"):
        list(iter_frames(clip, max_frames=1, channels=1, pixel_format="i420"))


def test_auto_frames_are_i420_with_their_colorimetry_and_the_rgb_picture_gstreamer_shows(clip):
    """pixel_format='auto' (what RGB cameras ingest): the decoder's I420 with the colorimetry its caps
    state, whose RGB picture (dp.color.i420_to_rgb, the picture an RGB release sums) is what videoconvert
    delivers to within rounding; odd-sized frames, which dp cannot take as I420, arrive as RGB."""
    from dp.color import i420_to_rgb

    auto = list(iter_frames(clip, max_frames=3, pixel_format="auto"))
    rgb = list(iter_frames(clip, max_frames=3))
    for f, g in zip(auto, rgb, strict=True):
        assert (f.pixel_format, f.colorimetry, f.array.shape) == ("i420", "bt601", (360, 320))
        diff = np.abs(i420_to_rgb(f.array, f.colorimetry).astype(int) - g.array.astype(int))
        assert diff.mean() < 3.0, diff.mean()  # videoconvert interpolates chroma; we repeat it
    hd = list(iter_frames("test:smpte?width=1280&height=720", max_frames=1, pixel_format="auto"))[0]
    assert hd.colorimetry == "bt709"  # GStreamer's default for HD sizes
    odd_source = "test:ball?width=162&height=121"
    odd = list(iter_frames(odd_source, max_frames=2, pixel_format="auto"))[-1]
    ref = list(iter_frames(odd_source, max_frames=2))[-1]
    assert (odd.pixel_format, odd.colorimetry, odd.array.shape) == ("rgb", None, (121, 162, 3))
    assert np.abs(odd.array.astype(int) - ref.array.astype(int)).mean() < 3.0


def _decoder_threads(source) -> list[int]:
    found = []
    it = source.pipeline.iterate_recurse()
    while True:
        ok, element = it.next()
        if ok != Gst.IteratorResult.OK:
            return found
        factory = element.get_factory()
        if factory is not None and factory.get_name().startswith("avdec_"):
            found.append(element.get_property("max-threads"))


def test_file_decoder_gets_a_spare_frame_thread_and_the_same_frames(clip):
    """Files decode with one libav frame thread more than the cores; threading changes no pixel."""
    source = FrameSource(clip, pixel_format="i420")
    try:
        source.start()
        first = source.pull(10.0)
        assert first is not None
        assert _decoder_threads(source) == [(os.cpu_count() or 1) + 1]
    finally:
        source.stop()
    single = FrameSource(clip, pixel_format="i420", decoder_threads=1)
    try:
        single.start()
        assert single.pull(10.0) is not None
        assert _decoder_threads(single) == [1]
    finally:
        single.stop()
    threaded = [f.array for f in iter_frames(clip, pixel_format="i420")]
    one = [f.array for f in iter_frames(clip, pixel_format="i420", decoder_threads=1)]
    assert len(threaded) == len(one) == 30
    assert all(np.array_equal(a, b) for a, b in zip(threaded, one, strict=True))
    assert np.array_equal(first.array, one[0])
    with pytest.raises(ConfigError, match="decoder_threads"):
        FrameSource(clip, decoder_threads=-1)


def test_max_frames_and_duration_stop_early(clip):
    assert len(list(iter_frames(clip, max_frames=7))) == 7
    assert list(iter_frames(clip, max_frames=0)) == []
    # 0.5 s of media at 30 fps
    assert len(list(iter_frames(clip, duration_s=0.5))) == 15


def test_test_pattern_has_requested_size_and_moving_content():
    frames = list(iter_frames("test:ball?width=160&height=120&fps=15", max_frames=4))
    assert all(f.array.shape == (120, 160, 3) for f in frames)
    assert all(not np.array_equal(a.array, b.array) for a, b in zip(frames, frames[1:], strict=False))
    scrolled = list(iter_frames("test:smpte?width=64&height=48", max_frames=2))
    assert not np.array_equal(scrolled[0].array, scrolled[1].array)


def test_grey_frames_match_luma_of_rgb_frames(clip):
    rgb = next(iter(iter_frames(clip, max_frames=1)))
    grey = next(iter(iter_frames(clip, channels=1, max_frames=1)))
    assert grey.array.shape == (240, 320, 1)
    # channels=1 is the decoder's Y plane in video range (16..235); Frame.gray() is full-range luma of RGB.
    expected = 16 + rgb.gray().astype(float) * 219 / 255
    assert np.abs(expected - grey.array).mean() < 2


def test_rows_whose_length_is_not_a_multiple_of_four_are_unpadded(tmp_path):
    # 322 * 3 = 966 bytes per row: GStreamer pads rows to 968; frames must come out 322 wide and aligned.
    frames = list(iter_frames("test:smpte?width=322&height=240", max_frames=3))
    assert frames[0].array.shape == (240, 322, 3) and frames[0].array.flags["C_CONTIGUOUS"]
    out = tmp_path / "odd.mp4"
    with H264Mp4Writer(out, 322, 240, 30, encoder=EncoderSettings(quality=10)) as writer:
        for f in frames:
            writer.write(f.array)
    back = list(iter_frames(out))
    assert len(back) == 3 and back[0].array.shape == (240, 322, 3)
    err = np.abs(back[0].array.astype(int) - frames[0].array.astype(int)).mean()
    assert err < 6  # lossy, but the same picture: a shifted row would give tens of levels


def test_writer_round_trip_keeps_blocky_privatized_frames(tmp_path):
    rng = np.random.default_rng(1)
    # 16x16 flat cells, like a reconstructed release
    cells = rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)
    frame = np.repeat(np.repeat(cells, 16, axis=0), 16, axis=1)
    out = tmp_path / "blocks.mp4"
    with H264Mp4Writer(out, 320, 240, 25) as writer:
        for _ in range(10):
            writer.write(frame)
    assert writer.frames_written == 10
    back = list(iter_frames(out))
    assert len(back) == 10
    assert np.abs(back[-1].array.astype(int) - frame.astype(int)).mean() < 8


def test_releases_written_straight_into_the_encoders_buffers_decode_to_their_reconstruction(tmp_path):
    rng = np.random.default_rng(2)
    px = Pixelizer(PixelizeSpec(eps_pix=50.0, m_pixels=1, cell_size=16), backend="cpu")
    # flat 16 px cells of random colours: releases that differ by tens of levels from one frame to the next
    frames = [np.repeat(np.repeat(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8), 16, 0), 16, 1) for _ in range(6)]
    releases = [px.release(frame) for frame in frames]
    out = tmp_path / "releases.mp4"
    with H264Mp4Writer(out, 160, 128, 10, input_format="i420",
                       encoder=EncoderSettings(quality=10, key_int_max=1)) as writer:
        for rel in releases:
            writer.write_release(rel)
        with pytest.raises(ConfigError, match="160x128"):
            writer.write_release(Pixelizer(PixelizeSpec(eps_pix=1.0)).release(np.zeros((64, 64, 3), np.uint8)))
    back = list(iter_frames(out))
    assert len(back) == 6
    for i, frame in enumerate(back):
        errors = [np.abs(frame.array.astype(int) - r.reconstruct().astype(int)).mean() for r in releases]
        assert errors[i] < 4 and min(e for j, e in enumerate(errors) if j != i) > 3 * errors[i] + 5


def test_grey_writer_accepts_two_dimensional_frames(tmp_path):
    out = tmp_path / "grey.mp4"
    with H264Mp4Writer(out, 64, 48, 10, channels=1) as writer:
        writer.write(np.full((48, 64), 128, np.uint8))
        writer.write(np.full((48, 64, 1), 128, np.uint8))
    back = list(iter_frames(out, channels=1))
    assert len(back) == 2 and abs(int(back[0].array.mean()) - 128) <= 2


def test_writer_rejects_frames_of_the_wrong_shape_or_dtype(tmp_path):
    with H264Mp4Writer(tmp_path / "x.mp4", 64, 48, 10) as writer:
        with pytest.raises(ConfigError, match="expected uint8"):
            writer.write(np.zeros((48, 64, 3), np.float32))
        with pytest.raises(ConfigError):
            writer.write(np.zeros((50, 64, 3), np.uint8))
        writer.write(np.zeros((48, 64, 3), np.uint8))


def test_writer_pads_odd_sizes_by_repeating_the_edge(tmp_path):
    frame = np.zeros((47, 63, 3), np.uint8)
    frame[:, -1] = 200  # the last column is bright: its copy must be bright too
    with H264Mp4Writer(tmp_path / "odd.mp4", 63, 47, 10, encoder=EncoderSettings(quality=5)) as writer:
        writer.write(frame)
    assert (writer.encoded_width, writer.encoded_height) == (64, 48)
    back = next(iter(iter_frames(tmp_path / "odd.mp4")))
    assert back.array.shape == (48, 64, 3)
    assert back.array[:, -1].mean() > 150 and back.array[:, :60].mean() < 20


def test_writer_refuses_missing_directories(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        H264Mp4Writer(tmp_path / "nope" / "x.mp4", 64, 48, 10)


def test_encoder_settings_validate_and_describe_rate_control():
    assert "pass=cbr bitrate=2000" in EncoderSettings(bitrate_kbps=2000).x264_description()
    assert "quantizer=30" in EncoderSettings(quality=30).x264_description()
    with pytest.raises(ConfigError):
        EncoderSettings(speed_preset="warp")
    with pytest.raises(ConfigError):
        EncoderSettings(quality=99)


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "http://example.com/x.mp4",
        "rtsp://",
        "rtsp://host:notaport/x",
        "test:nonsense",
        "test:ball?depth=3",
    ],
)
def test_malformed_sources_are_config_errors(uri):
    with pytest.raises(ConfigError):
        list(iter_frames(uri, max_frames=1))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such video file"):
        list(iter_frames(str(tmp_path / "missing.mp4")))


def test_file_that_is_not_video_is_an_ingest_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(IngestError):
        list(iter_frames(str(junk)))


def _mux(path, branches: str, muxer: str = "mp4mux") -> str:
    """Write a file whose tracks come from gst-launch `branches` feeding `muxer name=m` (pads in order)."""
    from streams.gst import parse_pipeline, shutdown_pipeline

    pipeline = parse_pipeline(f"{muxer} name=m ! filesink name=sink {branches}")
    pipeline.get_by_name("sink").set_property("location", str(path))
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    shutdown_pipeline(pipeline)
    assert msg is not None and msg.type == Gst.MessageType.EOS
    return str(path)


_AUDIO = "audiotestsrc num-buffers=50 ! audioconvert ! avenc_aac ! queue ! m.audio_0"


@pytest.mark.parametrize(("name", "muxer", "encoder"), [("av.mp4", "mp4mux", "x264enc"),
                                                     ("mjpeg.avi", "avimux", "jpegenc")])
def test_file_with_an_audio_track_first_decodes_its_video(tmp_path, name, muxer, encoder):
    """A file with sound: the decoder gets its video stream, every frame, whether it is H.264 in an MP4 whose
    audio track comes first, or Motion-JPEG (image/jpeg, as many cameras record it) in an AVI."""
    path = _mux(tmp_path / name, f"{_AUDIO} videotestsrc num-buffers=24 pattern=smpte ! "
                                 f"video/x-raw,width=160,height=120 ! {encoder} ! queue ! m.video_0", muxer)
    frames = list(iter_frames(path, pixel_format="i420"))
    assert len(frames) == 24 and frames[0].array.shape == (180, 160)


def test_file_without_a_video_stream_is_an_unsupported_ingest_error(tmp_path):
    path = _mux(tmp_path / "audio.mp4", _AUDIO)
    with pytest.raises(IngestError, match="unsupported codec or container: the file has no video stream"):
        list(iter_frames(path))


def test_endless_test_pattern_needs_a_limit():
    with pytest.raises(ConfigError, match="never ends"):
        list(iter_frames("test:ball"))
