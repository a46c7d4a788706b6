"""Decoded frames are read-only views of GStreamer's memory (streams.mapped), kept mapped as long as they live."""

from __future__ import annotations

import ctypes
import gc
import weakref

import numpy as np
import pytest

from streams import iter_frames, make_test_clip, mapped
from streams.gst import Gst, ensure_init, parse_pipeline, shutdown_pipeline


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_test_clip(tmp_path_factory.mktemp("zc") / "ball.mp4", 320, 240, frames=24, fps=30)


def _maps(buf: Gst.Buffer) -> int:
    """How many times the buffer's memory is mapped now: GstMiniObject.lockstate (gstminiobject.h: after the
    GType and the refcount) counts locks in bits 8-15, above the access mode."""
    lib = mapped._LIB
    lib.gst_buffer_peek_memory.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.gst_buffer_peek_memory.restype = ctypes.c_void_p
    memory = lib.gst_buffer_peek_memory(hash(buf), 0)
    return (ctypes.c_int.from_address(memory + ctypes.sizeof(ctypes.c_size_t) + 4).value >> 8) & 0xFF


def _copied_frames(path, n: int) -> list[bytes]:
    """The decoder's I420 frames as PyGObject's own map() copies them, from a pipeline of plain elements."""
    ensure_init()
    pipeline = parse_pipeline("filesrc name=src ! qtdemux ! h264parse ! avdec_h264 ! video/x-raw,format=I420 ! "
                              "appsink name=sink sync=false")
    pipeline.get_by_name("src").set_property("location", str(path))
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    out = []
    try:
        while len(out) < n:
            sample = sink.try_pull_sample(10 * Gst.SECOND)
            assert sample is not None, "the reference pipeline stopped early"
            buf = sample.get_buffer()
            ok, info = buf.map(Gst.MapFlags.READ)
            assert ok
            out.append(bytes(info.data))
            buf.unmap(info)
    finally:
        shutdown_pipeline(pipeline)
    return out


def test_this_platform_maps_decoded_frames_in_place():
    # PyGObject < 3.51 on GStreamer 1.22 (what scripts/setup installs): a copy here would be a silent 0.4 ms
    # per 1080p frame
    assert mapped.zero_copy_available()


def test_frames_are_read_only_views_that_outlive_their_pipeline(clip):
    frames = list(iter_frames(clip, pixel_format="i420"))  # the pipeline is in NULL and gone after this
    gc.collect()
    reference = _copied_frames(clip, len(frames))
    assert len(frames) == 24
    for frame, expected in zip(frames, reference, strict=True):
        base = frame.array
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, mapped.MappedBuffer)
        assert not frame.array.flags.writeable
        with pytest.raises(ValueError):
            frame.array[0, 0] = 0
        assert frame.array.shape == (360, 320)
        assert frame.array.tobytes() == expected[: 320 * 360]


def test_rgb_frames_are_views_too_and_match_a_copy(clip):
    frames = [f.array for f in iter_frames(clip)]
    copies = [np.array(a) for a in frames]
    del frames
    gc.collect()
    again = [f.array for f in iter_frames(clip)]
    assert all(np.array_equal(a, b) for a, b in zip(again, copies, strict=True))
    assert isinstance(np.asarray(again[0]).base.base, mapped.MappedBuffer)


def test_a_buffer_stays_mapped_until_its_last_view_is_gone():
    ensure_init()
    data = bytes(range(256)) * 4
    buf = Gst.Buffer.new_wrapped(data)
    assert _maps(buf) == 0
    view = mapped.read_view(buf)
    holder = weakref.ref(view.base)
    part = view[100:200]
    assert _maps(buf) == 1
    assert view.tobytes() == data
    del view
    gc.collect()
    assert holder() is not None and _maps(buf) == 1  # the slice still reads it
    assert part.tobytes() == data[100:200]
    del part
    assert holder() is None and _maps(buf) == 0


def test_an_empty_buffer_is_an_empty_array():
    ensure_init()
    view = mapped.read_view(Gst.Buffer.new())
    assert view.size == 0 and view.dtype == np.uint8


def test_a_filled_buffer_holds_what_fill_wrote_and_is_unmapped_after():
    ensure_init()
    pattern = np.arange(1000, dtype=np.uint32).astype(np.uint8)
    seen = []

    def fill(view):
        assert view.flags.writeable and view.shape == (1000,)
        view[:] = pattern
        seen.append(view)

    buf = mapped.filled_buffer(1000, fill)
    assert _maps(buf) == 0  # unmapped: downstream elements can map it
    assert not seen[0].flags.writeable  # a view kept past the fill cannot write into a pushed buffer
    ok, info = buf.map(Gst.MapFlags.READ)
    assert ok and bytes(info.data) == pattern.tobytes()
    buf.unmap(info)


def test_a_failing_fill_raises_and_empty_buffers_are_refused():
    ensure_init()

    def fill(view):
        view[:10] = 1
        raise RuntimeError("encoder input could not be made")

    with pytest.raises(RuntimeError, match="encoder input"):
        mapped.filled_buffer(64, fill)
    with pytest.raises(ValueError):
        mapped.filled_buffer(0, lambda view: None)
