"""One decoded video frame as it leaves the ingest pipeline (raw: it never leaves ``streams/`` or ``dp``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ITU-R BT.601 luma weights in 1/256 units, the same integer rule GStreamer's videoconvert uses for GRAY8.
_LUMA_WEIGHTS = np.array([77, 150, 29], dtype=np.uint32)


@dataclass(frozen=True, eq=False)
class Frame:
    """A decoded frame: ``array`` is HxWxC uint8 (C=3 RGB or C=1 grey), read-only, C-contiguous; with
    ``pixel_format="i420"`` it is the decoder's planar YUV 4:2:0 as one (3H/2) x W array (Y rows, then U and
    V, each H/2 x W/2), for ``dp.PixelizeSpec(color="yuv420")``.

    ``index`` counts frames from 0 in delivery order. ``timestamp_s`` is the capture time: Unix epoch
    seconds for live sources (RTSP, live test patterns, anything run by :class:`streams.worker.CameraWorker`),
    and the position in the media (seconds from its start) when a file or a non-live test pattern is read as
    fast as possible by :func:`streams.iter_frames`. ``pts_s`` is always the media position.
    """

    index: int
    timestamp_s: float
    array: np.ndarray
    pts_s: float = 0.0
    pixel_format: str = "rgb"  # "rgb" (HxWx3), "gray" (HxWx1) or "i420" ((3H/2) x W)
    colorimetry: str | None = None  # i420 frames: how their samples become RGB ("bt709", "bt601-full", ...)

    @property
    def height(self) -> int:
        rows = int(self.array.shape[0])
        return rows * 2 // 3 if self.pixel_format == "i420" else rows

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def channels(self) -> int:
        return 3 if self.pixel_format == "i420" else int(self.array.shape[2])

    def gray(self) -> np.ndarray:
        """The frame as HxWx1 uint8 luma (BT.601, integer rounding); returns ``array`` itself if already grey.

        Asking :func:`streams.iter_frames` for ``channels=1`` is cheaper: GStreamer then delivers the decoder's
        Y plane directly, in the stream's own range (video range 16..235 for most H.264), not full range.
        """
        if self.pixel_format == "i420":
            return self.array[: self.height, :, None]
        if self.channels == 1:
            return self.array
        luma = (self.array.astype(np.uint32) @ _LUMA_WEIGHTS + 128) >> 8
        return luma.astype(np.uint8)[:, :, None]

    def __repr__(self) -> str:  # never print pixel data
        return (
            f"Frame(index={self.index}, timestamp_s={self.timestamp_s:.3f}, "
            f"shape={self.height}x{self.width}x{self.channels})"
        )


def pixel_format_for(color: str, channels: int) -> str:
    """The :class:`streams.ingest.FrameSource` ``pixel_format`` that serves a ``dp.PixelizeSpec`` of this
    colour and channel count: the decoder's I420 as it is for ``yuv420``; ``"auto"`` for RGB (I420 frames,
    whose RGB picture dp sums as it converts them, cheaper than GStreamer's conversion and half the bytes
    out of the pipeline); grey frames for one channel."""
    if color == "yuv420":
        return "i420"
    return "auto" if channels == 3 else "rgb"


def i420_for(frame: Frame, color: str) -> str | None:
    """The ``i420=`` argument of ``dp.Pixelizer.release`` for this frame under a spec of colour ``color``:
    the frame's colorimetry when an RGB spec gets an I420 frame, else None."""
    return frame.colorimetry if frame.pixel_format == "i420" and color == "rgb" else None
