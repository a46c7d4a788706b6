"""dpstream streams: GStreamer ingest, the per-camera worker, privatized re-streaming, a local RTSP server.

Public entry points (stable names)::

    from streams import Frame, iter_frames, H264Mp4Writer, EncoderSettings, make_test_clip, redact_url
    from streams.worker import CameraWorker, CameraHealth, HealthState, WorkerStats
    from streams.rtsp_server import LocalRtspServer

Importing this package initialises GStreamer (PyGObject); raw frames never leave ``streams/`` and ``dp``.
"""

from .files import EncoderSettings, Frame, H264Mp4Writer, iter_frames, make_test_clip
from .redact import redact_text, redact_url

__all__ = [
    "EncoderSettings",
    "Frame",
    "H264Mp4Writer",
    "iter_frames",
    "make_test_clip",
    "redact_text",
    "redact_url",
]
