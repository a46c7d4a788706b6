"""Video in and out for scripts and the ``dpstream pixelize`` command: one import for the lead's CLI.

* :func:`iter_frames` (``streams.ingest``): frames of a file, ``test:<pattern>`` or ``rtsp://`` URL.
* :class:`H264Mp4Writer` and :class:`EncoderSettings` (``streams.writer``): H.264 MP4 output.
* :class:`PartFile` (``streams.writer``): write beside a file, then rename onto it (the CLI's images).
* :func:`make_test_clip` (``streams.writer``): a synthetic H.264 MP4 with moving content.

Speed (measured on the 2-core node, 1080p H.264 in and out, fixed 16 px cells): decoding runs ahead in
GStreamer's threads and encoding behind the writer's queue, so the Python loop only releases and
reconstructs. With one Numba thread for the release (``numba.set_num_threads(1)`` in the calling thread)
the loop ran at 34 to 48 fps; with Numba's default two OpenMP threads at 25 fps (their spinning competes
with the decoder and the encoder for the two cores).
"""

from .frame import Frame
from .ingest import iter_frames
from .writer import EncoderSettings, H264Mp4Writer, PartFile, make_test_clip

__all__ = ["EncoderSettings", "Frame", "H264Mp4Writer", "PartFile", "iter_frames", "make_test_clip"]
