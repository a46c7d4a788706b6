"""Video in and out for scripts and the ``dpstream pixelize`` command: one import for the lead's CLI.

* :func:`iter_frames` (``streams.ingest``): frames of a file, ``test:<pattern>`` or ``rtsp://`` URL.
* :class:`H264Mp4Writer` and :class:`EncoderSettings` (``streams.writer``): H.264 MP4 output.
* :func:`make_test_clip` (``streams.writer``): a synthetic H.264 MP4 with moving content.
"""

from .frame import Frame
from .ingest import iter_frames
from .writer import EncoderSettings, H264Mp4Writer, make_test_clip

__all__ = ["EncoderSettings", "Frame", "H264Mp4Writer", "iter_frames", "make_test_clip"]
