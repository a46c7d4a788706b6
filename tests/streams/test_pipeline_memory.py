"""A file source leaves nothing behind once it is done: a worker playing a file builds a new source for every
loop of it, so one kept alive per run grows without bound (about 0.8 MB a run for a 320x240 clip).

Its signal handlers and pad probes belong to the pipeline's C objects; holding the source strongly they
closed a cycle that Python's garbage collector cannot see through, and kept every pipeline alive."""

from __future__ import annotations

import gc

from streams.files import iter_frames
from streams.ingest import FrameSource
from streams.writer import make_test_clip


def _live_sources() -> int:
    gc.collect()
    return sum(isinstance(o, FrameSource) for o in gc.get_objects())


def test_file_sources_are_freed_after_their_runs(tmp_path):
    clip = str(tmp_path / "clip.mp4")
    make_test_clip(clip, frames=10)
    for _ in range(2):  # warm-up: first-use caches of GStreamer and the bindings
        assert len(list(iter_frames(clip))) == 10
    before = _live_sources()
    for _ in range(20):
        assert len(list(iter_frames(clip))) == 10
    assert _live_sources() - before == 0
